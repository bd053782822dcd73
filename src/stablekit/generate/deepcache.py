"""DeepCache (Ma, Fang & Wang 2023, arXiv:2312.00858): reuse the UNet's deep features between steps.

Adjacent sampler steps change the UNet's deep (low-resolution) features very little. DeepCache
runs the whole UNet every N-th call and, in between, only its shallowest branch: conv_in, the
first down block, and the last up block, which is fed the output the second-to-last up block
produced at the last full call (the paper's uniform 1:N schedule, cache branch 0). Lossy: opt-in
as `deepcache=N` / `--deepcache N`; its prompt-adherence cost is measured in docs/reports/speed.md.

Implemented around diffusers' own forward, not as a copy of it: during a cached call the deep
blocks' `forward` are stand-ins that return at once (the skipped down blocks hand back
placeholders for the skip connections that only skipped up blocks read) and the second-to-last
up block returns the cached features. A sampling run is recognised by its timesteps: a call whose
timestep is not below the previous one (a new image, batch or hires pass) or with other shapes
runs in full and refills the cache. Calls with ControlNet / adapter residuals always run in full.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_FULL_ONLY = ("down_block_additional_residuals", "mid_block_additional_residual", "down_intrablock_additional_residuals")


class DeepCache:
    """The replacement `forward` of a UNet while DeepCache is on; `stats` counts full and cached calls."""

    def __init__(self, unet, interval: int):
        self.unet, self.interval = unet, int(interval)
        self.inner = unet.__dict__.get("forward") or type(unet).forward.__get__(unet)
        self.deep = list(unet.down_blocks[1:]) + [unet.mid_block] + list(unet.up_blocks[:-1])
        self.deep = [m for m in self.deep if m is not None]
        self.source = unet.up_blocks[-2]  # its output is the last up block's input: the cached feature
        self.cached: torch.Tensor | None = None
        self.last_t: float | None = None
        self.key: tuple | None = None
        self.count = 0
        self.stats = {"full": 0, "cached": 0}

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        key = (tuple(sample.shape), sample.dtype, tuple(getattr(encoder_hidden_states, "shape", ())))
        new_run = self.last_t is None or t >= self.last_t or key != self.key
        self.last_t, self.key = t, key
        self.count = 0 if new_run else self.count + 1
        full = (new_run or self.cached is None or self.count % self.interval == 0
                or any(kwargs.get(k) is not None for k in _FULL_ONLY))
        if full:
            self.stats["full"] += 1
            handle = self.source.register_forward_hook(self._keep)
            try:
                return self.inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
            finally:
                handle.remove()
        self.stats["cached"] += 1
        with self._shallow_only():
            return self.inner(sample, timestep, encoder_hidden_states, *args, **kwargs)

    def _keep(self, module, inputs, output) -> None:
        self.cached = output

    @contextmanager
    def _shallow_only(self):
        """The deep blocks as stand-ins for one call (their own forward restored afterwards)."""
        saved = [(m, m.__dict__.get("forward")) for m in self.deep]
        for m in self.deep:
            m.forward = self._stand_in(m)
        try:
            yield
        finally:
            for m, own in saved:
                if own is None:
                    del m.forward
                else:
                    m.forward = own

    def _stand_in(self, module):
        if module is self.source:
            return lambda *a, **k: self.cached
        if module in list(self.unet.down_blocks):
            skips = len(module.resnets) + (1 if getattr(module, "downsamplers", None) else 0)
            # placeholders: the skip connections of skipped levels are read only by skipped up blocks
            return lambda hidden_states=None, *a, **k: (hidden_states, (hidden_states,) * skips)
        return lambda hidden_states=None, *a, **k: hidden_states  # mid block, deeper up blocks: unused


@contextmanager
def deepcache(unet, interval: int):
    """DeepCache on `unet` for the duration (interval N: a full UNet call every N calls; N <= 1: off)."""
    if interval is None or interval <= 1 or len(unet.up_blocks) < 2:
        yield None
        return
    own = unet.__dict__.get("forward")
    dc = DeepCache(unet, interval)
    unet.forward = dc
    try:
        yield dc
    finally:
        if own is None:
            del unet.forward
        else:
            unet.forward = own
