"""Live previews in ComfyUI's binary websocket format: a 4-byte big-endian event type (1 =
PREVIEW_IMAGE), a 4-byte image type (1 = JPEG) and the JPEG bytes (server.py send_image).

The image is ComfyUI's cheap "latent2rgb" preview: the sampler's current denoised latents
projected to RGB with a fixed 4x3 matrix (comfy/latent_formats.py SD15 latent_rgb_factors), no
VAE decode, so a preview costs microseconds rather than a decoder pass per step.
"""
from __future__ import annotations

import io
import struct

import torch
from PIL import Image

PREVIEW_IMAGE = 1
JPEG = 1
SD15_RGB_FACTORS = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                                 [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])
MAX_SIZE = 512


def latent_to_image(x0: torch.Tensor) -> Image.Image:
    """The first image of a [B, C, h, w] latent batch as an RGB PIL image (4 channels: SD15's
    factors; other channel counts: the first three channels, scaled)."""
    lat = x0[0].detach().float().cpu()
    if lat.shape[0] == 4:
        rgb = torch.einsum("chw,cr->hwr", lat, SD15_RGB_FACTORS)
    else:
        rgb = lat[:3].permute(1, 2, 0) if lat.shape[0] >= 3 else lat[:1].permute(1, 2, 0).repeat(1, 1, 3)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(rgb, "RGB")
    image.thumbnail((MAX_SIZE, MAX_SIZE))
    return image


def preview_frame(x0: torch.Tensor) -> bytes:
    """A ComfyUI binary preview message for the sampler's current latents."""
    buf = io.BytesIO()
    buf.write(struct.pack(">I", PREVIEW_IMAGE))
    buf.write(struct.pack(">I", JPEG))
    latent_to_image(x0).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
