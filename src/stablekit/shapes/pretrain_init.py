"""Warm start for `stablekit shapes pretrain --init-from RUN`: reuse a finished run's stages.

From RUN (a pretrain folder of the same seed and image count) the new run takes the rendered
images (captions are made anew), the autoencoder, the latents (same images through the same
autoencoder), and the text and UNet stages' weights as starting points; the text and UNet stages
then train again for --text-steps / --unet-steps. This is a shortcut for a session with little
CPU time, not the from-nothing recipe: the exported record says which run it started from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from stablekit.errors import StablekitError


def init_run(path: str) -> Path:
    """The --init-from folder, checked to hold a finished data, vae and cache stage."""
    run = Path(path)
    missing = [p for p in ("data.npz", "vae/final.pt", "cache.pt", "pretrain.json") if not (run / p).exists()]
    if missing:
        raise StablekitError(f"--init-from {path}: not a finished pretrain run (missing {', '.join(missing)}); "
                             "give the folder of a run that got through its cache stage")
    return run


def reuse_images(run: Path, seed: int, n_images: int, specs) -> np.ndarray:
    """RUN's rendered images, after checking they are this run's stream (same seed and count, and
    the first renders equal)."""
    from stablekit.shapes.render import render

    old = json.loads((run / "pretrain.json").read_text())
    if (old.get("seed"), old.get("n_images")) != (seed, n_images):
        raise StablekitError(f"--init-from {run}: its seed/n_images {old.get('seed')}/{old.get('n_images')} differ "
                             f"from this run's {seed}/{n_images}; use the same ones or drop --init-from")
    images = np.load(run / "data.npz")["images"]
    if not all(np.array_equal(images[i], render(specs[i])) for i in range(8)):
        raise StablekitError(f"--init-from {run}: its images are not this stream's renders; drop --init-from")
    return images


def copy_vae(run: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "vae" / "final.pt", final)


def text_strategy_state(run: Path) -> dict:
    """The contrastive stage's last state of RUN (text encoder, image encoder, projection, scale)."""
    from stablekit.train.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = latest_checkpoint(run / "text")
    if ckpt is None:
        raise StablekitError(f"--init-from {run}: no text-stage checkpoint under {run / 'text'}")
    return load_checkpoint(ckpt)["strategy"]


def latents(run: Path) -> tuple[torch.Tensor, float]:
    """RUN's cached (scaled) latents and scale factor."""
    cache = torch.load(run / "cache.pt", weights_only=True)
    return cache["latents"], float(cache["scaling_factor"])
