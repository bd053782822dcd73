"""What every sampler shares: the model and callback contracts and two small formulas.

A sampler is `sample_xxx(model, x, sigmas, *, extra_args=None, callback=None, noise=None) -> x`:
- `model(x, sigma, **extra_args)` returns the denoised x0 (stablekit.generate.Denoiser does);
  x lives in k-diffusion space, x = x0 + sigma * eps, so the first x is noise * sigmas[0];
- `sigmas` are descending and end in 0 (stablekit.samplers.get_sigmas);
- `callback(StepInfo)` runs once per step, after the model call, for progress and previews;
  raising from it (e.g. on interrupt) stops sampling;
- `noise(x)` is the only source of randomness (see noise.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from stablekit.samplers.noise import NoiseSource


class Model(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """One sampler step as a callback sees it: step index i of `steps`, the sigma the step
    starts from, x at that sigma and the model's denoised prediction there."""

    i: int
    steps: int
    sigma: float
    x: Tensor
    denoised: Tensor


Callback = Callable[[StepInfo], None]
Sampler = Callable[..., Tensor]  # sample_xxx(model, x, sigmas, *, extra_args, callback, noise)


def report(callback: Callback | None, i: int, sigmas: Tensor, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(StepInfo(i, len(sigmas) - 1, float(sigmas[i]), x, denoised))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
    2022, eq. 3 with sigma(t) = t); in this space it is also the model's eps."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split the step sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion's
    get_ancestral_step). eta = 1 is ancestral (DDPM) sampling; in this space, DDIM with eta is
    exactly this split (Song et al. 2021, eq. 16)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def args(extra_args: dict | None) -> dict:
    return {} if extra_args is None else extra_args


__all__ = ["Callback", "Model", "NoiseSource", "Sampler", "StepInfo", "ancestral_step", "report", "to_d"]
