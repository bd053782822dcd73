"""Held-out denoising loss at fixed timesteps and fixed noise: the stable eval loss.

The training loss is noisy because every batch draws new timesteps and noise; with both fixed,
the same model on the same held-out images always gives the same number, so checkpoints and
runs compare directly and need no extra model (the "stable eval loss" of SD3-style trainers).
For each image: VAE posterior mean -> latents; for each of K timesteps spread evenly over the
training schedule, noise from a generator seeded by (seed, image index) -> noisy latents; the
UNet, conditioned on the image's caption (no dropout, no CFG), predicts the training target
(epsilon, or v for v-prediction models, Salimans & Ho 2022); the loss is the plain MSE against
it, averaged over latent elements, timesteps and images (no Min-SNR weighting, so the figure is
the same whatever the training recipe weighted).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stablekit.errors import StablekitError


@dataclass
class LossReport:
    """loss: the mean; per_timestep: {t: mean loss at t}; n: images used."""

    loss: float
    per_timestep: dict = field(default_factory=dict)
    n: int = 0
    timesteps: list = field(default_factory=list)


def fixed_timesteps(num_train_timesteps: int, k: int = 10) -> list[int]:
    """k timesteps at the centres of k equal bins of [0, T): the schedule's whole range."""
    return [int((i + 0.5) * num_train_timesteps / k) for i in range(k)]


def _latents(components, images_u8: np.ndarray) -> torch.Tensor:
    vae = components.vae
    dtype = next(vae.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x.to(dtype)).latent_dist.mean.float()
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


def _noise(shape, seed: int, index: int, k: int) -> torch.Tensor:
    """k noise tensors for image `index`: its own generator, so adding images changes nothing else."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn((k, *shape), generator=gen)


@torch.no_grad()
def heldout_loss(components, images, captions, timesteps: int | list[int] = 10, seed: int = 0,
                 batch_size: int = 8) -> LossReport:
    """The stable eval loss of `components` on uint8 images [n, H, W, 3] with their captions.

    H and W must be multiples of the VAE's scale factor; captions may be "" (unconditional).
    """
    from stablekit.generate.denoiser import alphas_cumprod_from_config
    from stablekit.prompts.encode import PromptEncoder

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise StablekitError(f"held-out loss needs uint8 RGB images [n, H, W, 3] (got {images.dtype} {images.shape})")
    if len(captions) != len(images):
        raise StablekitError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    f = components.vae_scale_factor
    if images.shape[1] % f or images.shape[2] % f:
        raise StablekitError(f"image size {images.shape[2]}x{images.shape[1]} is not a multiple of {f}; "
                             f"resize the held-out images")
    acp = alphas_cumprod_from_config(components.scheduler_config).double()
    ts = fixed_timesteps(len(acp), timesteps) if isinstance(timesteps, int) else list(timesteps)
    if not ts or min(ts) < 0 or max(ts) >= len(acp):
        raise StablekitError(f"timesteps must lie in [0, {len(acp) - 1}] (got {ts})")
    v_pred = components.prediction_type == "v_prediction"
    unet, encoder = components.unet, PromptEncoder(components)
    dtype = next(unet.parameters()).dtype
    sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    unet.eval()
    totals = np.zeros(len(ts))
    for s in range(0, len(images), batch_size):
        x0 = _latents(components, images[s:s + batch_size])
        b = len(x0)
        cond = encoder.encode_batch(list(captions[s:s + batch_size]))
        noise = torch.stack([_noise(x0.shape[1:], seed, s + i, len(ts)) for i in range(b)], 1)  # [K, b, ...]
        for j, t in enumerate(ts):
            a = acp[t].float()
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise[j]
            target = a.sqrt() * noise[j] - (1 - a).sqrt() * x0 if v_pred else noise[j]
            extra = {}
            if sdxl:
                h, w = images.shape[1:3]
                extra["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype),
                                              "time_ids": torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype).repeat(b, 1)}
            pred = unet(noisy.to(dtype), torch.full((b,), t), encoder_hidden_states=cond.hidden_states.to(dtype),
                        return_dict=False, **extra)[0].float()
            totals[j] += ((pred - target) ** 2).mean(dim=(1, 2, 3)).sum().item()
    per_t = totals / len(images)
    return LossReport(float(per_t.mean()), {int(t): float(v) for t, v in zip(ts, per_t)}, len(images), ts)
