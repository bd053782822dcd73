"""An A1111 txt2img / img2img request (fields.normalize) -> what stablekit's Pipeline is called with.

Mapping (A1111 -> stablekit): sampler_name (or the old sampler_index; pre-1.9 labels such as
"DPM++ 2M Karras" split into sampler + schedule) and scheduler -> sampler, schedule (samplers
registry, A1111 and ComfyUI names); cfg_scale -> cfg; n_iter -> batches run one after another (so
/skip ends one batch and /interrupt keeps the finished ones, as A1111); seed_resize_from_* <= 0 ->
off; CLIP_stop_at_last_layers (override_settings, else the options) -> clip_skip; styles ->
prompts (styles.csv); enable_hr, hr_scale / hr_resize_x/y, hr_upscaler, hr_second_pass_steps,
denoising_strength -> generate/hires.HiresFix; img2img init_images[0], denoising_strength ->
Pipeline.img2img; with a mask -> Pipeline.inpaint after A1111's mask handling (images.py).
Width and height are rounded down to multiples of 8, as A1111 does. Fields stablekit cannot honour
are refused with a 422 naming them; those that do not change the result here (restore_faces, eta,
s_churn ..., image_cfg_scale, do_not_save_*) are accepted and ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from stablekit.errors import StablekitError
from stablekit.serve.a1111 import options as opts
from stablekit.serve.a1111.fields import PayloadError
from stablekit.serve.a1111.images import crop_region, decode_image, fill_masked, prepare_mask

LIMITS = {"width": 4096, "height": 4096, "steps": 500, "batch_size": 64, "n_iter": 1000}
INF = float("inf")
RANGES = (("steps", 1, INF), ("cfg_scale", 0, INF), ("batch_size", 1, INF), ("n_iter", 1, INF),
          ("width", 8, INF), ("height", 8, INF), ("subseed_strength", 0, 1), ("seed", -1, 2**63 - 1),
          ("subseed", -1, 2**63 - 1))
MAX_BATCH_PIXELS = 4096 * 4096  # width * height * batch_size: more would exhaust memory, not fail cleanly
SAME = (None, "", "None", "Use same checkpoint", "Use same sampler", "Use same scheduler")


@dataclass
class Plan:
    """One request, resolved: the mode, the prompt, the Pipeline settings and the inputs."""

    mode: str  # "txt2img" | "img2img" | "inpaint"
    prompt: str
    settings: dict  # GenerationParams fields (+ lora_dir / embeddings_dir) for one batch
    n_iter: int
    checkpoint: str  # model manager file name
    hires: object = None  # HiresFix
    strength: float | None = None
    init: Image.Image | None = None  # at width x height (the cropped region for "Only masked")
    mask: Image.Image | None = None  # "L", blurred, same size as init
    original: Image.Image | None = None  # "Only masked": the whole image the region is pasted back into
    full_mask: Image.Image | None = None
    box: tuple | None = None
    styles: list = field(default_factory=list)


def build(kind: str, req: dict, state, *, decode: bool = True) -> Plan:
    """The Plan of a normalised request; PayloadError (422, 404 for unknown sampler/model as A1111)
    for anything stablekit cannot do. decode=False skips decoding images (route-side checks)."""
    _refuse_unsupported(kind, req)
    override = req["override_settings"] or {}
    for key, value in override.items():
        opts.check_fixed(key, value)
    options = {**opts.get_options(state), **override}
    checkpoint = opts.resolve_checkpoint(state, override.get("sd_model_checkpoint") or options["sd_model_checkpoint"])
    prompt, negative = opts.apply_styles(state, req["prompt"], req["negative_prompt"], req["styles"] or [])
    sampler, schedule = _sampling(req)
    for name, top in LIMITS.items():
        if req[name] > top:
            raise PayloadError(f"{name}={req[name]} is more than this server accepts ({top})")
    for name, low, high in RANGES:
        if not low <= req[name] <= high:
            raise PayloadError(f"{name} must be between {low} and {high} (got {req[name]})" if high != INF
                               else f"{name} must be >= {low} (got {req[name]})")
    width, height = max(8, req["width"] // 8 * 8), max(8, req["height"] // 8 * 8)
    if width * height * req["batch_size"] > MAX_BATCH_PIXELS:
        raise PayloadError(f"{width}x{height} x batch_size {req['batch_size']} is more pixels per batch than this "
                           f"server renders ({MAX_BATCH_PIXELS}); lower batch_size and raise n_iter")
    models = state.models.folders.models
    settings = {
        "negative_prompt": negative, "steps": req["steps"], "cfg": req["cfg_scale"], "sampler": sampler,
        "schedule": schedule, "seed": req["seed"], "width": width, "height": height, "batch_size": req["batch_size"],
        "clip_skip": opts.clip_skip(options), "subseed": req["subseed"], "subseed_strength": req["subseed_strength"],
        "seed_resize_from_w": max(0, req["seed_resize_from_w"]),
        "seed_resize_from_h": max(0, req["seed_resize_from_h"]),
    }
    if models is not None and (models / "loras").is_dir():
        settings["lora_dir"] = str(models / "loras")
    if models is not None and (models / "embeddings").is_dir():
        settings["embeddings_dir"] = str(models / "embeddings")
    _check_settings(prompt, settings)
    plan = Plan("txt2img", prompt, settings, req["n_iter"], checkpoint, styles=list(req["styles"] or []))
    if kind == "txt2img":
        plan.hires = _hires(req, width, height, state.settings.upscaler_dirs)
        return plan
    plan.mode, plan.strength = "img2img", req["denoising_strength"]
    if not 0 <= plan.strength <= 1:
        raise PayloadError(f"denoising_strength must be between 0 and 1 (got {plan.strength})")
    if decode:
        _inputs(plan, req)
    return plan


def _refuse_unsupported(kind: str, req: dict) -> None:
    if req["script_name"]:
        raise PayloadError(f"Script '{req['script_name']}' not found (stablekit has no A1111 scripts)")
    for name in req["alwayson_scripts"] or {}:
        raise PayloadError(f"always on script {name} not found (stablekit has no A1111 extensions)")
    if req["tiling"]:
        raise PayloadError("tiling is not supported by stablekit; send tiling=false")
    if req["refiner_checkpoint"] not in SAME:
        raise PayloadError("refiner_checkpoint is not supported by stablekit; leave it out")
    if req["firstpass_image"]:
        raise PayloadError("firstpass_image is not supported by stablekit; leave it out")
    if kind == "txt2img":
        for key, base in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
            if req[key] and req[key] != req[base]:
                raise PayloadError(f"{key} differing from {base} is not supported by stablekit; leave it empty")
        for key, base in (("hr_sampler_name", "sampler_name"), ("hr_scheduler", "scheduler"),
                          ("hr_checkpoint_name", None)):
            if req[key] not in SAME and (base is None or req[key] != req[base]):
                raise PayloadError(f"{key} is not supported by stablekit (the second pass uses the first "
                                   "pass's); leave it out")
        return
    if req["resize_mode"] != 0:
        raise PayloadError(f"resize_mode={req['resize_mode']} is not supported by stablekit; use 0 (just resize)")
    if req["inpainting_fill"] not in (0, 1):
        raise PayloadError(f"inpainting_fill={req['inpainting_fill']} (latent noise / nothing) is not supported "
                           "by stablekit; use 0 (fill) or 1 (original)")
    if req["initial_noise_multiplier"] not in (None, 1.0):
        raise PayloadError("initial_noise_multiplier other than 1 is not supported by stablekit; leave it out")
    if req["latent_mask"]:
        raise PayloadError("latent_mask is not supported by stablekit; leave it out")
    if not req["init_images"]:
        raise PayloadError("Init image not found: send init_images with one base64 image", status=404)
    if len(req["init_images"]) > 1:
        raise PayloadError(f"stablekit takes one init image per request (got {len(req['init_images'])}); "
                           "send one, or one request per image")


def _sampling(req: dict) -> tuple[str, str]:
    """(sampler, schedule) names, checked against the samplers registry; unknown: 404 as A1111."""
    from stablekit.samplers import resolve_sampling, split_legacy_sampler_name

    name = req["sampler_name"] or req["sampler_index"] or "Euler"
    schedule = req["scheduler"] or "Automatic"
    try:
        if schedule.strip().lower() == "automatic":
            name, schedule = split_legacy_sampler_name(name)
        sampling = resolve_sampling(name, schedule)
    except StablekitError as exc:
        status = 404 if "sampler" in str(exc).split(";")[0] else 422
        raise PayloadError(str(exc), status=status) from None
    return sampling.sampler.name, sampling.schedule


def _check_settings(prompt: str, settings: dict) -> None:
    from stablekit.generate.params import GenerationParams

    values = {k: v for k, v in settings.items() if k not in ("lora_dir", "embeddings_dir")}
    try:
        GenerationParams(prompt=prompt, **values).validate()
    except StablekitError as exc:
        raise PayloadError(str(exc)) from None


def _hires(req: dict, width: int, height: int, dirs=()):
    """HiresFix for enable_hr (None without it). hr_resize_x/y are turned into a scale; a target
    with another aspect ratio than width:height (A1111 crops for it) is refused. A model upscaler is
    found by name in `dirs` (the server's upscaler dirs, then $STABLEKIT_UPSCALER_DIR), never by path."""
    if not req["enable_hr"]:
        return None
    from stablekit.generate.hires import HiresFix

    scale = req["hr_scale"]
    rx, ry = req["hr_resize_x"], req["hr_resize_y"]
    if rx or ry:
        sx, sy = (rx / width if rx else None), (ry / height if ry else None)
        if sx and sy and abs(sx - sy) > 0.02:
            raise PayloadError(f"hr_resize {rx}x{ry} has another aspect ratio than {width}x{height}; stablekit's "
                               "hires fix scales: send hr_scale or a proportional size")
        scale = sx or sy
    upscaler = req["hr_upscaler"] or "Latent"
    upscaler = "Lanczos" if upscaler == "None" else upscaler  # A1111's "None" resizes with Lanczos
    denoise = 0.7 if req["denoising_strength"] is None else req["denoising_strength"]
    try:
        hires = HiresFix(scale=scale, steps=req["hr_second_pass_steps"], denoise=denoise, upscaler=upscaler,
                         upscaler_dirs=dirs).validate(paths=False)
    except StablekitError as exc:
        raise PayloadError(str(exc)) from None
    target = hires.target(width, height)
    if max(target) > LIMITS["width"] or hires.steps > LIMITS["steps"]:
        raise PayloadError(f"the hires fix would render {target[0]}x{target[1]} in {hires.steps} steps; this server "
                           f"accepts up to {LIMITS['width']} px and {LIMITS['steps']} steps")
    return hires


def _inputs(plan: Plan, req: dict) -> None:
    """Decode init image and mask and apply A1111's inpainting steps (invert, blur, fill, crop)."""
    size = (plan.settings["width"], plan.settings["height"])
    image = decode_image(req["init_images"][0], "init_images[0]").convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.LANCZOS)  # resize_mode 0, "Just resize"
    plan.init = image
    if not req["mask"]:
        return
    plan.mode = "inpaint"
    blur = req["mask_blur"]
    bx, by = (blur, blur) if blur is not None else (req["mask_blur_x"], req["mask_blur_y"])
    mask = prepare_mask(decode_image(req["mask"], "mask"), size, bool(req["inpainting_mask_invert"]), bx, by)
    if req["inpaint_full_res"]:
        box = crop_region(mask, req["inpaint_full_res_padding"], *size)
        if box is not None:
            plan.original, plan.full_mask, plan.box = image, mask, box
            image = image.crop(box).resize(size, Image.LANCZOS)
            mask = mask.crop(box).resize(size, Image.LANCZOS)
    if req["inpainting_fill"] == 0:
        image = fill_masked(image, mask)
    plan.init, plan.mask = image, mask
