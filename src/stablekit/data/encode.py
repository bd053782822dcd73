"""Running the frozen encoders over a dataset: VAE latents and text hidden states for training."""
from __future__ import annotations

from typing import Iterable

import torch


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str], batch: int = 512, desc: str | None = None) -> torch.Tensor:
    """Last hidden state after the final layer norm for each caption, padded to 77 tokens
    ([N, 77, D]): SD 1.x conditioning at clip skip 1, what the UNet sees at generation.
    With `desc`, a progress bar of that name (a whole dataset takes minutes on a CPU)."""
    text_encoder.eval()
    chunks = []
    for i in _progress(range(0, len(captions), batch), desc):
        ids = tokenizer(captions[i:i + batch], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        chunks.append(text_encoder(input_ids=ids.to(text_encoder.device)).last_hidden_state.float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_latents(vae, pixel_batches: Iterable[torch.Tensor], desc: str | None = None,
                   total: int | None = None) -> torch.Tensor:
    """Posterior means of [B, 3, H, W] pixel batches in [-1, 1], unscaled, concatenated on the CPU
    (the mean, not a sample: A1111 and kohya cache it so the cache is deterministic). With `desc`,
    a progress bar of that name over `total` batches."""
    vae.eval()
    param = next(vae.parameters())
    out = [vae.encode(x.to(param.device, param.dtype)).latent_dist.mode().float().cpu()
           for x in _progress(pixel_batches, desc, total)]
    return torch.cat(out)


def _progress(items, desc: str | None, total: int | None = None):
    if desc is None:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="batch")
