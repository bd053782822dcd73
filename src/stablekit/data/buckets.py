"""Aspect-ratio bucketing as kohya's sd-scripts does it (library/model_util.py
make_bucket_resolutions, library/train_util.py BucketManager.select_bucket), and a bucket-aware
batch order for the training loop.

Buckets keep about resolution^2 pixels with both sides multiples of `steps`; an image goes to the
predefined bucket with the closest aspect ratio (its own size wins when it is a bucket), is
resized to cover the bucket and cropped to it. Every batch comes from one bucket, so a batch's
images share one size.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[tuple[int, int]]:
    """Sorted (width, height) buckets of about max_reso's area (kohya's algorithm)."""
    max_area = max_reso[0] * max_reso[1]
    resos = set()
    square = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((square, square))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True)
class Placement:
    """Where one image goes: its bucket (w, h) and the size it is resized to before the crop."""

    bucket: tuple[int, int]
    resized: tuple[int, int]


def select_bucket(width: int, height: int, resos: list[tuple[int, int]]) -> Placement:
    """kohya's BucketManager.select_bucket (upscaling allowed): nearest aspect ratio, then scale so
    the image covers the bucket (fit the height if the image is wider, else the width)."""
    aspect = width / height
    reso = (width, height)
    if reso not in resos:
        errors = np.abs(np.array([w / h for w, h in resos]) - aspect)
        reso = resos[int(errors.argmin())]
    scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
    return Placement(reso, (int(width * scale + 0.5), int(height * scale + 0.5)))


def select_bucket_no_upscale(width: int, height: int, max_area: int, steps: int) -> Placement:
    """kohya's bucket_no_upscale: shrink only (to max_area, rounding the side that keeps the
    aspect ratio best), then the bucket is the resized size floored to `steps`."""
    def round_to_steps(x: float) -> int:
        x = int(x + 0.5)
        return x - x % steps

    aspect = width / height
    if width * height > max_area:
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        bw = round_to_steps(rw)
        bh_w = round_to_steps(bw / aspect)
        bh = round_to_steps(rh)
        bw_h = round_to_steps(bh * aspect)
        if abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return Placement(bucket, resized)


class BucketBatchOrder:
    """Batches for any global position, each from one bucket, deterministic in (seed, position).

    Per epoch: each bucket's examples in a fresh permutation, cut into batches of `batch_size`
    (a bucket's last batch is topped up from the start of its own permutation, so every batch has
    batch_size examples of one size), then the batches in a fresh order. Position p belongs to
    batch p // batch_size, so the loop's `indices(first, count)` with first = k * batch_size and
    count = batch_size is batch k; other requests are served position by position.
    """

    def __init__(self, buckets: list[np.ndarray], seed: int, batch_size: int):
        self.buckets = [np.asarray(b, dtype=np.int64) for b in buckets if len(b)]
        self.seed, self.batch_size = seed, batch_size
        self.n_batches = sum(-(-len(b) // batch_size) for b in self.buckets)

    @functools.lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> list[np.ndarray]:
        batches = []
        for k, members in enumerate(self.buckets):
            perm = members[np.random.default_rng([self.seed, epoch, k]).permutation(len(members))]
            n = -(-len(perm) // self.batch_size)
            padded = np.resize(perm, n * self.batch_size)  # np.resize repeats from the start
            batches += list(padded.reshape(n, self.batch_size))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(batches))
        return [batches[i] for i in order]

    def batch(self, k: int) -> np.ndarray:
        return self._epoch(k // self.n_batches)[k % self.n_batches]

    def indices(self, first: int, count: int) -> np.ndarray:
        if first % self.batch_size == 0 and count == self.batch_size:
            return self.batch(first // self.batch_size).copy()
        pos = np.arange(first, first + count)
        return np.array([self.batch(int(p) // self.batch_size)[int(p) % self.batch_size] for p in pos])
