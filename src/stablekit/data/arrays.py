"""In-memory datasets and the small image conversions every trainer needs.

`PixelData` serves rendered or loaded uint8 images (optionally with tokenised captions) and
`LatentData` serves pre-encoded latents with per-caption text states, so a stage that trains on
them never runs the VAE or the text encoder. Both implement the loop's Dataset protocol
(`__len__`, `get_batch(indices)`).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_u8(x: torch.Tensor) -> list[np.ndarray]:
    """float [B, 3, H, W] in [-1, 1] -> list of uint8 [H, W, 3]."""
    return list(((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def image_grid(images_u8: list[np.ndarray], cols: int) -> Image.Image:
    """Paste equally sized uint8 images into a grid, row by row, on grey."""
    rows = (len(images_u8) + cols - 1) // cols
    h, w = images_u8[0].shape[:2]
    grid = Image.new("RGB", (min(cols, len(images_u8)) * w, rows * h), (128, 128, 128))
    for i, im in enumerate(images_u8):
        grid.paste(Image.fromarray(im), ((i % cols) * w, (i // cols) * h))
    return grid


class PixelData:
    """uint8 images [N, H, W, 3] as a dataset; with tokenised captions (one row per distinct
    caption, `caption_index` mapping image -> caption) batches carry input_ids too."""

    def __init__(self, images: np.ndarray, caption_index: np.ndarray, input_ids: torch.Tensor | None = None,
                 negative_ids: torch.Tensor | None = None):
        self.images, self.caption_index, self.input_ids = images, caption_index, input_ids
        self.negative_ids = negative_ids  # [captions, K, L] hard negatives per caption

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices, generator: torch.Generator | None = None) -> dict:
        batch = {"pixels": to_pixels(self.images[indices])}
        if self.input_ids is not None:
            cid = torch.from_numpy(self.caption_index[indices])
            batch.update(input_ids=self.input_ids[cid], caption_ids=cid)
            if self.negative_ids is not None:
                batch["negative_input_ids"] = self.negative_ids[cid]
        return batch


class LatentData:
    """Cached latents [N, C, h, w] + text hidden states per distinct caption [K, L, D]."""

    def __init__(self, latents: torch.Tensor, caption_index: np.ndarray, text: torch.Tensor, uncond: torch.Tensor):
        self.latents, self.caption_index, self.text, self.uncond = latents, caption_index, text, uncond

    def __len__(self) -> int:
        return len(self.latents)

    def get_batch(self, indices, generator: torch.Generator | None = None) -> dict:
        idx = torch.from_numpy(np.asarray(indices))
        return {"latents": self.latents[idx], "text": self.text[torch.from_numpy(self.caption_index[indices])],
                "uncond": self.uncond}
