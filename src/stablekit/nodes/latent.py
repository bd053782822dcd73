"""Latent nodes: EmptyLatentImage, VAEDecode, VAEEncode, VAEEncodeForInpaint, SetLatentNoiseMask,
LatentUpscale, LatentUpscaleBy (ComfyUI names, inputs, outputs and arithmetic).

LATENT is ComfyUI's dict: "samples" [B, C, h, w] (stablekit's scaled latents), optional
"noise_mask" [B, 1, H, W]; ours adds "downscale" (pixels per latent; ComfyUI assumes 8, the
shapes model has 4) and, for an EmptyLatentImage not yet sampled, "pixel_size" (w, h).
"""
from __future__ import annotations

import math

import torch

from stablekit.nodes.registry import register

MAX_RESOLUTION = 16384
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic"]  # ComfyUI's, less bislerp
CROP = ["disabled", "center"]
SIZE = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """ComfyUI's common_upscale on [B, C, H, W]: optional centre crop to the new aspect, then
    torch interpolate (PIL Lanczos for "lanczos", on 8-bit values as ComfyUI)."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        import numpy as np
        from PIL import Image

        out = []
        for image in samples.movedim(1, -1).cpu().numpy():
            pil = Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8).squeeze())
            out.append(np.asarray(pil.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0)
        result = torch.from_numpy(np.stack(out))
        return (result[..., None] if result.ndim == 3 else result).movedim(-1, 1).to(samples.device, samples.dtype)
    return torch.nn.functional.interpolate(samples.float(), size=(height, width), mode=method).to(samples.dtype)


def _vae_samples(latent: dict, vae) -> torch.Tensor:
    samples = latent["samples"]
    if "pixel_size" in latent:  # an empty latent decoded as is: the VAE's own zero latents
        c = vae.components
        f, (w, h) = c.vae_scale_factor, latent["pixel_size"]
        return torch.zeros(samples.shape[0], c.vae.config.latent_channels, h // f, w // f)
    return samples


@register
class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        size = {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {"width": ("INT", size), "height": ("INT", size),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"

    def generate(self, width, height, batch_size=1):
        # The model is not known yet: SD's 4 x H/8 x W/8 as ComfyUI, resized to the model's own
        # latent shape by the sampler (ComfyUI's fix_empty_latent_channels does the same for channels).
        samples = torch.zeros(batch_size, 4, height // 8, width // 8)
        return ({"samples": samples, "pixel_size": (width, height), "downscale": 8},)


@register
class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "latent"

    def decode(self, vae, samples):
        from stablekit.generate.steps import decode

        return (torch.from_numpy(decode(vae.components, _vae_samples(samples, vae))),)


def _crop_to_multiple(pixels: torch.Tensor, f: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """ComfyUI's vae_encode_crop_pixels: the centred part whose sides are multiples of f."""
    h, w = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    dy, dx = (pixels.shape[1] % f) // 2, (pixels.shape[2] % f) // 2
    return pixels[:, dy:dy + h, dx:dx + w, :], (dy, dx, h, w)


def _encode(vae, pixels: torch.Tensor) -> dict:
    from stablekit.generate.steps import encode

    c = vae.components
    z = encode(c, pixels[..., :3].cpu().numpy())
    return {"samples": z, "downscale": c.vae_scale_factor}


@register
class VAEEncode:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae, pixels):
        return (_encode(vae, _crop_to_multiple(pixels, vae.components.vae_scale_factor)[0]),)


@register
class VAEEncodeForInpaint:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent/inpaint"

    def encode(self, vae, pixels, mask, grow_mask_by=6):
        """As ComfyUI: the mask is grown by grow_mask_by pixels for the noise mask, and the pixels
        under the (rounded) mask are set to grey 0.5 before encoding."""
        mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(),
                                               size=pixels.shape[1:3], mode="bilinear")
        pixels, (dy, dx, h, w) = _crop_to_multiple(pixels.clone(), vae.components.vae_scale_factor)
        mask = mask[:, :, dy:dy + h, dx:dx + w]
        grown = mask
        if grow_mask_by:
            kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
            grown = torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel,
                                                           padding=math.ceil((grow_mask_by - 1) / 2)), 0, 1)
        keep = (1.0 - mask.round()).squeeze(1)[..., None]
        pixels = (pixels[..., :3] - 0.5) * keep + 0.5
        out = _encode(vae, pixels)
        out["noise_mask"] = grown[:, :, :h, :w].round()
        return (out,)


@register
class SetLatentNoiseMask:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    def set_mask(self, samples, mask):
        return ({**samples, "noise_mask": mask.reshape(-1, 1, *mask.shape[-2:])},)


def _resize_latent(latent: dict, width: int, height: int, method: str, crop: str) -> dict:
    """width/height in pixels (ComfyUI's units); the latent is resized to width / downscale."""
    f = latent.get("downscale", 8)
    out = dict(latent)
    if "pixel_size" in latent:
        out["pixel_size"] = (width, height)
        out["samples"] = torch.zeros(latent["samples"].shape[0], 4, height // 8, width // 8)
        return out
    out["samples"] = upscale(latent["samples"], width // f, height // f, method, crop)
    return out


@register
class LatentUpscale:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"samples": ("LATENT",), "upscale_method": (LATENT_METHODS,), "width": ("INT", SIZE),
                             "height": ("INT", SIZE), "crop": (CROP,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (samples,)
        f = samples.get("downscale", 8)
        lh, lw = samples["samples"].shape[-2:]
        if "pixel_size" in samples:
            lw, lh = samples["pixel_size"][0] / f, samples["pixel_size"][1] / f
        if width == 0:
            height = max(64, height)
            width = max(64, round(lw * f * height / (lh * f)))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(lh * f * width / (lw * f)))
        else:
            width, height = max(64, width), max(64, height)
        return (_resize_latent(samples, width, height, upscale_method, crop),)


@register
class LatentUpscaleBy:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"samples": ("LATENT",), "upscale_method": (LATENT_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples, upscale_method, scale_by):
        f = samples.get("downscale", 8)
        if "pixel_size" in samples:
            w, h = samples["pixel_size"]
            return (_resize_latent(samples, round(w * scale_by), round(h * scale_by), upscale_method, "disabled"),)
        lh, lw = samples["samples"].shape[-2:]
        return (_resize_latent(samples, round(lw * scale_by) * f, round(lh * scale_by) * f, upscale_method,
                               "disabled"),)
