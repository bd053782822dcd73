"""The "train" job kind: stablekit.train through the same queue as generation.

Payload: {"method": "lora" | "finetune" | "textual-inversion" | "dreambooth", "data": a folder (or
jsonl/csv/toml) under DATA_DIR/input, "model": a listed checkpoint (default the current one),
"class_data": (dreambooth) a folder under DATA_DIR/input, and any other setting of
`stablekit train METHOD` (steps, lr, rank, ...)}. Paths are never taken from the client: the
run goes to DATA_DIR/output/train/<job id>/, so a re-run after a crash resumes from its own last
checkpoint (the loop's exact resume). Progress comes from the run's metrics.jsonl (the loop has no
step callback), so a running training job cannot be interrupted before it ends.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.serve.files import safe_path
from stablekit.serve.jobs import JobContext, job_kind

PATH_KEYS = ("data", "class_data")  # names under DATA_DIR/input
REFUSED = ("out", "config", "device", "threads")  # the server decides these


def check_train(payload: dict, state) -> dict:
    """Validate a train payload without training (settings resolved as `stablekit train` does)."""
    from stablekit.train.methods import resolve

    if not isinstance(payload, dict):
        raise StablekitError("a train payload is a JSON object: {\"method\": \"lora\", \"data\": NAME, ...}")
    opts = {str(k).replace("-", "_"): v for k, v in payload.items() if v is not None}
    method = opts.pop("method", None)
    if not isinstance(method, str):
        raise StablekitError("train needs \"method\": one of finetune, lora, textual-inversion, dreambooth")
    for key in REFUSED:
        if key in opts:
            raise StablekitError(f"train option {key!r} is set by the server; leave it out")
    for key in PATH_KEYS:
        if key in opts:
            if not isinstance(opts[key], str) or not safe_path(state.settings.input_dir, opts[key]).exists():
                raise StablekitError(f"{key} {opts[key]!r} is not under the server's input folder; upload it there")
    opts["model"] = state.models.resolve_name(opts.get("model"))
    resolve(method, None, **_paths(opts, state, Path("unused")))  # unknown settings, bad values: one line
    return {"method": method, **opts}


def _paths(opts: dict, state, out: Path) -> dict:
    settings = dict(opts)
    for key in PATH_KEYS:
        if key in settings:
            settings[key] = str(safe_path(state.settings.input_dir, settings[key]))
    settings["model"] = str(state.models.folders.resolve("checkpoints", opts["model"]))
    settings["out"] = str(out)
    settings["threads"] = 1
    return settings


@job_kind("train")
def run_train(ctx: JobContext, payload: dict) -> dict:
    """Train; returns {"artefact", "run_dir", "step", "loss"} with paths relative to DATA_DIR/output."""
    import stablekit.train

    opts = check_train(payload, ctx.state)
    method = opts.pop("method")
    out = ctx.output_dir / "train" / ctx.job.id
    settings = _paths(opts, ctx.state, out)
    total = int(settings.get("steps") or 0)
    done = threading.Event()
    watcher = threading.Thread(target=_watch_metrics, args=(ctx, out, total, done), daemon=True)
    watcher.start()
    try:
        result = stablekit.train.run(method, progress=False, **settings)
    finally:
        done.set()
        watcher.join(5)
    history = result.get("history") or []

    def rel(p):
        return Path(p).resolve().relative_to(ctx.output_dir.resolve()).as_posix() if p else None

    return {"artefact": rel(result.get("artefact")), "run_dir": rel(result.get("run_dir")),
            "step": result.get("step"), "loss": history[-1]["loss"] if history else None}


def _watch_metrics(ctx: JobContext, out: Path, total: int, done: threading.Event) -> None:
    """Report the newest step and loss in the run's metrics.jsonl every second."""
    seen = -1
    while not done.wait(1.0):
        for path in out.rglob("metrics.jsonl"):
            try:
                lines = path.read_text().strip().splitlines()
                last = json.loads(lines[-1]) if lines else None
            except (OSError, ValueError):
                continue
            if last and last.get("step", -1) != seen:
                seen = last.get("step", -1)
                ctx.job.progress = {"step": seen, "total": total, "loss": last.get("loss")}
                ctx.state.queue.update_progress(ctx.job.id, ctx.job.progress)
                ctx.emit("progress", {"job_id": ctx.job.id, **ctx.job.progress})
