"""Generation settings: one typed dataclass, validated, written into every PNG and read back."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from stablekit.errors import StablekitError

DEFAULT_SAMPLER = "DPM++ 2M"  # A1111's default since 1.6
DEFAULT_SCHEDULE = "Automatic"


@dataclass
class GenerationParams:
    """Everything that, with the model, determines a txt2img image (A1111's names in comments)."""

    prompt: str = ""
    negative_prompt: str = ""  # Negative prompt
    steps: int = 20  # Steps
    cfg: float = 7.0  # CFG scale
    sampler: str = DEFAULT_SAMPLER  # Sampler
    schedule: str = DEFAULT_SCHEDULE  # Schedule type
    seed: int = -1  # Seed (-1: random); image i of the run uses seed + i
    width: int | None = None  # Size; None: the model's native size
    height: int | None = None
    batch_size: int = 1  # images per UNet call
    batch_count: int = 1  # sequential batches
    clip_skip: int = 1  # Clip skip
    denoising_strength: float | None = None  # Denoising strength; None: txt2img, else img2img
    subseed: int = -1  # Variation seed (-1: random); used only with a subseed_strength
    subseed_strength: float = 0.0  # Variation seed strength (0: off)
    seed_resize_from_w: int = 0  # Seed resize from (width x height; 0: off)
    seed_resize_from_h: int = 0

    def validate(self, multiple: int = 8) -> "GenerationParams":
        """Check every field's type and range; a one-line StablekitError names the first bad one."""
        _text(self, "prompt")
        _text(self, "negative_prompt")
        for name in ("sampler", "schedule"):
            if not isinstance(getattr(self, name), str):
                raise StablekitError(f"{name} must be a name such as 'Euler a' (got {getattr(self, name)!r})")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v <= 0 or v % multiple):
                near = max(multiple, round(v / multiple) * multiple) if _is_number(v) else 512
                raise StablekitError(f"{name} must be a positive multiple of {multiple} (got {v!r}); try {near}")
        _whole(self, "steps", 1)
        _whole(self, "batch_size", 1)
        _whole(self, "batch_count", 1)
        _whole(self, "clip_skip", 1)
        _whole(self, "seed", -1)
        _whole(self, "subseed", -1)
        _whole(self, "seed_resize_from_w", 0)
        _whole(self, "seed_resize_from_h", 0)
        _number(self, "cfg", 0, None, "CFG scale")
        _number(self, "subseed_strength", 0, 1, "variation seed strength")
        if self.denoising_strength is not None:
            _number(self, "denoising_strength", 0, 1, "denoising strength")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationParams":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_a1111(cls, fields: dict) -> "GenerationParams":
        """From parsed A1111 `parameters` (stablekit.metadata.parse_parameters output)."""
        from stablekit.samplers import split_legacy_sampler_name

        def get(key, default=None):
            return fields.get(key, default)

        def num(key, kind, default=None):
            value = get(key)
            if value is None:
                return default
            try:
                return kind(float(value)) if kind is int else kind(value)
            except ValueError:
                raise StablekitError(f"the PNG's {key!r} value {value!r} is not a number") from None

        width, height = get("Size-1"), get("Size-2")
        sampler, schedule = str(get("Sampler", DEFAULT_SAMPLER)), get("Schedule type")
        if schedule is None:  # before A1111 1.9 the schedule was part of the sampler label
            sampler, schedule = split_legacy_sampler_name(sampler)
        return cls(
            prompt=get("Prompt", ""), negative_prompt=get("Negative prompt", ""),
            steps=num("Steps", int, 20), cfg=num("CFG scale", float, 7.0), sampler=sampler, schedule=schedule,
            seed=num("Seed", int, -1), width=int(width) if width else None, height=int(height) if height else None,
            clip_skip=num("Clip skip", int, 1), denoising_strength=num("Denoising strength", float),
            subseed=num("Variation seed", int, -1), subseed_strength=num("Variation seed strength", float, 0.0),
            seed_resize_from_w=num("Seed resize from-1", int, 0), seed_resize_from_h=num("Seed resize from-2", int, 0),
        )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(params, name: str) -> None:
    if not isinstance(getattr(params, name), str):
        raise StablekitError(f"{name} must be text (got {getattr(params, name)!r})")


def _whole(params, name: str, least: int) -> None:
    v = getattr(params, name)
    if not _is_int(v) or v < least:
        raise StablekitError(f"{name} must be a whole number >= {least} (got {v!r})")


def _number(params, name: str, low: float, high: float | None, label: str) -> None:
    v = getattr(params, name)
    if not _is_number(v):
        raise StablekitError(f"{name} ({label}) must be a number (got {v!r})")
    if v < low or (high is not None and v > high):
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise StablekitError(f"{label} must be {span} (got {v})")
