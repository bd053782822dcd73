"""What makes N data-parallel processes train exactly like one process with the same global batch.

- Data: every process computes the same global micro-batch of indices and takes its own slice.
- Randomness: every process draws the noise, timesteps, ... of the *whole* global micro-batch
  from the same CPU generator (seeded by seed, step and micro-batch) and keeps its slice, so an
  example gets the same noise however the batch is split.
- Gradients: each process's loss is the mean over its slice; the mean of those gradients over
  processes (one all-reduce) is the gradient of the global mean. Strategies therefore weight
  examples per item (never "mean of this subset"), which splits linearly.
Noise is drawn on the CPU and moved to the device, so results do not depend on the device either.
"""
from __future__ import annotations

import torch


def micro_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    # A distinct, reproducible stream per (step, micro-batch); independent of how the run was
    # split into pieces (resume) or processes.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2**63))


class BatchRandom:
    """Random draws for one process's slice [start, stop) of a global micro-batch of `total` items.

    `generator` is the underlying CPU torch.Generator, for code that must draw per slice itself
    (then it is only reproducible for one process).
    """

    def __init__(self, generator: torch.Generator, start: int = 0, stop: int | None = None,
                 total: int | None = None, device: torch.device | str = "cpu"):
        self.generator = generator
        self.start, self.stop, self.total = start, stop, total
        self.device = torch.device(device)

    def _slice(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.start:self.stop].to(self.device)

    def _n(self, n_local: int) -> int:
        return self.total if self.total is not None else n_local

    def randn(self, n: int, *item_shape: int) -> torch.Tensor:
        """Standard normal [n, *item_shape] for this slice (n = local batch size)."""
        return self._slice(torch.randn((self._n(n), *item_shape), generator=self.generator))

    def rand(self, n: int, *item_shape: int) -> torch.Tensor:
        return self._slice(torch.rand((self._n(n), *item_shape), generator=self.generator))

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._slice(torch.randint(0, high, (self._n(n),), generator=self.generator))


def average_gradients(params: list[torch.nn.Parameter], num_processes: int) -> None:
    """Replace each parameter's gradient by its mean over processes (one flat all-reduce)."""
    if num_processes <= 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= num_processes
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n
