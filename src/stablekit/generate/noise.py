"""Seeds that behave like A1111's: image i of a batch uses seed + i and equals generating it alone.

Each image owns a CPU torch.Generator seeded with its seed. Its starting latent is the first draw
(`torch.randn((C, H, W))`, as A1111's CPU RNG source) and every later draw a sampler makes comes
from the same generator, so batching never changes an image and results do not depend on the
device.
"""
from __future__ import annotations

import random

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int | None) -> int:
    """-1 or None picks a random seed (as A1111); anything else is used as given."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


class ImageNoise:
    """Per-image seeded noise for a batch: the `noise(x)` source samplers draw from."""

    def __init__(self, seeds: list[int]):
        self.seeds = list(seeds)
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise for a batch of {x.shape[0]} requested from {len(self.generators)} seeds")
        draws = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(x.device, x.dtype)

    def initial_latents(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The starting N(0, 1) latents [B, C, H, W] (scaled by sigma_max by the caller)."""
        return self(torch.empty(len(self.generators), channels, height, width))
