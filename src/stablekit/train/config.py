"""Training configuration: one typed dataclass, loaded from TOML and CLI flags, stored in every checkpoint."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stablekit.errors import StablekitError


@dataclass
class TrainConfig:
    """What every training run shares, whatever the strategy (what trains and what the loss is).

    steps counts optimizer updates; each update sees batch_size * grad_accum examples.
    """

    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: str = "cosine"  # constant | linear | cosine (after warm-up)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine/linear decay floor, as a fraction of lr
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    mixed_precision: str = "no"  # no | bf16 (autocast; only where measured faster)
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500  # validation sample grid every N steps (0: never)
    log_every: int = 10
    threads: int = 0  # torch threads; 0 leaves torch's default
    extra: dict = field(default_factory=dict)  # strategy-specific settings

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise StablekitError(f"steps, batch_size and grad_accum must be >= 1 (got {self.steps}, {self.batch_size}, {self.grad_accum})")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise StablekitError(f"unknown lr_schedule {self.lr_schedule!r}: use constant, linear or cosine")
        if self.mixed_precision not in ("no", "bf16"):
            raise StablekitError(f"unknown mixed_precision {self.mixed_precision!r}: use no or bf16")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StablekitError(f"unknown training setting(s) {unknown}: valid ones are {sorted(names)}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data).validate()

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise StablekitError(f"cannot read training config {path}: {exc}") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)
