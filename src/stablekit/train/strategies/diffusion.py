"""Denoising diffusion: the stage-2 objective of latent diffusion, shared by every method.

`diffusion_loss` is the one implementation of the noising, the target and the loss weighting;
`DiffusionStrategy` trains a UNet on cached latents and text embeddings (pretraining), and the
method strategies (finetune, lora, textual_inversion, dreambooth) call `diffusion_loss` on what
they encode. Noise schedule and target follow the model's scheduler config (DDPM forward process,
Ho et al. 2020; v-prediction, Salimans & Ho 2022), with optional Min-SNR-gamma loss weighting
(Hang et al. 2023), offset noise (Guttenberg 2023, as kohya's `noise_offset`) and caption dropout
so classifier-free guidance works (Ho & Salimans 2022). A zero-terminal-SNR schedule
(rescale_betas_zero_snr, Lin et al. 2024) comes through the config too: at t=T the input is pure
noise and the v target is -x0. Note that Min-SNR with v-prediction weights that step by
min(snr, g)/(snr + 1) = 0, so zero-SNR training wants snr_gamma 0 (plain v loss, as Lin et al.).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from stablekit.generate.denoiser import alphas_cumprod_from_config


def diffusion_loss(unet, x0: torch.Tensor, context: torch.Tensor, rng, alphas_cumprod: torch.Tensor,
                   prediction_type: str = "epsilon", snr_gamma: float = 0.0, noise_offset: float = 0.0,
                   weights: torch.Tensor | None = None, added_cond_kwargs: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-item MSE) for one batch: x0 [B, C, h, w] latents, context [B, T, D].

    The loss is the mean over items of per-item MSE x Min-SNR weight x `weights` (e.g. DreamBooth's
    prior_loss_weight for class images): a per-item weighting, so a batch split over processes
    averages to the same value.
    """
    b = x0.shape[0]
    noise = rng.randn(b, *x0.shape[1:]).to(x0.dtype)
    if noise_offset > 0:
        noise = noise + noise_offset * rng.randn(b, x0.shape[1], 1, 1).to(x0.dtype)
    t = rng.randint(len(alphas_cumprod), b)
    acp = alphas_cumprod.to(x0.device)[t].view(b, 1, 1, 1)
    noisy = acp.sqrt() * x0 + (1 - acp).sqrt() * noise
    target = acp.sqrt() * noise - (1 - acp).sqrt() * x0 if prediction_type == "v_prediction" else noise
    dtype = next(unet.parameters()).dtype
    pred = unet(noisy.to(dtype), t, context.to(dtype), added_cond_kwargs=added_cond_kwargs).sample.float()
    per_item = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
    weight = torch.ones_like(per_item)
    if snr_gamma > 0:
        snr = (acp / (1 - acp)).view(b).float()
        weight = snr.clamp(max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        if prediction_type != "v_prediction":  # zero terminal SNR: 0/0 at t=T; min(snr, g)/snr -> 1
            weight = torch.where(snr > 0, weight, torch.ones_like(weight))
    if weights is not None:
        weight = weight * weights.to(weight)
    return (per_item * weight).mean(), per_item.detach()


@dataclass
class DiffusionStrategy:
    """Train `unet` to denoise `batch['latents']` given `batch['text']` ([B, 77k, D] hidden states).

    batch['uncond'] ([77k, D]) replaces the text of a `caption_dropout` fraction of the batch.
    """

    unet: torch.nn.Module
    scheduler_config: dict
    caption_dropout: float = 0.1
    snr_gamma: float = 0.0  # 0: plain MSE
    sample_fn: Callable[[int], object] | None = None
    name: str = "unet"
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")

    def to(self, device) -> None:
        self.unet.to(device)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def loss(self, batch: dict, rng):
        text = batch["text"]
        drop = rng.rand(len(text)) < self.caption_dropout
        if drop.any():
            text = torch.where(drop[:, None, None], batch["uncond"].expand_as(text), text)
        self.unet.train()
        loss, per_item = diffusion_loss(self.unet, batch["latents"], text, rng, self.alphas_cumprod,
                                        self.prediction_type, self.snr_gamma)
        return loss, {"mse": per_item.mean()}

    def state_dict(self) -> dict:
        return {"unet": self.unet.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])

    def samples(self, step: int):
        if self.sample_fn is None:
            return None
        self.unet.eval()
        return self.sample_fn(step)
