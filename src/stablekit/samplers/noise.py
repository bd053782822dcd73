"""Where samplers get their randomness: a caller-supplied noise source, never torch's global RNG.

A noise source is any callable `noise(x) -> Tensor` shaped, typed and placed like `x`. The
generation pipeline passes one that draws each image of a batch from that image's own seeded
generator, so image i of a batch equals generating it alone. Samplers only ever call `noise(x)`.
"""
from __future__ import annotations

import bisect
from typing import Callable

import torch
from torch import Tensor

NoiseSource = Callable[[Tensor], Tensor]

DEFAULT_SEED = 0


def seeded_noise(seed: int = DEFAULT_SEED, device: str | torch.device = "cpu") -> NoiseSource:
    """A noise source drawing standard normals from one `torch.Generator` seeded with `seed`.

    Numbers are drawn on `device` (CPU by default, as A1111's "CPU" RNG source, so results do not
    depend on the GPU) in float32 and then moved to x's device and dtype.
    """
    generator = torch.Generator(device).manual_seed(seed)

    def noise(x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)

    return noise


def noise_or_default(noise: NoiseSource | None) -> NoiseSource:
    """`noise` itself, or a source seeded with DEFAULT_SEED when the caller gave none."""
    return seeded_noise(DEFAULT_SEED) if noise is None else noise


class BrownianPath:
    """One Brownian motion W(sigma), sampled lazily from a noise source at the sigmas queried.

    SDE solvers with sub-steps (DPM++ SDE) need the noise of a sub-interval and of the whole
    interval to come from the same path: W(s) - W(t) and W(t_next) - W(t) must be correlated as
    Brownian increments are. Each new query point costs one `noise(x)` draw: outside the known
    points it extends the path by an independent increment; between two known points it is drawn
    from the Brownian bridge pinned at both (Levy's construction). So the same queries in the same
    order give the same path, and every increment has the right law, with no torchsde dependency.
    Unlike k-diffusion's BrownianTree the path depends on the query order, not only on the seed.
    """

    def __init__(self, x: Tensor, noise: NoiseSource):
        self._x = x
        self._noise = noise
        self._times: list[float] = []
        self._values: list[Tensor] = []

    def _value_at(self, t: float) -> Tensor:
        times, values = self._times, self._values
        k = bisect.bisect_left(times, t)
        if k < len(times) and times[k] == t:
            return values[k]
        if not times:
            w = torch.zeros_like(self._x)
        elif k == 0:  # below every known point: extend downwards
            w = values[0] + (times[0] - t) ** 0.5 * self._noise(self._x)
        elif k == len(times):  # above every known point: extend upwards
            w = values[-1] + (t - times[-1]) ** 0.5 * self._noise(self._x)
        else:  # Brownian bridge between the neighbours (t_a, w_a) and (t_b, w_b)
            t_a, t_b, w_a, w_b = times[k - 1], times[k], values[k - 1], values[k]
            mean = w_a + (t - t_a) / (t_b - t_a) * (w_b - w_a)
            std = ((t - t_a) * (t_b - t) / (t_b - t_a)) ** 0.5
            w = mean + std * self._noise(self._x)
        times.insert(k, t)
        values.insert(k, w)
        return w

    def __call__(self, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        """The increment W(sigma_next) - W(sigma), divided by sqrt(|sigma_next - sigma|): N(0, 1)."""
        a, b = float(sigma), float(sigma_next)
        w_a = self._value_at(a)
        w_b = self._value_at(b)
        return (w_b - w_a) / abs(b - a) ** 0.5
