"""Jobs: what the queue holds, the registry of job kinds, and what a running job may use.

A job kind is one function registered by name:

    @job_kind("generate")
    def run(ctx: JobContext, payload: dict) -> dict: ...     # returns a JSON-able result

It runs in a worker thread (of the server, or of a separate `stablekit worker` process), reports
progress with `ctx.progress(step, total)` (which also raises Interrupted when the job was cancelled)
and writes files under `ctx.output_dir`. Modules that register kinds are listed in KIND_MODULES and
imported by `load_kinds()`; a missing one is skipped with a warning, so API branches land separately.
"""
from __future__ import annotations

import asyncio
import importlib
import io
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from stablekit.errors import StablekitError
from stablekit.nodes.executor import Interrupted  # one interrupt exception for nodes and jobs

if TYPE_CHECKING:
    from stablekit.serve.state import ServerState

log = logging.getLogger("stablekit.serve")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
KIND_MODULES = ["stablekit.serve.ownapi", "stablekit.serve.a1111.jobs", "stablekit.serve.comfy.jobs"]
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes to the queue (other processes poll it)

__all__ = ["Job", "JobContext", "JOB_KINDS", "Interrupted", "job_kind", "load_kinds", "wait_for", "new_job_id"]


@dataclass
class Job:
    """One unit of work in the queue. `number` is monotonic (ComfyUI's queue "number")."""

    id: str
    number: int
    kind: str
    payload: dict
    status: str = "queued"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    result: dict | None = None
    error: str | None = None
    worker: str | None = None
    client_id: str | None = None
    progress: dict = field(default_factory=dict)
    attempts: int = 0

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict:
        return asdict(self)


def new_job_id() -> str:
    return uuid.uuid4().hex


JobFunction = Callable[["JobContext", dict], dict]
JOB_KINDS: dict[str, JobFunction] = {}


def job_kind(name: str):
    """Decorator: register `fn(ctx, payload) -> dict` as the runner of jobs of kind `name`."""
    def add(fn: JobFunction) -> JobFunction:
        JOB_KINDS[name] = fn
        return fn
    return add


def load_kinds(modules: list[str] | None = None) -> dict[str, JobFunction]:
    """Import the modules that register job kinds (KIND_MODULES); missing ones are skipped with a
    logged warning. Returns JOB_KINDS."""
    for name in modules if modules is not None else KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # the module itself (or its package) is absent
                log.warning("job kinds: %s not found, skipped", name)
            else:
                raise
    return JOB_KINDS


class JobContext:
    """What a running job may use: its Job, the ServerState, where outputs go, progress and events."""

    def __init__(self, job: Job, state: "ServerState", output_dir: Path | None = None):
        self.job = job
        self.state = state
        self.output_dir = Path(output_dir) if output_dir is not None else state.settings.output_dir
        self._last_write = 0.0

    def progress(self, step: int, total: int, preview=None, **extra) -> None:
        """Record progress (job.progress, the queue for other processes, a "progress" event with the
        preview as PNG bytes), then raise Interrupted if the job was cancelled or interrupted."""
        self.report(step, total, preview, **extra)
        self.check_interrupt()

    def report(self, step: int, total: int, preview=None, **extra) -> None:
        """Record progress as `progress` does, without the interrupt check (for code that must stop
        at a point of its own choosing, such as training, which saves a checkpoint first)."""
        self.job.progress = {"step": int(step), "total": int(total), **extra}
        now = time.monotonic()
        if step >= total or step <= 1 or now - self._last_write >= PROGRESS_WRITE_INTERVAL:
            self._last_write = now
            self.state.queue.update_progress(self.job.id, self.job.progress)
        binary = _png_bytes(preview) if preview is not None else None
        self.state.events.publish(self.job.id, "progress", {"job_id": self.job.id, **self.job.progress}, binary)

    def emit(self, event: str, data: dict, binary: bytes | None = None) -> None:
        """A raw event to this job's listeners (e.g. ComfyUI's websocket messages, as they are)."""
        self.state.events.publish(self.job.id, event, data, binary)

    def check_interrupt(self) -> None:
        """Raise Interrupted when the job was cancelled (here or, via the queue, from another process)."""
        if self.state.interrupt_flag(self.job.id):
            raise Interrupted(f"job {self.job.id} was interrupted")

    def skip_requested(self) -> bool:
        """A1111's "skip": finish the current image early and go on with the next one."""
        return self.state.skip_flag(self.job.id, clear=True)


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def wait_for(state: "ServerState", job_id: str, timeout: float | None = None) -> Job:
    """Wait (without blocking the event loop) until a job is done, failed or cancelled; returns it.
    Wakes on the job's events and polls the queue (jobs run by other processes publish none here).
    Raises StablekitError for an unknown job id and TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    sub = state.events.subscribe(job_id=job_id)
    try:
        while True:
            job = await asyncio.to_thread(state.queue.get, job_id)
            if job is None:
                raise StablekitError(f"no job {job_id!r}; list the jobs with GET /api/v1/jobs")
            if job.done:
                return job
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s")
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:  # progress events do not need a query each
                event = await sub.get(left)
                if event is None or event.event == "job_finished":
                    break
    finally:
        sub.close()


class Flags:
    """Interrupt and skip flags of one running job (threading.Events, set from any thread)."""

    def __init__(self):
        self.interrupt = threading.Event()
        self.skip = threading.Event()
