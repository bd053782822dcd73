"""The loaded parts of a Stable Diffusion model, whatever file they came from.

Every loader in `stablekit.formats` returns a Components; generation, training and export take
one. Real SD 1.x / 2.x / SDXL checkpoints and the embedded shapes model use the same class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What a UNet's output means (diffusers' scheduler `prediction_type`); the Denoiser turns each into x0.
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class Components:
    """diffusers modules plus what the file said about them.

    arch: "sd1", "sd2", "sd2-v", "sdxl" or "shapes" (the embedded miniature model).
    scheduler_config: the diffusers scheduler config of the training noise schedule
        (num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, ...).
    name / hash: what A1111 prints as "Model" and "Model hash" (short sha256, 10 hex digits).
        The hash is computed on first use from `hash_file` (and cached on disk): loading a
        model never waits for a multi-GB sha256.
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
    hash_file: str = ""  # the file whose sha256 is the model hash
    source: str = ""  # path it was loaded from
    extra: dict = field(default_factory=dict)
    _hash: str = field(default="", repr=False)

    @property
    def hash(self) -> str:
        if not self._hash and self.hash_file:
            from stablekit.formats.hashes import a1111_short_hash

            self._hash = a1111_short_hash(self.hash_file)
        return self._hash

    @hash.setter
    def hash(self, value: str) -> None:
        self._hash = value

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
        return module_dtype(self.unet)

    @property
    def device(self) -> "torch.device":
        """Where the UNet's weights live (every module is kept on the same device by `to`)."""
        import torch

        return next((p.device for p in self.unet.parameters()), torch.device("cpu"))

    def modules(self) -> dict[str, Any]:
        """The loaded torch modules by name (absent ones left out)."""
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device) -> "Components":
        """Move every module to `device` (a torch.device or "cpu", "cuda:1", ...), in place."""
        for module in self.modules().values():
            module.to(device)
        return self


def module_dtype(module) -> "torch.dtype":
    """The dtype of a module's first floating-point parameter. diffusers' `ModelMixin.dtype` walks
    every submodule on each access: 31 ms per 20-step image on the embedded model
    (benchmarks/profile_generate.py)."""
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
