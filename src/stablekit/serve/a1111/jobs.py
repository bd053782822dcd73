"""The A1111 job kinds: "a1111.txt2img" and "a1111.img2img" (payload: the normalised request).

A job renders its n_iter batches one after another on the shared Pipeline (held exclusively while
it runs), reports each sampler step through ctx.progress (with a live preview every
`show_progress_every_n_steps` steps, decoded from the step callback's `denoised` latents, and the finished
batch's first image after each batch), honours /skip (ends the current batch) and /interrupt
(stops, keeping the images finished so far, as A1111 returns them), and saves the PNGs, carrying
A1111's `parameters` text, under OUTPUT_DIR/a1111/. The result is JSON: the files (relative to the
output folder), A1111's `info` string and whether it was interrupted; the routes turn it into
A1111's response.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from stablekit.serve.a1111 import options as opts
from stablekit.serve.a1111.fields import normalize
from stablekit.serve.a1111.images import paste_region
from stablekit.serve.a1111.info import build_info
from stablekit.serve.a1111.plan import Plan, build
from stablekit.serve.jobs import Interrupted, job_kind


class _Skip(Exception):
    """/skip was asked: end this batch, go on with the next."""


@job_kind("a1111.txt2img")
def run_txt2img(ctx, payload: dict) -> dict:
    """A1111 txt2img as a queue job."""
    return run(ctx, "txt2img", payload)


@job_kind("a1111.img2img")
def run_img2img(ctx, payload: dict) -> dict:
    """A1111 img2img (and inpainting, with a mask) as a queue job."""
    return run(ctx, "img2img", payload)


def preview_path(state, job_id: str) -> Path:
    """Where a running job's latest preview PNG is kept (read by /sdapi/v1/progress, any process)."""
    return Path(state.settings.data_dir) / "a1111" / "previews" / f"{job_id}.png"


def run(ctx, kind: str, payload: dict) -> dict:
    """Render the request; returns {"files", "info", "interrupted"}."""
    from stablekit.generate.noise import resolve_seed

    state = ctx.state
    req = normalize(kind, payload)
    plan = build(kind, req, state)
    s = plan.settings
    s["seed"] = resolve_seed(s["seed"])
    s["subseed"] = resolve_seed(s["subseed"])  # A1111 fixes it even without a variation strength
    every = _preview_every(state)
    images, seeds, subseeds, interrupted = [], [], [], False
    preview = preview_path(state, ctx.job.id)
    try:
        with state.models.use(plan.checkpoint) as pipe:
            for b in range(plan.n_iter):
                first = b * s["batch_size"]
                batch = dict(s)
                if s["subseed_strength"]:
                    batch["subseed"] = s["subseed"] + first
                else:
                    batch["seed"] = s["seed"] + first
                try:
                    ctx.check_interrupt()
                    out = _call(pipe, plan, batch, _callback(ctx, pipe, b, plan.n_iter, every, preview))
                except _Skip:  # A1111: the skipped batch gives no images, the next one runs
                    continue
                except Interrupted:
                    interrupted = True
                    break
                out = [_paste(plan, im) for im in out]
                images += out
                for i in range(len(out)):
                    seeds.append(batch["seed"] + (0 if s["subseed_strength"] else i))
                    subseeds.append(batch["subseed"] + i)
                _write_preview(out[0], preview)
            components = pipe.components
    finally:
        preview.unlink(missing_ok=True)
    files = _save(ctx, kind, images)
    infotexts = [im.info.get("parameters", "") for im in images]
    return {"files": files, "info": build_info(plan, infotexts, seeds, subseeds, components=components,
                                                interrupted=interrupted), "interrupted": interrupted}


def _call(pipe, plan: Plan, settings: dict, callback) -> list:
    """Render one batch in the plan's mode; the step callback carries the sampler's `denoised` latents."""
    if plan.mode == "txt2img":
        return pipe.generate(plan.prompt, callback=callback, hires=plan.hires, **settings)
    if plan.mode == "img2img":
        return pipe.img2img(plan.init, plan.prompt, strength=plan.strength, callback=callback, **settings)
    return pipe.inpaint(plan.init, plan.mask, plan.prompt, strength=plan.strength, callback=callback, **settings)


def _callback(ctx, pipe, batch: int, batches: int, every: int, preview: Path):
    def on_step(info: dict) -> None:
        image = None
        latents = info.get("denoised")  # the model's current x0 estimate (Pipeline's step callback)
        if latents is not None and every > 0 and info["step"] % every == 0:
            image = _latent_preview(pipe, latents)
            _write_preview(image, preview)
        ctx.progress(info["step"], info["steps"], image, batch=batch, batches=batches, a1111=True)
        if ctx.skip_requested():  # consumed: each /skip ends one batch
            raise _Skip()
    return on_step


def _latent_preview(pipe, latents):
    from stablekit.generate.steps import decode, to_pil

    return to_pil(decode(pipe.components, latents[:1]))[0]


def _write_preview(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _preview_every(state) -> int:
    value = opts.get_options(state).get("show_progress_every_n_steps", 10)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 10


def _paste(plan: Plan, image):
    """"Only masked" inpainting: the rendered region pasted back into the whole image, keeping the text."""
    if plan.box is None:
        return image
    from stablekit.metadata import annotate

    record = image.info.get("stablekit")
    whole = paste_region(plan.original, image, plan.full_mask, plan.box)
    return annotate(whole, image.info.get("parameters"), json.loads(record) if record else None)


def _save(ctx, kind: str, images: list) -> list[str]:
    from stablekit.metadata import save_image

    folder = Path(ctx.output_dir) / "a1111" / f"{kind}-images"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        path = folder / f"{ctx.job.number:05d}-{ctx.job.id[:8]}-{i}.png"
        save_image(image, path, format="PNG")
        names.append(path.relative_to(ctx.output_dir).as_posix())
    return names
