"""`stablekit worker`: a process that drains the same queue as the server (one per GPU or machine).

It builds the same ServerState as the server (queue, models, job kinds) without HTTP, runs N worker
threads until SIGTERM/SIGINT, and stores its jobs' events in the queue, where the server reads
and relays them to its websocket and SSE clients (relay.py).
"""
from __future__ import annotations

import logging
import signal
import threading

from stablekit.serve.jobs import JOB_KINDS, load_kinds
from stablekit.serve.queue import open_queue
from stablekit.serve.relay import EventForwarder
from stablekit.serve.runner import WorkerPool, recover_orphans
from stablekit.serve.settings import ServeSettings
from stablekit.serve.state import ServerState

log = logging.getLogger("stablekit.serve")


def run_worker(settings: ServeSettings, kinds: list[str] | None = None, once: bool = False,
               stop: threading.Event | None = None) -> int:
    """Claim and run jobs until stopped (SIGTERM/SIGINT, or `stop` set); once=True: until the queue
    is empty. kinds: only these job kinds (default: every kind this process can run)."""
    settings.make_dirs()
    state = ServerState(settings=settings, queue=open_queue(settings.resolved_queue_url))
    state.events.forward = EventForwarder(state.queue)  # the server relays them to its listeners
    load_kinds()
    recover_orphans(state)
    pool = WorkerPool(state, max(1, settings.workers), kinds=kinds, once=once).start()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    print(f"stablekit worker: {pool.count} thread(s) on {settings.resolved_queue_url}; kinds: "
          f"{', '.join(kinds or sorted(JOB_KINDS))}", flush=True)
    workers = pool.threads[:pool.count]
    while not stop.wait(0.5):
        if once and not any(t.is_alive() for t in workers):
            break
    pool.stop()
    state.queue.close()
    return 0
