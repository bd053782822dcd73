"""The "comfy.prompt" job kind: run a ComfyUI API-format prompt on the server's one node Engine.

One Engine per ServerState (per process), so its output cache lives across prompts: queueing the
same graph with only the seed changed re-runs the sampler and what follows, and the websocket
reports the rest in execution_cached (ComfyUI's behaviour). Jobs take turns on it (a lock); the
engine's events are forwarded with ComfyUI's fields under the names "comfy.<ComfyUI name>" (so our
own API's listeners, which also see "progress", never get ComfyUI's shapes), plus a binary preview
frame per sampler step ("comfy.preview"); ws.py turns them back into ComfyUI's messages.
"""
from __future__ import annotations

import threading
import time

from stablekit.nodes import Engine, Folders
from stablekit.serve.comfy.preview import preview_frame
from stablekit.serve.jobs import JobContext, job_kind

KIND = "comfy.prompt"
PREFIX = "comfy."  # event names: PREFIX + ComfyUI's websocket message type
# Messages ComfyUI keeps in a history entry's status.messages (execution.py add_message).
STATUS_MESSAGES = ("execution_start", "execution_cached", "execution_success", "execution_error",
                   "execution_interrupted")
_engines_lock = threading.Lock()
# The status messages of failed prompts (the queue keeps only their error text), for /history.
FAILURES: dict[str, list] = {}
MAX_FAILURES = 200


class ServerEngine:
    """The server's Engine and the lock jobs take turns with."""

    def __init__(self, folders: Folders):
        self.engine = Engine(folders)
        self.lock = threading.Lock()


def folders_for(settings) -> Folders:
    """ComfyUI's folders under the data dir: input/, output/, temp/ (PreviewImage), models from --models-dir."""
    return Folders(models=settings.models_dir, input=settings.input_dir, output=settings.output_dir,
                   temp=settings.data_dir / "temp")


def server_engine(state) -> ServerEngine:
    """The ServerEngine of this server state, made on first use."""
    with _engines_lock:
        found = getattr(state, "_comfy_engine", None)
        if found is None:
            found = ServerEngine(folders_for(state.settings))
            state._comfy_engine = found
        return found


def remember_failure(job_id: str, messages: list) -> None:
    with _engines_lock:
        FAILURES[job_id] = messages
        while len(FAILURES) > MAX_FAILURES:
            FAILURES.pop(next(iter(FAILURES)))


@job_kind(KIND)
def run_prompt(ctx: JobContext, payload: dict) -> dict:
    """Run payload["prompt"] (validated again: files may have changed since POST /prompt).
    Returns {"outputs", "messages", "executed", "cached"}, what /history shows."""
    holder = server_engine(ctx.state)
    messages: list = []
    job_id = ctx.job.id

    def listener(name: str, data: dict) -> None:
        data = {**data, "prompt_id": job_id}
        if ctx.state.interrupt_flag(job_id):
            holder.engine.interrupt()  # the engine raises Interrupted at its next check
        if name == "progress":
            x0 = data.pop("x0", None)
            ctx.emit("comfy.progress", data)
            if x0 is not None:
                ctx.emit("comfy.preview", {"prompt_id": job_id}, preview_frame(x0))
            ctx.progress(data["value"], data["max"], node=data.get("node"))  # stored for other processes
            return
        if name == "executing" and data.get("node") is None:
            return  # ws.py sends it once the queue has the result, as ComfyUI's prompt worker does
        if name in STATUS_MESSAGES:
            data["timestamp"] = int(time.time() * 1000)
            messages.append([name, data])
        ctx.emit(PREFIX + name, data)

    with holder.lock:
        holder.engine.listener = listener
        try:
            result = holder.engine.run(payload["prompt"], (payload.get("extra_data") or {}).get("extra_pnginfo", {})
                                       .get("workflow"), prompt_id=job_id)
        except Exception as exc:
            if not any(name in ("execution_error", "execution_interrupted") for name, _ in messages):
                # failed before any node ran (e.g. an input file deleted since POST /prompt): say why
                listener("execution_error", {"node_id": None, "node_type": None, "executed": [],
                                             "exception_message": str(exc), "traceback": [],
                                             "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                                             "current_inputs": {}, "current_outputs": {}})
            remember_failure(job_id, messages)
            raise
        finally:
            holder.engine.listener = None
    return {"outputs": result.outputs, "messages": messages, "executed": result.executed, "cached": result.cached}
