"""Turn a model into a 9-channel inpainting model, the way the released SD inpainting models were made.

runwayml/stable-diffusion-inpainting (model card): the UNet got 5 extra input channels (the
mask at latent size and the VAE latents of the masked image), zero-initialised, and was then
fine-tuned with synthetic masks, 25% of them masking everything, and 10% of the captions dropped
(for classifier-free guidance). Here: `to_inpainting_unet` copies every weight into a UNet with
in_channels = 9 whose conv_in is the old one for the first 4 channels and 0 for the 5 new ones (so
at step 0 it is the base model), and the strategy fine-tunes every UNet weight with, per image, one
of: a random rectangle, a random ellipse, the object (pixels far from the border-median colour,
grown by 2 px: a shapes-world image's object, a product photo's subject), the object's bounding
box grown by 0-6 px (the box a user draws around what to replace; unlike the object mask it does not
give the shape away) or the whole image; `caption_dropout` of the captions become "". The
conditioning matches generation (generate/inpaint_unet.py): mask nearest-resized to latent size,
masked pixels grey (0 in [-1, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stablekit.generate.inpaint_unet import INPAINT_CHANNELS, InpaintUNet, is_inpainting_unet
from stablekit.train.strategies.diffusion import diffusion_loss
from stablekit.train.strategies.finetune import FinetuneStrategy

MASK_KINDS = ("rectangle", "ellipse", "object", "box", "full")
MASK_WEIGHTS = (0.25, 0.15, 0.15, 0.3, 0.15)


def to_inpainting_unet(unet):
    """A 9-input-channel copy of `unet` (extra conv_in channels zero); a 9-channel UNet is returned as is."""
    from diffusers import UNet2DConditionModel

    if is_inpainting_unet(unet):
        return unet
    config = dict(unet.config)
    config["in_channels"] = INPAINT_CHANNELS
    new = UNet2DConditionModel.from_config(config).to(next(unet.parameters()).dtype)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    extra = torch.zeros(weight.shape[0], INPAINT_CHANNELS - weight.shape[1], *weight.shape[2:], dtype=weight.dtype)
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    new.load_state_dict(state, strict=True)
    return new.train(unet.training)


def random_masks(pixels: torch.Tensor, rng, weights=MASK_WEIGHTS) -> torch.Tensor:
    """float [B, 1, H, W] masks (1 = repaint), one kind per image drawn with `weights` over MASK_KINDS."""
    b, _, h, w = pixels.shape
    cumulative = np.cumsum(weights) / np.sum(weights)
    kinds = np.minimum(np.searchsorted(cumulative, rng.rand(b).cpu().numpy(), side="right"), len(MASK_KINDS) - 1)
    u = rng.rand(b, 4).cpu()
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    masks = torch.zeros(b, 1, h, w)
    for i, kind in enumerate(kinds.tolist()):
        cx, cy = float(u[i, 0]) * w, float(u[i, 1]) * h
        rx, ry = (0.1 + 0.3 * float(u[i, 2])) * w, (0.1 + 0.3 * float(u[i, 3])) * h
        name = MASK_KINDS[kind]
        if name == "rectangle":
            m = ((xs - cx).abs() <= rx) & ((ys - cy).abs() <= ry)
        elif name == "ellipse":
            m = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        elif name == "object":
            m = object_mask(pixels[i])
        elif name == "box":
            m = box_mask(object_mask(pixels[i], grow=0), int(float(u[i, 2]) * 7))
        else:
            m = torch.ones(h, w, dtype=torch.bool)
        masks[i, 0] = m.float()
    return masks


def object_mask(pixels: torch.Tensor, distance: float = 0.3, grow: int = 2) -> torch.Tensor:
    """bool [H, W]: pixels far (> distance in [-1, 1] RGB) from the border-median colour, grown by
    `grow` px; the whole image when nothing stands out."""
    border = torch.cat([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], dim=1)
    bg = border.median(dim=1).values[:, None, None]
    m = ((pixels - bg).norm(dim=0) > distance).float()[None, None]
    if grow:
        m = F.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)
    m = m[0, 0] > 0
    return m if m.any() else torch.ones_like(m)


def box_mask(mask: torch.Tensor, grow: int) -> torch.Tensor:
    """bool [H, W]: the bounding box of `mask`'s True pixels grown by `grow` px (clipped to the frame)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    h, w = mask.shape
    box = torch.zeros_like(mask)
    box[max(0, int(ys.min()) - grow):min(h, int(ys.max()) + 1 + grow),
        max(0, int(xs.min()) - grow):min(w, int(xs.max()) + 1 + grow)] = True
    return box


@dataclass
class InpaintingStrategy(FinetuneStrategy):
    name: str = "inpainting"
    caption_dropout: float = 0.1  # as runwayml's inpainting fine-tune: keeps the unconditional branch for CFG

    def __post_init__(self):
        c = self.components
        c.unet = to_inpainting_unet(c.unet)
        super().__post_init__()

    def loss(self, batch: dict, rng):
        c = self.components
        self.set_train(True)
        pixels = batch["pixels"]
        x0 = self.latents(pixels)
        masks = random_masks(pixels, rng).to(pixels.device)
        masked = self.latents(pixels * (masks < 0.5))  # masked pixels 0 (grey), as generation
        small = F.interpolate(masks, size=x0.shape[-2:])  # nearest, as generation
        captions = list(batch["captions"])
        drop = rng.rand(len(captions)).cpu() < self.caption_dropout
        captions = ["" if d else text for d, text in zip(drop.tolist(), captions)]
        context, pooled = self.encode_captions(captions)
        added = None
        if getattr(c.unet.config, "addition_embed_type", None) == "text_time":
            h, w = pixels.shape[-2:]
            time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=pooled.dtype, device=pooled.device)
            added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(x0), 1)}
        dtype = next(c.unet.parameters()).dtype
        model = InpaintUNet(c.unet, small.to(dtype), masked.to(dtype))
        loss, per_item = diffusion_loss(model, x0, context, rng, self.alphas_cumprod, self.prediction_type,
                                        self.snr_gamma, self.noise_offset, None, added)
        return loss, {"mse": per_item.mean()}
