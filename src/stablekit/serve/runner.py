"""Worker threads: claim a job, run its kind's function, record the outcome; heartbeats meanwhile.

The same code runs inside `stablekit serve` (--workers N threads) and in `stablekit worker`
processes. Worker ids are "host:pid:n", so a restarted server recognises jobs left "running" by a
dead process of its own machine and puts them back at once (recover_orphans); jobs of workers on
other machines go back when their heartbeat is older than STALE_AFTER seconds.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from stablekit.errors import StablekitError
from stablekit.serve.jobs import JOB_KINDS, Interrupted, Job, JobContext
from stablekit.serve.state import ServerState

log = logging.getLogger("stablekit.serve")

HEARTBEAT_EVERY = 2.0  # seconds
STALE_AFTER = 30.0  # a job whose heartbeat is older than this lost its worker
IDLE_POLL = 0.5  # seconds between claims when the queue is empty (a local submit wakes workers at once)
HOST = socket.gethostname()


def worker_id(n: int) -> str:
    return f"{HOST}:{os.getpid()}:{n}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def recover_orphans(state: ServerState) -> int:
    """Requeue (or fail after their attempts) running jobs whose worker was a process of this machine
    that no longer exists, e.g. a server killed with SIGKILL; plus any with a stale heartbeat."""
    dead = set()
    for job in state.queue.list(["running"]):
        host, _, rest = (job.worker or "").partition(":")
        pid = rest.split(":")[0]
        if host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            dead.add(job.worker)
    return state.queue.requeue_stale(STALE_AFTER, workers=sorted(dead))


def run_job(state: ServerState, job: Job, wid: str) -> str:
    """Run one claimed job to its end; returns its final status. Never raises for the job's failures:
    user errors (StablekitError) become the job's error text, bugs a one-line "internal error"."""
    fn = JOB_KINDS.get(job.kind)
    if fn is None:
        state.queue.fail(job.id, f"no runner for job kind {job.kind!r} in this process", worker_id=wid)
        return "failed"
    state.begin(job.id)
    state.events.bind(job.id, job.client_id)
    state.events.publish(job.id, "job_started", {"job_id": job.id, "kind": job.kind, "number": job.number})
    status, result, error = "failed", None, None
    try:
        result = fn(JobContext(job, state), job.payload)
        status = "done"
    except Interrupted as exc:  # the job may say where it stopped (training: the step, how to resume)
        status, error = "cancelled", str(exc) if str(exc) and "was interrupted" not in str(exc) else "interrupted"
    except StablekitError as exc:
        error = str(exc)
    except Exception as exc:  # a bug: keep the traceback in the log, give the client one line
        log.exception("job %s (%s) failed", job.id, job.kind)
        error = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        state.end(job.id)
    if job.progress:  # progress writes are throttled: keep the last one (where a cancelled run stopped)
        state.queue.update_progress(job.id, job.progress)
    if not state.queue.finish(job.id, status, result=result, error=error, worker_id=wid):
        log.warning("job %s finished here but the queue gave it to another worker meanwhile", job.id)
        return "lost"
    state.events.publish(job.id, "job_finished", {"job_id": job.id, "status": status, "result": result,
                                                  "error": error})
    return status


class WorkerPool:
    """N worker threads plus one maintenance thread (heartbeats, cancel requests, stale jobs)."""

    def __init__(self, state: ServerState, workers: int, kinds: list[str] | None = None,
                 once: bool = False):
        self.state, self.count, self.kinds, self.once = state, workers, kinds, once
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.current: dict[str, str] = {}  # worker id -> job id it runs
        self._lock = threading.Lock()

    def start(self) -> "WorkerPool":
        for n in range(self.count):
            t = threading.Thread(target=self._work, args=(worker_id(n),), name=f"stablekit-worker-{n}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._maintain, name="stablekit-maintenance", daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to `timeout` s for the running jobs, then put the ones still running
        back in the queue (a job cut short by a shutdown runs again elsewhere or after the restart)."""
        self.stop_event.set()
        self.state.wake.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = sorted(self.current)
        if left:  # still running at shutdown: back to the queue now (their late finish is refused)
            self.state.queue.requeue_stale(float("inf"), workers=left)

    def _work(self, wid: str) -> None:
        kinds = self.kinds if self.kinds is not None else None
        while not self.stop_event.is_set():
            try:
                job = self.state.queue.claim(wid, kinds=kinds if kinds is not None else list(JOB_KINDS))
            except Exception:  # the database went away for a moment: retry, do not die
                log.exception("claim failed")
                self.stop_event.wait(2.0)
                continue
            if job is None:
                if self.once:
                    return
                self.state.wake.wait(IDLE_POLL)
                self.state.wake.clear()
                continue
            with self._lock:
                self.current[wid] = job.id
            try:
                run_job(self.state, job, wid)
            finally:
                with self._lock:
                    self.current.pop(wid, None)

    def _maintain(self) -> None:
        last_sweep = 0.0
        while not self.stop_event.wait(HEARTBEAT_EVERY):
            with self._lock:
                running = dict(self.current)
            for wid, job_id in running.items():
                try:
                    if not self.state.queue.heartbeat(job_id, wid):  # cancelled, or no longer ours
                        self.state.request_interrupt_local(job_id)
                except Exception:
                    log.exception("heartbeat failed")
            if time.monotonic() - last_sweep > STALE_AFTER / 3:
                last_sweep = time.monotonic()
                try:
                    recover_orphans(self.state)
                except Exception:
                    log.exception("requeueing stale jobs failed")
