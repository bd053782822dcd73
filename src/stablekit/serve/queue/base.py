"""The queue interface every backend implements, and `open_queue(url)`.

Life of a job: submit -> "queued"; claim (atomic: exactly one worker gets it) -> "running", with
the worker's id and a heartbeat; complete/fail -> "done"/"failed"; cancel -> "cancelled" when queued,
or a cancel request the running worker sees at its next heartbeat/progress. A worker that dies
stops heartbeating: requeue_stale() puts its job back to "queued" (a fresh attempt), and fails it
after MAX_ATTEMPTS, so a job that kills its worker cannot loop forever.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

from stablekit.errors import StablekitError
from stablekit.serve.jobs import Job

MAX_ATTEMPTS = 2


class JobQueue(ABC):
    """Persistent job queue. All methods are thread-safe; claim is atomic across threads and processes."""

    url: str = ""

    @abstractmethod
    def submit(self, kind: str, payload: dict, client_id: str | None = None, front: bool = False,
               job_id: str | None = None) -> Job:
        """Add a job (queued; `front`: before every queued job). Returns it with its id and number."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abstractmethod
    def list(self, statuses: Iterable[str] | None = None, limit: int | None = None,
             newest_first: bool = False) -> list[Job]:
        """Jobs with these statuses (None: all), in queue order (number; `front` jobs first)."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """queued -> cancelled; running -> cancel requested (the worker interrupts it). False otherwise."""

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool:
        """Whether cancel() was called on this running job."""

    @abstractmethod
    def clear_queued(self) -> int:
        """Cancel every queued job; returns how many."""

    @abstractmethod
    def claim(self, worker_id: str, kinds: Iterable[str] | None = None) -> Job | None:
        """Atomically take the first queued job (of these kinds) and mark it running for worker_id."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Tell the queue the worker still runs the job. False: the job is no longer this worker's
        (requeued, finished) or a cancel was requested; the worker should stop it."""

    @abstractmethod
    def update_progress(self, job_id: str, progress: dict) -> None:
        """Store the job's progress (read by servers whose workers run in other processes)."""

    @abstractmethod
    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None,
               worker_id: str | None = None) -> bool:
        """Mark a running job done/failed/cancelled. With worker_id, only if that worker still owns it
        (a job requeued meanwhile is not finished twice). Returns whether it was marked."""

    def complete(self, job_id: str, result: dict, worker_id: str | None = None) -> bool:
        return self.finish(job_id, "done", result=result, worker_id=worker_id)

    def fail(self, job_id: str, error: str, worker_id: str | None = None) -> bool:
        return self.finish(job_id, "failed", error=error, worker_id=worker_id)

    @abstractmethod
    def requeue_stale(self, timeout_s: float, workers: Iterable[str] = ()) -> int:
        """Running jobs whose heartbeat is older than timeout_s, or whose worker is in `workers`
        (known dead), go back to queued, or fail after MAX_ATTEMPTS attempts. Returns how many."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job that is not running (history clean-up)."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""

    # Events of jobs run by `stablekit worker` processes, relayed to the server's listeners. A queue
    # without an event table (the default) relays nothing; the server then sees only the end.
    def add_event(self, job_id: str | None, event: str, data: dict, binary: bytes | None = None) -> None:
        """Store one event of a job run in this process, for servers in other processes to relay."""

    def events_after(self, seq: int, limit: int = 500) -> list[tuple]:
        """Stored events with a sequence number above `seq`, oldest first: (seq, job_id, event, data, binary)."""
        return []

    def last_event_seq(self) -> int:
        """The newest stored event's sequence number (0 when none): where a new reader starts."""
        return 0

    def prune_events(self, older_than_s: float) -> int:
        """Delete events older than this many seconds; returns how many."""
        return 0

    def close(self) -> None:
        """Release connections."""


def open_queue(url: str) -> JobQueue:
    """A queue for a URL: "sqlite:///absolute/path.sqlite3" (or sqlite:///relative) or
    "postgresql://user@host/db" (needs the psycopg package)."""
    if url.startswith("sqlite:///"):
        from stablekit.serve.queue.sqlite import SQLiteQueue

        return SQLiteQueue(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        from stablekit.serve.queue.postgres import PostgresQueue

        return PostgresQueue(url)
    raise StablekitError(f"unknown queue URL {url!r}; use sqlite:///PATH.sqlite3 or postgresql://USER@HOST/DB")
