"""Validation sample grids during training, made by the public generation API.

Training never carries its own sampling loop: the grid comes from `stablekit.generate.Pipeline`,
so what a run shows at step N is exactly what `stablekit generate` would make from the weights
at that step (same prompt encoding, denoiser, sampler and VAE decode).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from stablekit.data.arrays import image_grid


def sample_grid(components, prompts: list[str], seed: int = 0, steps: int = 20, cfg: float = 5.0,
                sampler: str = "Euler", schedule: str = "Automatic", negative_prompt: str = "",
                cols: int = 8, width: int | None = None, height: int | None = None) -> Image.Image:
    """One image per prompt (prompt i with seed + i) at the model's native size, as a grid of
    `cols` columns. `components` is a stablekit Components (its modules as they are now)."""
    from stablekit.generate.pipeline import Pipeline

    # A fresh Pipeline per grid: its prompt cache must not outlive a text encoder that trains.
    pipe = Pipeline(components, progress=False)
    images = []
    for i, prompt in enumerate(prompts):
        out = pipe.generate(prompt, negative_prompt=negative_prompt, seed=seed + i, steps=steps, cfg=cfg,
                            sampler=sampler, schedule=schedule, width=width, height=height, output="np")
        images.append((np.asarray(out[0]) * 255).round().astype(np.uint8))
    return image_grid(images, cols=cols)


def grid_sampler(components, prompts: list[str], **settings) -> Callable[[int], Image.Image]:
    """A `sample_fn(step)` for training strategies: the same grid (same seeds) at every step, so
    grids from different steps compare like for like. Settings as sample_grid."""

    def sample(step: int) -> Image.Image:
        return sample_grid(components, prompts, **settings)

    return sample
