"""Inpainting models: UNets with 9 input channels (latents, the mask, the masked image's latents).

The released SD inpainting checkpoints (runwayml/stable-diffusion-inpainting, SD 2 and SDXL
inpainting) were fine-tuned with 5 extra input channels: the mask at latent size and the VAE
latents of the image with the masked part set to 0 (grey). This module builds that conditioning as
diffusers' StableDiffusionInpaintPipeline does (mask binarised at 0.5 and resized to latent size by
nearest interpolation; masked image = image * (mask < 0.5) in [-1, 1]) and wraps the UNet so the
Denoiser keeps calling a 4-channel model: samplers, CFG and ControlNet (which sees the 4 latent
channels, as A1111's extension does) stay unchanged. By default the latents are not reset outside
the mask after each step (the model sees the image itself; diffusers does the same);
InpaintOptions(noise_mask=True) resets them as A1111 does (generate/inpaint_options.py). The
original pixels are pasted back outside the mask afterwards, as for every inpainting run.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

INPAINT_CHANNELS = 9


def is_inpainting_unet(unet) -> bool:
    """True for a UNet with the inpainting models' 9 input channels."""
    return int(getattr(unet.config, "in_channels", 4)) == INPAINT_CHANNELS


class InpaintUNet(torch.nn.Module):
    """A 9-channel UNet seen as a 4-channel one: each call appends the mask and masked-image latents
    (one row, or one per image) to the latents it is given."""

    def __init__(self, unet, mask: Tensor, masked_latents: Tensor):
        super().__init__()
        self.unet = unet
        self.extra = torch.cat([mask, masked_latents], dim=1)

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: Tensor, timestep, *args, **kwargs):
        rows = sample.shape[0]
        extra = self.extra.to(sample.device, sample.dtype)
        if extra.shape[0] != rows:
            extra = extra.repeat(rows // extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([sample, extra], dim=1), timestep, *args, **kwargs)


def conditioning_mask(mask) -> np.ndarray:
    """float [H, W] in {0, 1}: the mask a 9-channel model sees, binarised at 0.5 before it is resized to
    latent size, as diffusers' mask processor (VaeImageProcessor(do_binarize=True): < 0.5 -> 0, else 1)
    and A1111 (inpainting_image_conditioning rounds the mask) do. A blurred mask (InpaintOptions'
    mask_blur, an "only masked" crop: a SoftMask) is binarised from its blurred mask, A1111's latent
    mask, not from the wider paste-back alpha; the released models were trained on binary masks."""
    soft = getattr(mask, "blurred", None)
    soft = mask.repaint if soft is None else soft
    return (np.asarray(soft, dtype=np.float32) >= 0.5).astype(np.float32)


def inpaint_conditioning(components, init, mask) -> tuple[Tensor, Tensor]:
    """(mask [1, 1, h, w] in {0, 1}, masked-image latents [1, 4, h, w]) for an InitImage and an
    InpaintMask, in the UNet's dtype on its device (VAE posterior mean, as every encode here)."""
    from stablekit.generate.steps import encode

    f = components.vae_scale_factor
    binary = conditioning_mask(mask)
    full = torch.from_numpy(binary).to(components.device)
    small = torch.nn.functional.interpolate(full[None, None], size=(init.height // f, init.width // f))
    keep = (1 - binary)[:, :, None]
    # masked pixels become 0 in [-1, 1] (grey): 0.5 in [0, 1]
    masked = init.pixels * keep + 0.5 * (1 - keep)
    latents = encode(components, masked[None])
    return small.to(components.device, components.dtype), latents.to(components.dtype)


def inpaint_denoiser(base, components, init, mask):
    """A Denoiser like `base` (same schedule and prediction type) around the wrapped UNet."""
    from stablekit.generate.denoiser import Denoiser

    small, latents = inpaint_conditioning(components, init, mask)
    return Denoiser(InpaintUNet(components.unet, small, latents), base.alphas_cumprod, base.prediction_type,
                    quantize=base.quantize, unet_kwargs=base.unet_kwargs)
