"""Per-app state: settings, queue, events, models and the flags of running jobs (app.state.stablekit)."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from stablekit.errors import StablekitError
from stablekit.nodes.registry import EMBEDDED_CHECKPOINT, Folders
from stablekit.serve.events import EventBus
from stablekit.serve.jobs import Flags
from stablekit.serve.queue.base import JobQueue
from stablekit.serve.settings import ServeSettings

EMBEDDED_TITLE = "shapes (embedded)"
MAX_LOADED = 2  # pipelines kept in memory; the least recently used beyond this is dropped


class ModelManager:
    """The checkpoints the server offers (the embedded model first, then --models-dir's) and the
    loaded Pipelines, cached and loaded once even when several threads ask at the same time."""

    def __init__(self, settings: ServeSettings):
        self.folders = Folders(models=settings.models_dir, input=settings.input_dir, output=settings.output_dir)
        self.current_name = EMBEDDED_CHECKPOINT
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}  # file name -> Pipeline, most recently used last
        self._use_locks: dict[str, threading.Lock] = {}  # one loader per name
        self._run_locks: dict[str, threading.Lock] = {}  # one job at a time per loaded model

    def list_checkpoints(self) -> list[str]:
        """File names (relative to --models-dir/checkpoints or --models-dir), "shapes.safetensors" first."""
        return self.folders.list("checkpoints")

    @staticmethod
    def title(name: str) -> str:
        """A display name: "shapes (embedded)" for the embedded model, else the file name."""
        return EMBEDDED_TITLE if name == EMBEDDED_CHECKPOINT else name

    def resolve_name(self, name: str | None) -> str:
        """The listed file name a request means: a file name, the embedded title, a name without its
        extension, or A1111's "name [hash]" title. Unknown names are one line listing the choices."""
        if name is None or name == "":
            return self.current_name
        if not isinstance(name, str):
            raise StablekitError(f"model must be a checkpoint name (got {name!r})")
        names = self.list_checkpoints()
        base = name.split(" [")[0].strip()
        for candidate in (name, base):
            if candidate in names:
                return candidate
            if candidate == EMBEDDED_TITLE:
                return EMBEDDED_CHECKPOINT
            for n in names:
                if n.rsplit(".", 1)[0] == candidate:
                    return n
        raise StablekitError(f"unknown checkpoint {name!r}; use one of: {', '.join(names)}")

    def get(self, name: str | None = None):
        """The Pipeline of a checkpoint (None: the current one), loaded once and cached."""
        import stablekit

        name = self.resolve_name(name)
        with self._lock:
            if name in self._loaded:
                self._loaded[name] = self._loaded.pop(name)  # most recently used last
                return self._loaded[name]
            lock = self._use_locks.setdefault(name, threading.Lock())
        with lock:  # one loader per name; others wait for it instead of loading again
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
            path = self.folders.resolve("checkpoints", name)
            pipe = stablekit.load(path, progress=False)
            with self._lock:
                self._loaded[name] = pipe
                while len(self._loaded) > MAX_LOADED:
                    self._loaded.pop(next(iter(self._loaded)))
            return pipe

    @contextlib.contextmanager
    def use(self, name: str | None = None):
        """The Pipeline, held exclusively: LoRAs applied for one call change the shared modules, so
        jobs on one model take turns."""
        name = self.resolve_name(name)
        pipe = self.get(name)
        with self._lock:
            lock = self._run_locks.setdefault(name, threading.Lock())
        with lock:
            yield pipe

    def set_current(self, name: str) -> str:
        """Make a checkpoint the default of requests that name none (A1111's sd_model_checkpoint);
        loads it so a bad file fails here. Returns the file name."""
        name = self.resolve_name(name)
        self.get(name)
        self.current_name = name
        return name

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)


@dataclass
class ServerState:
    """Everything the routes and job kinds share; one per app (app.state.stablekit)."""

    settings: ServeSettings
    queue: JobQueue
    events: EventBus = field(default_factory=EventBus)
    models: ModelManager | None = None
    wake: threading.Event = field(default_factory=threading.Event, repr=False)  # set on submit: workers look now
    _flags: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        if self.models is None:
            self.models = ModelManager(self.settings)

    # ---------------------------------------------------------------- running jobs' flags
    def begin(self, job_id: str) -> Flags:
        """Register a job as running in this process (its interrupt/skip flags)."""
        with self._lock:
            return self._flags.setdefault(job_id, Flags())

    def end(self, job_id: str) -> None:
        with self._lock:
            self._flags.pop(job_id, None)

    def running_here(self) -> list[str]:
        with self._lock:
            return list(self._flags)

    def interrupt_flag(self, job_id: str) -> bool:
        """Whether the job was asked to stop (interrupt or cancel)."""
        with self._lock:
            flags = self._flags.get(job_id)
        return bool(flags and flags.interrupt.is_set())

    def skip_flag(self, job_id: str, clear: bool = False) -> bool:
        """Whether a skip was requested for the job; clear=True consumes it (A1111's skip ends
        one image/batch, and a later /skip must be able to end the next one)."""
        with self._lock:
            flags = self._flags.get(job_id)
            requested = bool(flags and flags.skip.is_set())
            if requested and clear:
                flags.skip.clear()
        return requested

    def request_interrupt(self, job_id: str | None = None) -> int:
        """Stop one running job (None: every running job, A1111's /interrupt), here or in a worker
        process (through the queue's cancel flag). Returns how many jobs were asked."""
        ids = [job_id] if job_id is not None else [j.id for j in self.queue.list(["running"])]
        for jid in ids:
            with self._lock:
                flags = self._flags.get(jid)
            if flags is not None:
                flags.interrupt.set()
            self.queue.cancel(jid)
        return len(ids)

    def request_interrupt_local(self, job_id: str) -> None:
        """Set a job's interrupt flag in this process only (the queue already knows)."""
        with self._lock:
            flags = self._flags.get(job_id)
        if flags is not None:
            flags.interrupt.set()

    def request_skip(self) -> int:
        """A1111's /skip: the running jobs of this process end their current image early."""
        with self._lock:
            flags = list(self._flags.values())
        for f in flags:
            f.skip.set()
        return len(flags)

    def submit(self, kind: str, payload: dict, client_id: str | None = None, front: bool = False,
               job_id: str | None = None):
        """Queue a job of a registered kind and announce it ("job_queued"); returns the Job."""
        from stablekit.serve.jobs import JOB_KINDS

        if kind not in JOB_KINDS:
            raise StablekitError(f"unknown job kind {kind!r}; use one of: {', '.join(sorted(JOB_KINDS))}")
        job = self.queue.submit(kind, payload, client_id=client_id, front=front, job_id=job_id)
        self.events.bind(job.id, client_id)
        self.events.publish(job.id, "job_queued", {"job_id": job.id, "number": job.number, "kind": kind})
        self.wake.set()
        return job
