"""Generation settings: one typed dataclass, validated, written into every PNG and read back."""
from __future__ import annotations

import dataclasses
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

    def validate(self, multiple: int = 8) -> "GenerationParams":
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0 or v % multiple):
                raise StablekitError(f"{name} must be a positive multiple of {multiple} (got {v!r}); try {max(multiple, round((v or 0) / multiple) * multiple)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise StablekitError(f"steps must be a positive integer (got {self.steps!r})")
        if self.batch_size < 1 or self.batch_count < 1:
            raise StablekitError(f"batch size and batch count must be >= 1 (got {self.batch_size}, {self.batch_count})")
        if self.cfg < 0:
            raise StablekitError(f"CFG scale must be >= 0 (got {self.cfg})")
        if self.denoising_strength is not None and not 0 <= self.denoising_strength <= 1:
            raise StablekitError(f"denoising strength must be between 0 and 1 (got {self.denoising_strength})")
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

        width, height = get("Size-1"), get("Size-2")
        sampler, schedule = str(get("Sampler", DEFAULT_SAMPLER)), get("Schedule type")
        if schedule is None:  # before A1111 1.9 the schedule was part of the sampler label
            sampler, schedule = split_legacy_sampler_name(sampler)
        return cls(
            prompt=get("Prompt", ""), negative_prompt=get("Negative prompt", ""),
            steps=int(get("Steps", 20)), cfg=float(get("CFG scale", 7.0)), sampler=sampler, schedule=schedule,
            seed=int(get("Seed", -1)), width=int(width) if width else None, height=int(height) if height else None,
            clip_skip=int(get("Clip skip", 1)),
            denoising_strength=float(get("Denoising strength")) if get("Denoising strength") is not None else None,
        )
