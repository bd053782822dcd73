"""Regenerating an image from its PNG: which settings apply, which are ignored, which inputs it needs.

A stablekit PNG carries the JSON record (generate/record.py): the whole batch is regenerated and
the image's own index kept, so the result is pixel-identical. An A1111 PNG carries only the
`parameters` text: every field stablekit implements is applied, every other one is named (in one
warning line by the caller), and the image is regenerated on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stablekit.generate.guidance import TEXT_KEYS as GUIDANCE_KEYS
from stablekit.generate.guidance import GuidanceOptions
from stablekit.generate.params import GenerationParams
from stablekit.generate.record import params_from_record

# A1111 fields GenerationParams.from_a1111 applies, or that describe the model (compared, not applied).
A1111_APPLIED = frozenset({
    "Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2",
    "Denoising strength", "Clip skip", "Variation seed", "Variation seed strength", "Seed resize from-1",
    "Seed resize from-2", "Model hash", "Model", "Version", "Lora hashes", "TI hashes",
    "Hires upscale", "Hires steps", "Hires upscaler", *GUIDANCE_KEYS,
    "Mask blur", "Inpaint area", "Masked area padding", "Mask mode", "Masked content", "Noise mask",
    "DeepCache", "Token merging ratio",
})
# Fields only A1111's inpainting writes: such a PNG needs its mask again.
A1111_INPAINT_FIELDS = ("Mask blur", "Inpaint area", "Masked area padding", "Mask mode", "Masked content", "Noise mask")
RECORD_KEYS = frozenset(GenerationParams.__dataclass_fields__) | {
    "batch_index", "schedule_resolved", "init_image", "mask", "model", "stablekit", "loras", "embeddings",
    "controlnet", "hires", "guidance", "inpaint", "deepcache", "tome"}
# Lossy accelerators replayed with their recorded values (the tiny VAE is a local file: given again)
ACCELERATOR_FIELDS = {"DeepCache": ("deepcache", int), "Token merging ratio": ("tome", float)}


@dataclass
class Replay:
    """How to regenerate a PNG's image.

    params: settings of the whole batch that made it (batch_count 1); index: the image's place in
    that batch; model: the record's model entry ({} for A1111 PNGs); init_image / mask: the
    record's identity ({"sha256", "width", "height"}) of each input, or True when an A1111 PNG
    needs one but cannot identify it, or None; ignored: field names not applied.
    """

    params: GenerationParams
    index: int = 0
    model: dict = field(default_factory=dict)
    init_image: dict | bool | None = None
    mask: dict | bool | None = None
    ignored: list[str] = field(default_factory=list)
    controlnet: list = field(default_factory=list)  # the units it was made with (records; A1111 text)
    hires: object = None  # HiresFix (generate/hires.py) of a hires-fix image
    guidance: GuidanceOptions | None = None  # CFG rescale, FreeU, PAG, fix steps (generate/guidance.py)
    inpaint: object = None  # InpaintOptions (generate/inpaint_options.py) of an inpainting image, else None
    accelerators: dict = field(default_factory=dict)  # deepcache / tome it was made with (generate/accelerators.py)


def replay(info: dict) -> Replay | None:
    """A Replay from `stablekit.metadata.read_png_info` output; None when it holds no parameters."""
    from stablekit.generate.hires import HiresFix

    fields = info.get("fields") or {}
    ignored = [k for k in fields if k not in A1111_APPLIED and not k.startswith("ControlNet ")]
    units = [fields[k] for k in fields if k.startswith("ControlNet ")]
    if fields.get("RNG", "CPU") == "CPU" and "RNG" in ignored:
        ignored.remove("RNG")  # A1111's CPU noise source is what stablekit always uses
    record = info.get("stablekit")
    if record:
        params, index = params_from_record(record)
        ignored += [k for k in record if k not in RECORD_KEYS]
        return Replay(params, index, record.get("model") or {}, record.get("init_image"), record.get("mask"),
                      sorted(set(ignored)), record.get("controlnet") or units, HiresFix.from_record(record.get("hires")),
                      GuidanceOptions.from_record(record.get("guidance")), _inpaint_from_record(record.get("inpaint")),
                      {k: record[k] for k in ("deepcache", "tome") if k in record})
    if info.get("parameters"):
        params = GenerationParams.from_a1111(fields)
        if any(k.startswith("Hires") for k in fields) and params.denoising_strength is not None:
            params.denoising_strength = None  # the hires pass's strength, not img2img's
        needs_mask = any(k in fields for k in A1111_INPAINT_FIELDS) or None
        needs_init = (params.denoising_strength is not None) or None
        return Replay(params, 0, {}, needs_init, needs_mask, ignored, units, HiresFix.from_fields(fields),
                      GuidanceOptions.from_fields(fields), inpaint_from_fields(fields) if needs_mask else None,
                      _accelerators_from_fields(fields))
    from stablekit.metadata.comfy import params_from_comfy_prompt, read_comfy_chunks

    comfy = read_comfy_chunks(info.get("text") or {})
    if comfy is not None:  # a ComfyUI PNG with one KSampler; regenerated with A1111's noise, so close, not equal
        return Replay(GenerationParams.from_dict(params_from_comfy_prompt(comfy["prompt"])))
    return None


def inpaint_from_fields(fields: dict):
    """A1111's inpainting text fields (Mask blur, Mask mode, Masked content, Inpaint area, Masked area
    padding) -> InpaintOptions; A1111 leaves out what is at its default (original content, whole picture)."""
    from stablekit.errors import StablekitError
    from stablekit.generate.inpaint_options import InpaintOptions

    try:
        return InpaintOptions(
            mask_blur=int(float(fields.get("Mask blur", 0))),
            invert=str(fields.get("Mask mode", "")).strip().lower() == "inpaint not masked",
            fill=str(fields.get("Masked content", "original")),
            only_masked=str(fields.get("Inpaint area", "")).strip().lower() == "only masked",
            padding=int(float(fields.get("Masked area padding", 32))),
            noise_mask=str(fields.get("Noise mask", "")).strip().lower() == "true",  # stablekit's text only
        ).validate()
    except ValueError as exc:
        raise StablekitError(f"the PNG's inpainting fields are not numbers: {exc}") from None


def _inpaint_from_record(record: dict | None):
    if not record:
        return None
    from stablekit.generate.inpaint_options import InpaintOptions

    keys = ("mask_blur", "invert", "fill", "only_masked", "padding", "noise_mask")
    return InpaintOptions(**{k: record[k] for k in keys if k in record}).validate()


def inpaint_options(recorded, given: dict):
    """The InpaintOptions of a run: flags given (InpaintOptions field -> value) over the PNG's own
    (`recorded`, Replay.inpaint); None when neither has any, so the plain hard mask is used."""
    from dataclasses import replace

    from stablekit.generate.inpaint_options import InpaintOptions

    if recorded is None and not given:
        return None
    return replace(recorded or InpaintOptions(), **given).validate()


def _accelerators_from_fields(fields: dict) -> dict:
    """deepcache / tome from an A1111-style text ("DeepCache: 3", "Token merging ratio: 0.5"); a
    value that is not a number is a one-line error naming the field."""
    from stablekit.errors import StablekitError

    out = {}
    for name, (key, kind) in ACCELERATOR_FIELDS.items():
        if name in fields:
            try:
                out[key] = kind(str(fields[name]).strip())
            except ValueError:
                raise StablekitError(f"the PNG's '{name}: {fields[name]}' is not a number; remove the field "
                                     "or give the setting as a flag") from None
    return out
