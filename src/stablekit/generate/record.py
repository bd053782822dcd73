"""What an image says about how it was made: A1111's `parameters` text and stablekit's JSON record.

The record (docs/png-metadata.md, CONTRACTS.md) holds every GenerationParams field plus the
image's own seed, its place in its batch (batch_size, batch_index: batched float arithmetic can
differ from a lone run in the last bit, so `--from-png` regenerates the whole batch and keeps
this image), the init image and mask by hash and size, and the model. Sampler and schedule are
A1111's canonical names, never an alias, so A1111 reads our text back to the same settings.
"""
from __future__ import annotations

from stablekit.generate.params import GenerationParams


def image_seeds(params: GenerationParams, index: int) -> tuple[int, int]:
    """(seed, subseed) of image `index` of a run, as A1111 numbers them (generate/noise.batch_seeds)."""
    from stablekit.generate.noise import batch_seeds

    seeds, subseeds = batch_seeds(params.seed, params.subseed, params.subseed_strength, index, 1)
    return seeds[0], subseeds[0]


def parameters_text(params: GenerationParams, seed: int, subseed: int, components, extra: dict | None = None) -> str:
    """A1111's `parameters` text for one image, keys in A1111's order and spelling. extra: more
    fields (A1111's "Lora hashes", "TI hashes"; ControlNet units, hires fix), written before Version
    as A1111 and its extensions do."""
    from stablekit import __version__
    from stablekit.metadata import format_parameters

    varied = params.subseed_strength != 0
    resized = params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0
    settings = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": params.schedule,
        "CFG scale": params.cfg,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": components.hash or None,
        "Model": components.name or None,
        "Variation seed": subseed if varied else None,
        "Variation seed strength": params.subseed_strength if varied else None,
        "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}" if resized else None,
        "Denoising strength": params.denoising_strength,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        **(extra or {}),
        "Version": f"stablekit {__version__}",
    }
    return format_parameters(params.prompt, params.negative_prompt, {k: v for k, v in settings.items() if v is not None})


def make_record(params: GenerationParams, seed: int, subseed: int, batch_index: int, schedule_used: str,
                components, init=None, mask=None, extra: dict | None = None) -> dict:
    """The stablekit JSON record of one image (see the module docstring); extra: more entries
    ("loras", "embeddings": generate/networks.py; "controlnet", "hires")."""
    from stablekit import __version__

    return {**params.to_dict(), "seed": seed, "subseed": subseed, "batch_count": 1, "batch_index": batch_index,
            "schedule_resolved": schedule_used,
            "init_image": None if init is None else init.identity(),
            "mask": None if mask is None else mask.identity(),
            "model": {"name": components.name, "hash": components.hash, "arch": components.arch,
                      "source": components.source},
            **(extra or {}), "stablekit": __version__}


def params_from_record(record: dict) -> tuple[GenerationParams, int]:
    """(settings that regenerate the image's whole batch, the image's index in it) from a record.

    Records written before batch_index existed say batch_size 1 and regenerate the image alone.
    """
    params = GenerationParams.from_dict(record)
    index = record.get("batch_index", 0)
    if not isinstance(index, int) or not 0 <= index < max(1, params.batch_size if isinstance(params.batch_size, int) else 1):
        index, params.batch_size = 0, 1
    if isinstance(params.seed, int):
        params.seed -= 0 if params.subseed_strength else index
    if params.subseed_strength and isinstance(params.subseed, int) and params.subseed >= 0:
        params.subseed -= index
    params.batch_count = 1
    return params, index
