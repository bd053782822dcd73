"""The embedded model's noise schedules, by name (`stablekit shapes pretrain --unet-noise-schedule`).

    sd        SD's scaled-linear betas (architecture.SCHEDULER_CONFIG): the last training step keeps
              signal (SNR about 0.0047 at t=999), so a UNet can read the image's mean colour from
              the noisy latent there, which the pure noise a sampler starts from does not have.
    zero-snr  the same betas rescaled to zero terminal SNR with trailing timesteps (Lin et al. 2024,
              "Common Diffusion Noise Schedules and Sample Steps are Flawed", diffusers'
              rescale_betas_zero_snr); with v-prediction, which the model already uses. The
              project's default samplers already start at t=T-1 ("trailing"). Their CFG rescale
              (phi 0.7) is not recorded as a default: on the background-colour set it measured worse
              (docs/reports/shapes-v4.md), so it stays a generation option (--cfg-rescale).
"""
from __future__ import annotations

from stablekit.errors import StablekitError
from stablekit.shapes import architecture as arch

SCHEDULES = {
    "sd": {},
    "zero-snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
}


def scheduler_config(name: str = "sd") -> dict:
    """The scheduler config (diffusers keys) of the named schedule."""
    if name not in SCHEDULES:
        raise StablekitError(f"unknown noise schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    return {**arch.SCHEDULER_CONFIG, **SCHEDULES[name]}


def generation_defaults(cfg) -> dict:
    """The generation defaults a pretrain run records in its exported model (formats/model_defaults)."""
    return {"cfg": cfg.default_cfg}
