"""Stage 1 of latent diffusion: a KL-regularised autoencoder (Rombach et al. 2022, sec. 3).

Reconstruction is L1 + MSE in [-1, 1] pixel space with a small KL term that keeps the latent
space smooth; SD adds LPIPS and a patch GAN for photographs, which flat synthetic shapes do not
need. The latent scale factor (SD's 0.18215) is measured after training, not trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class AutoencoderStrategy:
    vae: torch.nn.Module
    kl_weight: float = 1e-6
    sample_fn: Callable[[int], object] | None = None
    name: str = "vae"

    def trainable_parameters(self):
        return [p for p in self.vae.parameters() if p.requires_grad]

    def to(self, device) -> None:
        self.vae.to(device)

    def loss(self, batch: dict, rng):
        x = batch["pixels"]  # [B, 3, H, W] in [-1, 1]
        self.vae.train()
        posterior = self.vae.encode(x).latent_dist
        z = self.sample_latent(posterior, rng)
        rec = self.vae.decode(z).sample.float()
        l1 = F.l1_loss(rec, x)
        mse = F.mse_loss(rec, x)
        kl = posterior.kl().mean() / z[0].numel()
        return l1 + mse + self.kl_weight * kl, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}

    @staticmethod
    def sample_latent(posterior, rng):
        """The reparameterised sample with noise from the loop's CPU draws (device-independent)."""
        mean = posterior.mean
        return mean + posterior.std * rng.randn(mean.shape[0], *mean.shape[1:]).to(mean.dtype)

    def state_dict(self) -> dict:
        return {"vae": self.vae.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])

    def samples(self, step: int):
        if self.sample_fn is None:
            return None
        self.vae.eval()
        return self.sample_fn(step)
