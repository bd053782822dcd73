"""Events of jobs that `stablekit worker` processes run, relayed to the server's listeners.

A worker process's EventBus forwards every job event it publishes (job_started, progress with its
preview bytes, ComfyUI's comfy.* messages, job_finished) into the queue's event table
(EventForwarder). The server reads new rows every RELAY_POLL seconds and publishes them on its own
bus (Relay), so a websocket or SSE client sees the same sequence whichever process ran the job.

Sequence numbers come from the database; with PostgreSQL a row with a lower number can commit after
a higher one, so the reader keeps its cursor below a gap for up to GAP_WAIT seconds and never
publishes a row twice. If a worker's job_finished never arrives (an older worker, a failed write),
the server publishes one itself FINISH_GRACE seconds after the job left "running".
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from stablekit.serve.events import Event

log = logging.getLogger("stablekit.serve")
HOST = socket.gethostname()  # as runner.worker_id writes it

RELAY_POLL = 0.2  # seconds between reads of the event table
GAP_WAIT = 2.0  # seconds a missing sequence number may stay uncommitted before the cursor passes it
FINISH_GRACE = 2.0  # seconds after a job left "running" before a missing job_finished is made up
FORGET_AFTER = 120.0  # seconds a finished job is remembered (a late job_finished is then dropped)
KEEP_EVENTS = 600.0  # seconds events stay in the table
PRUNE_EVERY = 500  # forwarded events between prunes


class EventForwarder:
    """EventBus.forward for worker processes: store each job event in the queue (never raises)."""

    def __init__(self, queue):
        self.queue, self.count = queue, 0

    def __call__(self, event: Event) -> None:
        if event.job_id is None:
            return
        try:
            self.queue.add_event(event.job_id, event.event, event.data, event.binary)
            self.count += 1
            if self.count % PRUNE_EVERY == 0:
                self.queue.prune_events(KEEP_EVENTS)
        except Exception:  # listeners miss one event; the job itself goes on
            log.exception("forwarding event %s of job %s failed", event.event, event.job_id)


class Relay:
    """Server side: read events stored by worker processes and publish them on the server's bus."""

    def __init__(self, state):
        self.state = state
        self.cursor = state.queue.last_event_seq()  # only what happens from now on
        self.delivered: set[int] = set()  # relayed sequence numbers above the cursor
        self.gaps: dict[int, float] = {}  # missing sequence number -> when first noticed
        self.finished: dict[str, float] = {}  # job ids whose job_finished was published (-> when)
        self.remote: set[str] = set()  # running jobs of other processes at the last look
        self.leaving: dict[str, float] = {}  # jobs that left "running" -> when

    def fetch(self) -> list[Event]:
        """New events in sequence order (runs in a thread: database calls)."""
        now = time.monotonic()
        out = []
        for seq, job_id, name, data, binary in self.state.queue.events_after(self.cursor):
            if seq in self.delivered:
                continue
            self.delivered.add(seq)
            if name == "job_finished":
                if job_id in self.finished:
                    continue  # made up already (it came late)
                self.finished[job_id] = now
            elif name == "job_started":
                job = self.state.queue.get(job_id)  # its client (a restarted server has no binding yet)
                self.state.events.bind(job_id, job.client_id if job is not None else None)
            out.append(Event(job_id, name, data, binary))
        while self.delivered:  # advance over what was relayed, and past gaps that stayed empty
            nxt = self.cursor + 1
            if nxt in self.delivered:
                self.delivered.discard(nxt)
                self.cursor = nxt
            elif now - self.gaps.setdefault(nxt, now) > GAP_WAIT:
                self.gaps.pop(nxt)
                self.cursor = nxt
            else:
                break
        return out + self._missing_finishes(now)

    def _missing_finishes(self, now: float) -> list[Event]:
        """job_finished for remote jobs that ended without one reaching the table."""
        # this process's own jobs publish their job_finished here directly (checked by worker id too:
        # between a job's end and its finish in the queue it is no longer in running_here)
        here, mine = set(self.state.running_here()), f"{HOST}:{os.getpid()}:"
        running = {j.id for j in self.state.queue.list(["running"])
                   if j.id not in here and not (j.worker or "").startswith(mine)}
        for job_id in self.remote - running:
            self.leaving.setdefault(job_id, now)
        self.remote = running
        out = []
        for job_id, since in list(self.leaving.items()):
            if job_id in running or job_id in self.finished:
                del self.leaving[job_id]
            elif now - since > FINISH_GRACE:
                del self.leaving[job_id]
                job = self.state.queue.get(job_id)
                if job is not None and job.done:  # (requeued jobs are not finished)
                    self.finished[job_id] = now
                    out.append(Event(job_id, "job_finished", {"job_id": job_id, "status": job.status,
                                                              "result": job.result, "error": job.error}))
        for job_id in [j for j, t in self.finished.items() if now - t > FORGET_AFTER]:
            del self.finished[job_id]
        return out


async def relay_remote_jobs(state) -> None:
    """Run the Relay until cancelled (the app's lifespan)."""
    relay = await asyncio.to_thread(Relay, state)
    while True:
        await asyncio.sleep(RELAY_POLL)
        try:
            for event in await asyncio.to_thread(relay.fetch):
                state.events.publish(event.job_id, event.event, event.data, event.binary)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relaying the events of worker processes failed")
