"""Running a validated workflow: topological order, and outputs cached by what went into them.

A node's cache key is its signature: its class, its widget values, the signatures of the nodes
its links come from (with the output slot), and what its IS_CHANGED says (a file's size and
mtime for loaders). So when one input changes, exactly the nodes downstream of it get new keys
and run again; everything else is reused (ComfyUI's input-signature cache). As ComfyUI's default
cache, entries not used by the latest run are dropped, so models of an old workflow are freed.

Events go to `listener(name, data)` with ComfyUI's websocket message names and fields
(execution_start, execution_cached, executing, progress, executed, execution_success,
execution_error, execution_interrupted), so a server forwards them as they are. "progress" data
also carries "x0", the sampler's current denoised latents (a tensor, for previews; not JSON).
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from stablekit.errors import StablekitError
from stablekit.nodes.registry import Folders, node_class
from stablekit.nodes.validate import check_prompt

Listener = Callable[[str, dict], None]


class Interrupted(StablekitError):
    """The run was interrupted (Engine.interrupt())."""


class NodeFailed(StablekitError):
    """A node raised a StablekitError; names the node and says what to fix."""

    def __init__(self, node_id: str, class_type: str, message: str):
        self.node_id, self.class_type = node_id, class_type
        super().__init__(f"node {node_id} ({class_type}): {message}")


@dataclass
class Context:
    """What executing nodes may use besides their inputs (set as `node.ctx`)."""

    folders: Folders
    emit: Callable[[str, dict], None]
    node_id: str = ""
    prompt_id: str = ""
    noise: str = "comfyui"  # start noise: "comfyui" (ComfyUI's KSampler) or "a1111" (stablekit generate)
    interrupted: Callable[[], bool] = lambda: False
    shared: dict = field(default_factory=dict)  # per-engine state nodes share (prompt encoders, ...)

    def check_interrupt(self) -> None:
        if self.interrupted():
            raise Interrupted("interrupted")


@dataclass
class RunResult:
    """What a run produced: ui outputs per node (SaveImage's {"images": [...]}), which nodes ran
    and which were reused from the cache."""

    prompt_id: str
    outputs: dict
    executed: list[str]
    cached: list[str]

    def images(self) -> list[dict]:
        return [img for ui in self.outputs.values() for img in ui.get("images", [])]


def _signature(prompt: dict, node_id: str, sigs: dict, folders: Folders) -> str:
    if node_id in sigs:
        return sigs[node_id]
    node = prompt[node_id]
    cls = node_class(node["class_type"])
    inputs = {}
    for name, val in sorted(node["inputs"].items()):
        if isinstance(val, list):
            inputs[name] = ["link", _signature(prompt, val[0], sigs, folders), val[1]]
        else:
            inputs[name] = val
    changed = cls.IS_CHANGED(folders, **node["inputs"]) if hasattr(cls, "IS_CHANGED") else None
    text = json.dumps([node["class_type"], inputs, changed], sort_keys=True, default=str)
    sigs[node_id] = hashlib.sha256(text.encode()).hexdigest()
    return sigs[node_id]


def execution_order(prompt: dict, outputs: list[str]) -> list[str]:
    """The nodes the outputs need, each after every node it links to (validation has ruled out cycles)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for val in prompt[node_id]["inputs"].values():
            if isinstance(val, list):
                visit(val[0])
        order.append(node_id)

    for o in sorted(outputs, key=_id_key):
        visit(o)
    return order


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


class Engine:
    """Runs ComfyUI API-format workflows with a cache that lives as long as the engine.

    folders: where models/images come from and go (registry.Folders). listener: events (see
    module docstring). noise: "comfyui" (default; ComfyUI's KSampler start noise) or "a1111"
    (stablekit generate's, so a txt2img graph gives generate's image bit for bit).
    `executions` counts node executions by node id, for tests and stats.
    """

    def __init__(self, folders: Folders | None = None, listener: Listener | None = None, noise: str = "comfyui"):
        if noise not in ("comfyui", "a1111"):
            raise StablekitError(f"unknown noise mode {noise!r}; use comfyui or a1111")
        self.folders = folders or Folders()
        self.listener = listener
        self.noise = noise
        self.cache: dict[str, tuple] = {}  # signature -> (outputs, ui)
        self.executions: Counter = Counter()
        self.shared: dict = {}
        self._interrupt = False

    def interrupt(self) -> None:
        """Stop the current run at the next node or sampler step (raises Interrupted in run())."""
        self._interrupt = True

    def _emit(self, name: str, data: dict) -> None:
        if self.listener is not None:
            self.listener(name, data)

    def run(self, prompt: dict, workflow: dict | None = None, prompt_id: str | None = None) -> RunResult:
        """Validate and run a workflow (API format); returns a RunResult. `workflow`: the UI-format
        graph to embed in saved PNGs as ComfyUI does (extra_pnginfo). Errors: WorkflowInvalid
        (with ComfyUI's node_errors), NodeFailed, Interrupted; all one line."""
        prompt_id = prompt_id or str(uuid.uuid4())
        converted, outputs = check_prompt(prompt, self.folders)
        self._interrupt = False
        self._emit("execution_start", {"prompt_id": prompt_id})
        order = execution_order(converted, outputs)
        sigs: dict[str, str] = {}
        keys = {n: _signature(converted, n, sigs, self.folders) for n in order}
        cached = [n for n in order if keys[n] in self.cache]
        self._emit("execution_cached", {"nodes": cached, "prompt_id": prompt_id})
        ctx = Context(self.folders, self._emit, prompt_id=prompt_id, noise=self.noise,
                      interrupted=lambda: self._interrupt, shared=self.shared)
        hidden = {"PROMPT": prompt, "EXTRA_PNGINFO": {"workflow": workflow} if workflow is not None else None}
        values: dict[str, tuple] = {}
        ui_outputs: dict[str, dict] = {}
        executed: list[str] = []
        for node_id in order:
            if keys[node_id] in self.cache:
                values[node_id], ui = self.cache[keys[node_id]]
            else:
                values[node_id], ui = self._execute(converted, node_id, values, ctx, hidden, executed)
                self.cache[keys[node_id]] = (values[node_id], ui)
            if ui:
                ui_outputs[node_id] = ui
        for key in set(self.cache) - set(keys.values()):
            del self.cache[key]
        self._emit("executing", {"node": None, "prompt_id": prompt_id})
        self._emit("execution_success", {"prompt_id": prompt_id})
        return RunResult(prompt_id, ui_outputs, executed, cached)

    def _execute(self, prompt, node_id, values, ctx, hidden, executed) -> tuple[tuple, dict]:
        node = prompt[node_id]
        class_type = node["class_type"]
        cls = node_class(class_type)
        kwargs = {name: values[val[0]][val[1]] if isinstance(val, list) else val
                  for name, val in node["inputs"].items()}
        for name, kind in cls.INPUT_TYPES(self.folders).get("hidden", {}).items():
            kwargs[name] = node_id if kind == "UNIQUE_ID" else hidden.get(kind)
        ctx.node_id = node_id
        self._emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": ctx.prompt_id})
        obj = cls()
        obj.ctx = ctx
        try:
            ctx.check_interrupt()
            result = getattr(obj, cls.FUNCTION)(**kwargs)
        except Interrupted:
            self._emit("execution_interrupted", {"prompt_id": ctx.prompt_id, "node_id": node_id,
                                                 "node_type": class_type, "executed": list(executed)})
            raise
        except Exception as exc:
            self._emit("execution_error", {
                "prompt_id": ctx.prompt_id, "node_id": node_id, "node_type": class_type, "executed": list(executed),
                "exception_message": str(exc), "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": [], "current_inputs": {}, "current_outputs": {}})
            if isinstance(exc, StablekitError):
                raise NodeFailed(node_id, class_type, str(exc)) from None
            raise
        self.executions[node_id] += 1
        executed.append(node_id)
        ui = {}
        if isinstance(result, dict):
            ui = result.get("ui", {})
            result = result.get("result", ())
        if ui:
            self._emit("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                    "prompt_id": ctx.prompt_id})
        return tuple(result), ui
