"""Training configuration: one typed dataclass, loaded from TOML and CLI flags, stored in every checkpoint."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.train.precision import MIXED_PRECISION

OPTIMIZERS = ("adamw", "adafactor", "sgd")
LR_SCHEDULES = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig:
    """What every training run shares, whatever the strategy (what trains and what the loss is).

    steps counts optimizer updates. batch_size is per process (as in accelerate and kohya): one
    update sees batch_size * processes * grad_accum examples.
    """

    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | adafactor | sgd
    lr: float = 1e-4
    # the text encoder(s)' own lr when they train (LoRA, fine-tune, DreamBooth): its own optimizer
    # parameter group, as kohya's text_encoder_lr; 0 = the same as lr (kohya's unset)
    text_encoder_lr: float = 0.0
    lr_schedule: str = "cosine"  # constant | linear | cosine | cosine_with_restarts | polynomial
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the floor every decaying schedule ends at, as a fraction of lr
    lr_cycles: int = 1  # cosine_with_restarts: number of hard restarts (cycles)
    lr_power: float = 1.0  # polynomial: decay power (1 = linear)
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0  # sgd only
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    # auto | no | bf16: bf16 autocast with the UNet's frozen layers in bf16; auto = bf16 where generation's
    # per-machine probe picks bf16 for this UNet (a full-size UNet on a CPU with bf16 kernels), else no
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto (accelerate picks: CUDA > MPS > CPU) | cpu | cuda | cuda:N | mps
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500  # validation sample grid every N steps (0: never)
    log_every: int = 10
    tensorboard: bool = True  # TensorBoard event files in <out_dir>/logs (metrics.jsonl is always written)
    threads: int = 0  # torch threads; 0 leaves torch's default
    # evaluation inside training (stablekit.evaluate.in_training); 0 disables it
    eval_every: int = 0
    eval_metrics: str = "loss,judge"  # comma-separated subset of fid,kid,clip,loss,judge
    eval_prompts: str = ""  # prompt file (.txt, .jsonl; .jsonl rows with "named" are judged); "" = defaults
    eval_reference: str = ""  # reference image folder for fid/kid/loss ("" = rendered, shapes world only)
    eval_n: int = 32  # images for fid/kid/clip and the held-out loss
    eval_steps: int = 20  # sampler steps of the eval images
    eval_cfg: float = 0.0  # CFG of the eval images (0: the model's default)
    eval_clip: str = ""  # local CLIP model folder for the clip metric
    eval_judge_limit: int = 0  # judge only the first N prompts (0: all)
    keep_best: str = ""  # export <out>/<name>-best.safetensors whenever this eval metric improves

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise StablekitError(f"steps, batch_size and grad_accum must be >= 1 (got {self.steps}, {self.batch_size}, {self.grad_accum})")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.lr <= 0 or self.warmup_steps < 0 or self.lr_cycles < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise StablekitError(f"need lr > 0, warmup_steps >= 0, lr_cycles >= 1, 0 <= min_lr_ratio <= 1 "
                                 f"(got {self.lr}, {self.warmup_steps}, {self.lr_cycles}, {self.min_lr_ratio})")
        if self.text_encoder_lr < 0:
            raise StablekitError(f"need text_encoder_lr >= 0 (0: the same as lr; got {self.text_encoder_lr})")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise StablekitError(f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.sample_every < 0 or self.keep_checkpoints < 1:
            raise StablekitError(f"need checkpoint_every >= 1, log_every >= 1, sample_every >= 0 (0: never) and "
                                 f"keep_checkpoints >= 1 (got {self.checkpoint_every}, {self.log_every}, "
                                 f"{self.sample_every}, {self.keep_checkpoints}); a large checkpoint_every "
                                 "saves only at the end")
        if self.eval_every < 0 or self.eval_n < 0 or self.eval_steps < 1 or self.eval_judge_limit < 0:
            raise StablekitError(f"need eval_every >= 0, eval_n >= 0, eval_steps >= 1, eval_judge_limit >= 0 (got "
                                 f"{self.eval_every}, {self.eval_n}, {self.eval_steps}, {self.eval_judge_limit})")
        if self.keep_best and not self.eval_every:
            raise StablekitError(f"--keep-best {self.keep_best} needs evaluation during training: add --eval-every N")
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
        data = read_toml(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def _choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise StablekitError(f"unknown {what} {value!r}: use one of {', '.join(valid)}")


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict; an unreadable or malformed file is a one-line error."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StablekitError(f"cannot read training config {path}: {exc}") from None


def to_toml(data: dict) -> str:
    """A flat dict (str, int, float, bool, lists of those; None left out) as TOML text.

    The standard library reads TOML but does not write it; our configs are flat, so this is enough.
    """
    lines = []
    for key, value in data.items():
        if value is None:
            lines.append(f"# {key} = (not set)")
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    import json

    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
