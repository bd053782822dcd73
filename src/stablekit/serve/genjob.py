"""The "generate" job kind: `stablekit generate`'s options as JSON, run through the Pipeline.

Payload keys are the CLI's flags with underscores (hyphens accepted too): prompt, negative (or
negative_prompt), steps, cfg, sampler, schedule, seed, width, height, batch_size, batch_count,
clip_skip, subseed, subseed_strength, init_image, strength, mask, hires_scale, hires_steps,
hires_denoise, hires_upscaler (a built-in or a model's name in --models-dir's ESRGAN/, RealESRGAN/,
upscale_models/ or $STABLEKIT_UPSCALER_DIR), lora ([NAME or {"name", "scale"}] from --models-dir/loras), model (a
listed checkpoint name; never a path), format (png/jpg/webp), grid. init_image and mask are a file
name in DATA_DIR/input or an image as base64 / data URL (saved under input/jobs/ at submit, so the
queue row stays small); a mask of another aspect ratio than init_image is refused (the same ratio is
resized, generate/mask_size.py). Everything is checked at submit (400 with one line), before any compute.
Outputs go to DATA_DIR/output/jobs/<job id>/ with their A1111 parameters and stablekit record.
"""
from __future__ import annotations

import base64
import binascii
import io
import shutil
import uuid

from stablekit.errors import StablekitError
from stablekit.serve.files import safe_path
from stablekit.serve.jobs import JobContext, job_kind

PARAMS = ("prompt", "negative_prompt", "steps", "cfg", "sampler", "schedule", "seed", "width", "height", "batch_size",
          "batch_count", "clip_skip", "subseed", "subseed_strength")
OTHER = ("init_image", "strength", "mask", "hires_scale", "hires_steps", "hires_denoise", "hires_upscaler", "lora",
         "model", "format", "grid")
ALIASES = {"negative": "negative_prompt", "denoising_strength": "strength", "loras": "lora", "cfg_scale": "cfg"}
IMAGE_KEYS = ("init_image", "mask")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # an input file name; anything else is base64
PREVIEW_EVERY = 2  # sampler steps between live previews (PNG frames on the job's websocket)
PREVIEW_DECODE_MAX = 32 * 32  # latents up to this many pixels are previewed through the VAE


def normalize(payload: dict) -> dict:
    """Canonical keys (underscores, aliases resolved); unknown keys are one line naming the valid ones."""
    if not isinstance(payload, dict):
        raise StablekitError(f"a generate payload is a JSON object of generate options (got {type(payload).__name__})")
    out = {}
    for key, value in payload.items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in PARAMS + OTHER:
            raise StablekitError(f"unknown generate option {key!r}; use: {', '.join(('negative',) + PARAMS[2:] + OTHER)}")
        if value is not None:
            out[name] = value
    return out


def check_generate(payload: dict, state) -> dict:
    """Validate a generate payload without a model; returns it normalized, with embedded images
    stored as input files. Raises StablekitError (400) naming the first problem."""
    from stablekit.generate.hires import HiresFix
    from stablekit.generate.params import GenerationParams
    from stablekit.metadata.outputs import FORMATS
    from stablekit.samplers import resolve_sampling

    opts = normalize(payload)
    if not isinstance(opts.get("prompt", ""), str):
        raise StablekitError(f"prompt must be text (got {opts['prompt']!r})")
    params = GenerationParams.from_dict({k: opts[k] for k in PARAMS if k in opts})
    if "strength" in opts:
        params.denoising_strength = opts["strength"]
    params.validate()
    resolve_sampling(params.sampler, params.schedule)
    if "strength" in opts and "init_image" not in opts:
        raise StablekitError("strength means img2img: give init_image too (or leave out strength)")
    if "mask" in opts and "init_image" not in opts:
        raise StablekitError("a mask needs init_image: the image to inpaint")
    if any(k.startswith("hires_") for k in opts):
        if "hires_scale" not in opts:
            raise StablekitError("hires_* options need hires_scale (the hires fix's upscale factor)")
        if "init_image" in opts:
            raise StablekitError("the hires fix is for txt2img; leave out hires_* with init_image")
        _hires(opts, HiresFix, state)
    if opts.get("format", "png") not in FORMATS:
        raise StablekitError(f"unknown format {opts['format']!r}; use one of {', '.join(FORMATS)}")
    if not isinstance(opts.get("grid", False), bool):
        raise StablekitError(f"grid must be true or false (got {opts['grid']!r})")
    opts["model"] = state.models.resolve_name(opts.get("model"))
    _loras(opts, state)
    for key in IMAGE_KEYS:
        if key in opts:
            opts[key] = _store_image(opts[key], key, state)
    if "mask" in opts:
        _mask_size(opts, state)  # another aspect ratio than the image's: 400 naming both sizes
    return opts


def _mask_size(opts: dict, state) -> str | None:
    """The mask size rule (generate/mask_size.py) for the payload's stored mask and init image: None
    for equal sizes, a note for the same aspect ratio (the mask is resized), else StablekitError."""
    from stablekit.generate.mask_size import check_mask_size

    folder = state.settings.input_dir
    return check_mask_size(safe_path(folder, opts["mask"]), safe_path(folder, opts["init_image"]))


def _hires(opts: dict, cls, state):
    """The payload's HiresFix; a model upscaler by its name in the server's upscaler dirs, never a path."""
    given = {k[len("hires_"):]: opts[k] for k in ("hires_scale", "hires_steps", "hires_denoise", "hires_upscaler")
             if k in opts}
    return cls(**given, upscaler_dirs=state.settings.upscaler_dirs).validate(paths=False)


