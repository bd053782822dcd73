"""Teach a trained shapes autoencoder new colours without moving the latents the UNet knows.

Model 3's autoencoder saw the 8 palette colours only, and its encoder sends a teal background to
the latent of a blue one (posterior means within one standard deviation of the blue renders'
spread), so no decoder-only fine-tune can tell them apart. Here encoder and decoder train on
recipe v4's recoloured batches (shapes.vae_recolour: a share re-rendered in random RGB), plus an
anchor: on the batch's images that kept their palette colours, the squared distance between the
encoder's posterior mean and that of a frozen copy of the original encoder, in units of the
latent standard deviation. Palette latents stay where they were, so a UNet trained on them (and
every LoRA, embedding and DreamBooth run on that UNet) stays valid; off-palette colours are meant
to get latents of their own. Measured on model 3 (docs/reports/teal-vae.md): the anchor holds the
palette latents (rms drift 0.01-0.02 std, generation unchanged) but in 600 steps it also holds teal
next to blue; without it teal separates and the UNet breaks. The idea is that of distillation with a feature-matching term (Hinton et al. 2015;
Li and Hoiem 2017, "Learning without Forgetting"), applied to the latent interface.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from stablekit.shapes.vae_loss import EdgeWeightedAutoencoderStrategy
from stablekit.shapes.vae_recolour import recolour_picked


@dataclass
class AnchoredAutoencoderStrategy(EdgeWeightedAutoencoderStrategy):
    """EdgeWeightedAutoencoderStrategy + the latent anchor on un-recoloured images.

    anchor_weight multiplies mean((mu - mu_ref)^2) / latent_std^2; latent_std is the std of the
    unscaled posterior means (1 / the model's scaling_factor). The reference encoder is copied
    when the strategy is built, so build it from the original weights: a resumed run loads its
    checkpoint into `vae` afterwards and keeps anchoring to the original.
    """

    anchor_weight: float = 100.0
    latent_std: float = 1.0
    random_colours: float = 0.3
    name: str = "vae-anchored"
    reference: torch.nn.Module | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.reference is None:
            self.reference = copy.deepcopy(self.vae).eval().requires_grad_(False)
            self.reference.decoder = None  # only the encoder side is used
            self.reference.post_quant_conv = None

    def to(self, device) -> None:
        self.vae.to(device)
        self.reference.to(device)

    def loss(self, batch: dict, rng):
        x0 = batch["pixels"]
        x, picked = recolour_picked(x0, rng, self.random_colours)
        loss, logs, posterior = self.reconstruction(x, rng)
        keep = ~picked
        if self.anchor_weight > 0 and bool(keep.any()):
            with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):
                target = self.reference.encode(x0[keep].float()).latent_dist.mean
            drift = ((posterior.mean[keep].float() - target) ** 2).mean() / self.latent_std ** 2
            loss = loss + self.anchor_weight * drift
            logs["anchor_rms"] = drift.detach().sqrt()  # rms drift / latent std
        return loss, logs


@torch.no_grad()
def posterior_means(vae, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, C, h, w] unscaled posterior means (fp32, no autocast)."""
    return torch.cat([vae.encode(pixels[s:s + batch].float()).latent_dist.mean for s in range(0, len(pixels), batch)])


def latent_drift(vae, reference, pixels: torch.Tensor, latent_std: float) -> dict:
    """How far `vae`'s posterior means moved from `reference`'s on `pixels`, in latent stds:
    mean and max over elements of |dz|, the rms, and the largest per-image rms."""
    d = (posterior_means(vae, pixels) - posterior_means(reference, pixels)).abs() / latent_std
    per_image = d.pow(2).flatten(1).mean(1).sqrt()
    return {"mean": float(d.mean()), "max": float(d.max()), "rms": float(d.pow(2).mean().sqrt()),
            "max_image_rms": float(per_image.max()), "n": len(pixels)}


def save_with_vae(components, vae_state: dict, dest, record: dict) -> None:
    """`components` with its autoencoder weights replaced, written as the shipped model is
    (shapes.pretrain.stage_export): diffusers folder + single-file fp16 + training.json."""
    import json
    from pathlib import Path

    from stablekit.formats import save_model

    dest = Path(dest)
    components.vae.load_state_dict(vae_state)
    dest.mkdir(parents=True, exist_ok=True)
    save_model(components, dest / "diffusers", to="diffusers", dtype=torch.float16)
    save_model(components, dest / "shapes.safetensors", to="single-file", dtype=torch.float16)
    (dest / "training.json").write_text(json.dumps(record, indent=2))

