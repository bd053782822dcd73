"""Off-palette colours for the autoencoder stage (recipe v4).

The shapes world draws objects and backgrounds from 8 palette colours, and teal is reserved for
the DreamBooth subject, so an autoencoder trained only on base data never sees teal and decodes
it as blue or green (teal 1.00 -> 0.20 after a round trip of model 3's autoencoder,
benchmarks/teach_vae_roundtrip.py). Stable Diffusion's VAE is a generic image codec trained on
far more than the concepts the UNet later learns; here a share of the autoencoder's training
images is recoloured with uniformly random RGB object and background colours. The captioned data
the text encoder and UNet see is unchanged: "teal never in base data" holds for every concept the
generative model learns (docs/shapes-world.md).

A render is exactly bg + coverage x (object - bg) per channel (shapes.render), so the coverage is
read back from the image by projecting each pixel onto the object-minus-background colour axis
and the image re-rendered in the new colours, anti-aliasing included, with no second render.
"""
from __future__ import annotations

import torch


def background_and_object(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] two-colour renders -> (background [B, 3], object [B, 3]) colours.

    The background is the per-channel median of the four corners (a fitted object never reaches
    them); the object colour is the pixel farthest from it (small objects still have fully
    covered pixels inside).
    """
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]], dim=-1)
    bg = corners.median(dim=-1).values
    dist = ((x - bg[:, :, None, None]) ** 2).sum(1).flatten(1)
    far = dist.argmax(dim=1)
    obj = x.flatten(2)[torch.arange(len(x)), :, far]
    return bg, obj


def coverage(x: torch.Tensor, bg: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] object coverage in [0, 1]: each pixel projected onto the bg -> object axis."""
    axis = obj - bg
    d = x - bg[:, :, None, None]
    num = (d * axis[:, :, None, None]).sum(1, keepdim=True)
    return (num / (axis ** 2).sum(1).clamp_min(1e-8)[:, None, None, None]).clamp(0, 1)


def recolour(x: torch.Tensor, rng, share: float) -> torch.Tensor:
    """A `share` of the batch re-rendered with uniformly random RGB object and background colours.

    x: [B, 3, H, W] renders in [-1, 1]; rng: the training loop's BatchRandom (its draws make the
    choice and the colours, so resume stays exact). Recoloured pixels are rounded to 8-bit levels
    like a saved render. share 0 returns x and draws nothing.
    """
    return recolour_picked(x, rng, share)[0]


def recolour_picked(x: torch.Tensor, rng, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """recolour() and the [B] bool mask of the images it recoloured (the others are x's own)."""
    b = x.shape[0]
    if share <= 0:
        return x, torch.zeros(b, dtype=torch.bool, device=x.device)
    pick = rng.rand(b) < share
    colours = rng.rand(b, 2, 3).to(x.dtype) * 2 - 1  # [B, (background, object), RGB] in [-1, 1]
    bg, obj = background_and_object(x)
    alpha = coverage(x, bg, obj)
    new_bg, new_obj = colours[:, 0, :, None, None], colours[:, 1, :, None, None]
    new = new_bg + alpha * (new_obj - new_bg)
    new = torch.round((new + 1) * 127.5) / 127.5 - 1
    return torch.where(pick.view(b, 1, 1, 1), new, x), pick