def _loras(opts: dict, state) -> list:
    """[(path, scale)] of the payload's lora list; names must be files listed under --models-dir/loras."""
    items = opts.get("lora", [])
    if not isinstance(items, list):
        raise StablekitError("lora must be a list of names or {\"name\": NAME, \"scale\": X} objects")
    found = []
    for item in items:
        name, scale = (item, 1.0) if isinstance(item, str) else (
            (item.get("name"), item.get("scale", 1.0)) if isinstance(item, dict) else (None, None))
        if not isinstance(name, str) or isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise StablekitError(f"lora entry {item!r} must be a name or {{\"name\": NAME, \"scale\": X}}")
        found.append((state.models.folders.resolve("loras", name), float(scale)))
    return found


def _store_image(value, key: str, state) -> str:
    """An input file name for the payload's image: a name under DATA_DIR/input (checked to exist), or
    base64 / a data URL, decoded, checked to be an image and saved under input/jobs/."""
    from PIL import Image

    if not isinstance(value, str) or not value:
        raise StablekitError(f"{key} must be an input file name or a base64 image")
    # "." is not in the base64 alphabet: an image name or anything with ".." is a path (checked as one)
    if not value.startswith("data:") and len(value) < 256 and (value.lower().endswith(IMAGE_SUFFIXES) or ".." in value):
        path = safe_path(state.settings.input_dir, value)
        if not path.is_file():
            raise StablekitError(f"{key} {value!r} is not a file in the input folder; upload it first "
                                 "(POST /api/v1/uploads) or send the image as base64")
        return value
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=False)
        Image.open(io.BytesIO(raw)).verify()
    except (binascii.Error, ValueError, OSError):
        raise StablekitError(f"{key} is neither an input file name (.png/.jpg/.webp) nor a readable base64 "
                             "image") from None
    name = f"jobs/{uuid.uuid4().hex}.png"
    path = safe_path(state.settings.input_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(raw)).save(path, format="PNG")
    return name


def _preview(pipe, latents):
    """A live preview of the sampler's current x0 estimate: small latents (the embedded model's)
    through the VAE, which is cheap there and true to colour; large ones by ComfyUI's fixed
    latent-to-RGB projection, since a VAE pass per preview would cost seconds at 512 px."""
    if latents.shape[-1] * latents.shape[-2] <= PREVIEW_DECODE_MAX:
        from stablekit.generate.steps import decode, to_pil

        return to_pil(decode(pipe.components, latents[:1]))[0]
    from stablekit.serve.comfy.preview import latent_to_image

    return latent_to_image(latents)


@job_kind("generate")
def run_generate(ctx: JobContext, payload: dict) -> dict:
    """Run a checked generate payload; returns {"images": [{"filename", "url", "seed", "parameters"}],
    "model", "folder"}."""
    from stablekit.generate.hires import HiresFix
    from stablekit.generate.notes import note
    from stablekit.generate.steps import InitImage, InpaintMask
    from stablekit.metadata.outputs import plan_outputs, write_outputs

    state = ctx.state
    opts = check_generate(payload, state)  # again: the files it names may have gone since submit
    folder = ctx.output_dir / "jobs" / ctx.job.id
    if folder.exists():  # a re-run after a crash starts clean, so its outputs are not doubled
        shutil.rmtree(folder)
    plan = plan_outputs(str(folder) + "/", opts.get("format", "png"), grid=opts.get("grid", False))
    settings = {k: opts[k] for k in PARAMS if k in opts and k != "prompt"}
    loras = _loras(opts, state)
    if loras:
        settings["loras"] = loras

    def on_step(info: dict) -> None:
        done = info["batch"] * info["steps"] + info["step"]
        preview = None
        if info.get("denoised") is not None and (info["step"] % PREVIEW_EVERY == 0 or info["step"] == info["steps"]):
            preview = _preview(pipe, info["denoised"])
        ctx.progress(done, info["steps"] * info["batches"], preview, batch=info["batch"], batches=info["batches"])

    prompt = opts.get("prompt", "")
    with state.models.use(opts["model"]) as pipe:
        if "init_image" not in opts:
            hires = _hires(opts, HiresFix, state) if "hires_scale" in opts else None
            images = pipe.generate(prompt, callback=on_step, hires=hires, **settings)
        else:
            init = InitImage.load(safe_path(state.settings.input_dir, opts["init_image"]),
                                  settings.get("width"), settings.get("height"))
            settings.update(width=init.width, height=init.height)
            if "mask" in opts:
                text = _mask_size(opts, state)
                if text:
                    note(text)
                mask = InpaintMask.load(safe_path(state.settings.input_dir, opts["mask"]), init.width, init.height)
                images = pipe.inpaint(init, mask, prompt, strength=opts.get("strength", 1.0), callback=on_step,
                                      **settings)
            else:
                images = pipe.img2img(init, prompt, strength=opts.get("strength", 0.75), callback=on_step, **settings)
    paths = write_outputs(plan, images)
    out = []
    for path, image in zip(paths, images + [None] * (len(paths) - len(images))):
        rel = path.relative_to(ctx.output_dir).as_posix()
        info = (image or _open(path)).info
        out.append({"filename": rel, "url": f"/api/v1/files/{rel}", "seed": _seed(info), "grid": image is None,
                    "parameters": info.get("parameters", "")})
    return {"images": out, "model": opts["model"], "folder": folder.relative_to(ctx.output_dir).as_posix()}


def _open(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im


def _seed(info: dict):
    import json

    try:
        return json.loads(info.get("stablekit", "{}")).get("seed")
    except (ValueError, AttributeError):
        return None
