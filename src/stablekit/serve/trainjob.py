"""The "train" job kind: stablekit.train through the same queue as generation.

Payload: {"method": "lora" | "finetune" | "textual-inversion" | "dreambooth", "data": a folder (or
jsonl/csv/toml) under DATA_DIR/input, "model": a listed checkpoint (default the current one),
"class_data": (dreambooth) a folder under DATA_DIR/input, "resume": the id of an earlier train job
whose run this one continues, and any other setting of `stablekit train METHOD` (steps, lr, rank,
...)}. Paths are never taken from the client: the run goes to DATA_DIR/output/train/<job id>/ (or
the resumed job's folder), so a re-run after a crash resumes from its own last checkpoint.

Progress and cancel use the loop's TrainHooks: every optimizer step publishes a "progress" event
{step, total, loss, lr}; a cancel stops the run after the current step, which saves a checkpoint
there, so the job ends "cancelled" and a job submitted with {"resume": <its id>} goes on exactly
where it stopped.
"""
from __future__ import annotations

import re
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.serve.files import safe_path
from stablekit.serve.jobs import Interrupted, JobContext, job_kind

PATH_KEYS = ("data", "class_data")  # names under DATA_DIR/input
REFUSED = ("out", "config", "device", "threads")  # the server decides these
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    resume = opts.pop("resume", None)
    if resume is not None:
        _check_resume(resume, state)
    opts["model"] = state.models.resolve_name(opts.get("model"))
    resolve(method, None, **_paths(opts, state, Path("unused")))  # unknown settings, bad values: one line
    return {"method": method, **opts, **({"resume": resume} if resume is not None else {})}


def _check_resume(resume, state) -> None:
    """A resumed run must be an earlier train job's that is not running now."""
    if not isinstance(resume, str) or not RUN_ID.fullmatch(resume):
        raise StablekitError(f"resume must be the id of an earlier train job (got {resume!r})")
    job = state.queue.get(resume)
    if job is None or job.kind != "train":
        raise StablekitError(f"resume {resume!r}: no train job with that id; list them with GET /api/v1/jobs?kind=train")
    if job.status in ("queued", "running"):
        raise StablekitError(f"resume {resume!r}: that job is {job.status}; cancel it first")


def _paths(opts: dict, state, out: Path) -> dict:
    settings = dict(opts)
    for key in PATH_KEYS:
        if key in settings:
            settings[key] = str(safe_path(state.settings.input_dir, settings[key]))
    settings["model"] = str(state.models.folders.resolve("checkpoints", opts["model"]))
    settings["out"] = str(out)
    settings["threads"] = 1
    return settings


def run_folder(output_dir: Path, run_id: str) -> Path:
    """Where the train job `run_id` writes (DATA_DIR/output/train/<id>/)."""
    return safe_path(Path(output_dir) / "train", run_id)


@job_kind("train")
def run_train(ctx: JobContext, payload: dict) -> dict:
    """Train; returns {"artefact", "run_dir", "step", "loss"} with paths relative to DATA_DIR/output.
    A cancel stops it at the next step (checkpoint saved there) and ends the job "cancelled"."""
    import stablekit.train
    from stablekit.train.loop import TrainHooks
    from stablekit.train.methods import resolve

    opts = check_train(payload, ctx.state)
    method = opts.pop("method")
    out = run_folder(ctx.output_dir, opts.pop("resume", None) or ctx.job.id)
    settings = _paths(opts, ctx.state, out)
    total = resolve(method, None, **settings)[1].steps

    def on_step(step: int, row: dict, strategy) -> None:
        # report only: raising here (as ctx.progress does on cancel) would skip the checkpoint
        ctx.report(step, total, loss=row.get("loss"), lr=row.get("lr"), run=out.name)

    hooks = TrainHooks(on_step=on_step, should_stop=lambda: ctx.state.interrupt_flag(ctx.job.id))
    result = stablekit.train.run(method, progress=False, hooks=hooks, **settings)
    history = result.get("history") or []
    if result.get("stopped"):
        raise Interrupted(f"stopped at step {result.get('step')} of {total} (checkpoint saved); "
                          f"submit {{\"kind\": \"train\", \"payload\": {{..., \"resume\": \"{out.name}\"}}}} to go on")

    def rel(p):
        return Path(p).resolve().relative_to(ctx.output_dir.resolve()).as_posix() if p else None

    return {"artefact": rel(result.get("artefact")), "run_dir": rel(result.get("run_dir")),
            "step": result.get("step"), "loss": history[-1]["loss"] if history else None}
