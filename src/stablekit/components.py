"""The loaded parts of a Stable Diffusion model, whatever file they came from.

Every loader in `stablekit.formats` returns a Components; generation, training and export take
one. Real SD 1.x / 2.x / SDXL checkpoints and the embedded shapes model use the same class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Components:
    """diffusers modules plus what the file said about them.

    arch: "sd1", "sd2", "sd2-v", "sdxl" or "shapes" (the embedded miniature model).
    scheduler_config: the diffusers scheduler config of the training noise schedule
        (num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, ...).
    name / hash: what A1111 prints as "Model" and "Model hash" (short sha256, 10 hex digits).
    """

    arch: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    name: str = ""
    hash: str = ""
    source: str = ""  # path it was loaded from
    extra: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def dtype(self):
        return self.unet.dtype
