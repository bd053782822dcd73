"""Denoising diffusion on cached latents and text embeddings: the stage-2 objective of latent diffusion.

The same strategy serves pretraining and full fine-tuning (all UNet parameters train); LoRA,
textual inversion and DreamBooth will differ only in which parameters train and what the batch
adds. Noise schedule and target follow the model's scheduler config (DDPM forward process,
Ho et al. 2020; v-prediction, Salimans & Ho 2022), with optional Min-SNR-gamma loss weighting
(Hang et al. 2023) and caption dropout so classifier-free guidance works (Ho & Salimans 2022).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from stablekit.generate.denoiser import alphas_cumprod_from_config


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

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def loss(self, batch: dict, generator: torch.Generator):
        x0 = batch["latents"]
        text = batch["text"]
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(self.alphas_cumprod), (b,), generator=generator)
        drop = torch.rand(b, generator=generator) < self.caption_dropout
        if drop.any():
            text = torch.where(drop[:, None, None], batch["uncond"].expand_as(text), text)
        acp = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = acp.sqrt() * x0 + (1 - acp).sqrt() * noise
        if self.prediction_type == "v_prediction":
            target = acp.sqrt() * noise - (1 - acp).sqrt() * x0
        else:
            target = noise
        self.unet.train()
        pred = self.unet(noisy, t, text).sample.float()
        per_item = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        if self.snr_gamma > 0:
            snr = (acp / (1 - acp)).view(b)
            weight = snr.clamp(max=self.snr_gamma) / (snr + 1 if self.prediction_type == "v_prediction" else snr)
            loss = (per_item * weight).mean()
        else:
            loss = per_item.mean()
        return loss, {"mse": per_item.mean().detach()}

    def state_dict(self) -> dict:
        return {"unet": self.unet.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])

    def samples(self, step: int):
        if self.sample_fn is None:
            return None
        self.unet.eval()
        return self.sample_fn(step)
