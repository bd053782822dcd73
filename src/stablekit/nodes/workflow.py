"""Workflow files: reading API-format JSON (or a ComfyUI PNG's prompt chunk), `--set NODE.INPUT=VALUE`
overrides, and `run_workflow`, the one-call Python API."""
from __future__ import annotations

import json
from pathlib import Path

from stablekit.errors import StablekitError


def _is_ui_format(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_workflow(source, sets: list[str] | None = None) -> tuple[dict, dict | None]:
    """(API-format prompt, UI workflow or None) from a .json path, a ComfyUI PNG or a dict,
    with `sets` ("NODE.INPUT=VALUE") applied. A UI-format file is refused with the fix."""
    workflow = None
    if isinstance(source, dict):
        prompt = source
    else:
        path = Path(source)
        if path.suffix.lower() == ".png":
            from stablekit.metadata import read_image_info
            from stablekit.metadata.comfy import read_comfy_chunks

            chunks = read_comfy_chunks(read_image_info(path)["text"])
            if chunks is None:
                raise StablekitError(f"{path} holds no ComfyUI 'prompt' chunk; give a workflow .json or a PNG saved by ComfyUI")
            prompt, workflow = chunks["prompt"], chunks["workflow"]
        else:
            try:
                prompt = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise StablekitError(f"{path} is not valid JSON ({exc}); give an API-format workflow") from None
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), dict) and "class_type" not in prompt.get("prompt"):
        workflow = (prompt.get("extra_data") or {}).get("extra_pnginfo", {}).get("workflow", workflow)
        prompt = prompt["prompt"]  # a POST /prompt body
    if _is_ui_format(prompt):
        raise StablekitError("this is a ComfyUI UI workflow (nodes and links); export it with 'Save (API Format)' "
                             "(enable dev mode options in ComfyUI's settings) and run that file")
    if not isinstance(prompt, dict):
        raise StablekitError(f"a workflow is a JSON object of nodes (got {type(prompt).__name__})")
    return apply_sets(prompt, sets or []), workflow


def _parse_value(text: str):
    """JSON when it parses as a number, boolean, null or list; the text itself otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if not isinstance(value, dict) else text


def apply_sets(prompt: dict, sets: list[str]) -> dict:
    """A copy of `prompt` with each "NODE.INPUT=VALUE" applied (VALUE parsed as JSON when it is
    a number, true/false or a [node, slot] link; as text otherwise)."""
    prompt = json.loads(json.dumps(prompt))
    for item in sets:
        target, sep, raw = item.partition("=")
        node_id, dot, name = target.partition(".")
        if not sep or not dot or not node_id or not name:
            raise StablekitError(f"--set {item!r}: use NODE.INPUT=VALUE, e.g. --set 6.text=\"a red star\"")
        if node_id not in prompt or not isinstance(prompt[node_id], dict):
            raise StablekitError(f"--set {item!r}: the workflow has no node {node_id!r} (nodes: {', '.join(sorted(prompt))})")
        prompt[node_id].setdefault("inputs", {})[name] = _parse_value(raw)
    return prompt


def run_workflow(source, *, sets: list[str] | None = None, models=None, input=None, output="output",  # noqa: A002
                 noise: str = "comfyui", listener=None):
    """Load and run a workflow once (a fresh Engine); returns the RunResult."""
    from stablekit.nodes.executor import Engine
    from stablekit.nodes.registry import Folders

    prompt, workflow = load_workflow(source, sets)
    return Engine(Folders(models, input, output), listener, noise).run(prompt, workflow)
