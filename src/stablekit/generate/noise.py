"""Seeds that behave like A1111's: image i of a batch uses seed + i and equals generating it alone.

Each image owns a CPU torch.Generator seeded with its seed. Its starting latent is the first draw
(`torch.randn((C, H, W))`, as A1111's CPU RNG source) and every later draw a sampler makes comes
from the same generator, so batching never changes an image and results do not depend on the
device: noise is always drawn on the CPU in float32, then moved to the latents' device and dtype.

A1111's seed extras (`modules/rng.py` ImageRNG.first, `modules/processing.py`) are reproduced:
- variation seed: the first draw is slerp(strength, seed noise, subseed noise), where the subseed
  noise is the first draw of a generator seeded with the subseed; later draws are unchanged;
- seed resize from WxH: the seed's (and subseed's) noise is drawn at WxH's latent size and pasted,
  centred (or centre-cropped), into the seed's full-size first draw.
"""
from __future__ import annotations

import random

import torch
from torch import Tensor

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int | None) -> int:
    """-1 or None picks a random seed (as A1111); anything else is used as given."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


def batch_seeds(seed: int, subseed: int, subseed_strength: float, first: int, count: int) -> tuple[list[int], list[int]]:
    """(seeds, subseeds) of images first .. first+count-1 of a run, as A1111's process_images:
    seeds count up from `seed`, except with a variation strength, where every image keeps `seed`
    and the variation seeds count up from `subseed` instead (unused without a strength: kept as given)."""
    if not subseed_strength:
        return [seed + i for i in range(first, first + count)], [subseed] * count
    return [seed] * count, [subseed + i for i in range(first, first + count)]


def slerp(t: float, low: Tensor, high: Tensor) -> Tensor:
    """Spherical interpolation as A1111's `slerp` computes it, quirks included, so variation seeds
    give A1111's noise: for one image's [C, H, W] noise the vectors run along dim 1 (one per
    channel and column), and when the two are nearly parallel (mean cosine > 0.9995) the linear
    fallback weighs `low` by t (not 1 - t)."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cos = (low_unit * high_unit).sum(1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    w_low = (torch.sin((1.0 - t) * omega) / sin_omega).unsqueeze(1)
    w_high = (torch.sin(t * omega) / sin_omega).unsqueeze(1)
    return w_low * low + w_high * high


def _first_draw(seed: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    generator = generator or torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def paste_centered(target: Tensor, source: Tensor) -> Tensor:
    """`source` [C, h, w] placed at the centre of `target` [C, H, W] (cropped to fit): A1111's
    "seed resize from" paste, with its rounding (offsets (H - h) // 2, floor division)."""
    out = target.clone()
    dy, dx = (target.shape[1] - source.shape[1]) // 2, (target.shape[2] - source.shape[2]) // 2
    h = source.shape[1] if dy >= 0 else source.shape[1] + 2 * dy
    w = source.shape[2] if dx >= 0 else source.shape[2] + 2 * dx
    ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    out[:, ty:ty + h, tx:tx + w] = source[:, sy:sy + h, sx:sx + w]
    return out


class ImageNoise:
    """Per-image seeded noise for a batch: the `noise(x)` source samplers draw from.

    subseeds / subseed_strength: A1111's variation seed (one per image) and its strength (0: off).
    seed_resize_from: A1111's "Seed resize from" (width, height) in pixels; (0, 0) is off.
    factor: pixels per latent (the VAE's scale factor; A1111 uses 8).
    """

    def __init__(self, seeds: list[int], subseeds: list[int] | None = None, subseed_strength: float = 0.0,
                 seed_resize_from: tuple[int, int] = (0, 0), factor: int = 8):
        self.seeds = [int(s) for s in seeds]
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = (int(seed_resize_from[0]), int(seed_resize_from[1]))
        self.factor = factor
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise for a batch of {x.shape[0]} requested from {len(self.generators)} seeds")
        draws = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(x.device, x.dtype)

    def first(self, shape: tuple[int, int, int]) -> Tensor:
        """The starting N(0, 1) noise [B, C, H, W] (float32, CPU) for latents of `shape` (C, H, W):
        each generator's first draw, with A1111's variation seed and seed resize applied."""
        shape = tuple(int(v) for v in shape)
        w, h = self.seed_resize_from
        small = shape if w <= 0 or h <= 0 else (shape[0], h // self.factor, w // self.factor)
        out = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            full = _first_draw(seed, shape, generator)  # always consumes the generator's first draw
            noise = full if small == shape else _first_draw(seed, small)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, _first_draw(subseed, small))
            out.append(noise if small == shape else paste_centered(full, noise))
        return torch.stack(out)

    def initial_latents(self, channels: int, height: int, width: int) -> Tensor:
        """`first((channels, height, width))` (scaled by sigma_max by the caller)."""
        return self.first((channels, height, width))
