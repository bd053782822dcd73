"""Frozen-encoder outputs for training, read from the on-disk caches of data/caches.py.

The VAE never trains and, unless a method trains them, neither do the text encoders: encoding the
same image or caption again every epoch is wasted work (on the embedded model the VAE and text
encoder cost about as much as a LoRA step's UNet). Latents are keyed by the exact pixels (a hash of
the float tensor), so any augmentation that changes the pixels (flip, crop, a new bucket) is a new
entry and a stale latent can never be read, whatever keys a dataset gives; captions are keyed by
their text. Each cache folder is keyed by a fingerprint of the encoder's weights and the settings
that change its output (dtype; which hidden layer; tokenizer size), as data/caches.py describes.

Where: `cache_dir` of the strategy; None means the environment's $STABLEKIT_TRAIN_CACHE (a folder,
or "off"), else $STABLEKIT_CACHE_DIR/train (~/.cache/stablekit/train); "" turns caching off. Random crops make a new crop every step: those
entries are written but never read again (the latents of a 64-px image are 4 KB; of a 512-px
SD image 64 KB).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from stablekit.data.caches import LatentCache, TextCache, scale_latents


def cache_root(cache_dir: str | None) -> Path | None:
    """The folder the caches live in (None: caching off)."""
    if cache_dir is None:
        from stablekit.formats.hashes import cache_dir as stablekit_cache

        cache_dir = os.environ.get("STABLEKIT_TRAIN_CACHE", str(stablekit_cache() / "train"))
        if cache_dir.lower() in ("off", "0", "no", "false"):
            cache_dir = ""
    return Path(cache_dir) if cache_dir else None


def pixel_keys(pixels: torch.Tensor) -> list[str]:
    """One content key per item: sha256 of its float32 bytes and shape."""
    keys = []
    for item in pixels.detach().to("cpu", torch.float32).contiguous():
        h = hashlib.sha256(str(tuple(item.shape)).encode())
        h.update(item.numpy().tobytes())
        keys.append(h.hexdigest())
    return keys


class EncoderCache:
    """Latents and text conditioning for one model, cached; `text` is None when it must not be."""

    def __init__(self, root: Path, vae, text_encoders: list | None, text_settings: dict):
        dtype = next(vae.parameters()).dtype
        self.vae = vae
        self.latents = LatentCache(root, vae, {"dtype": str(dtype)})
        self.text = None
        if text_encoders:
            self.text = TextCache(root, text_encoders, lambda captions: {}, text_settings)

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] on pixels' device."""
        return self.latents.encode(pixels, pixel_keys(pixels)).to(pixels.device)

    def encode_text(self, captions: list[str], encode_fn) -> dict[str, torch.Tensor]:
        """{name: [B, ...]} for captions; encode_fn(captions) computes the missing ones."""
        return self.text.get_or_compute(captions, lambda rows: {k: v.detach().cpu() for k, v in
                                                                 encode_fn([captions[i] for i in rows]).items()})


__all__ = ["EncoderCache", "cache_root", "pixel_keys", "scale_latents"]
