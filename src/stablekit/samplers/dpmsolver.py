"""DPM-Solver++ samplers: DPM++ 2M, DPM++ 2M SDE, DPM++ SDE, DPM++ 2S a.

Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", in the data-prediction form, written in lambda = -log(sigma) as k-diffusion does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from stablekit.samplers.common import Callback, Model, ancestral_step, args, report, to_d
from stablekit.samplers.noise import BrownianPath, NoiseSource, noise_or_default


def _lam(sigma: Tensor) -> Tensor:
    return -sigma.log()


def _sigma(lam: Tensor) -> Tensor:
    return (-lam).exp()


def _first_order(x: Tensor, sigma: Tensor, sigma_to: Tensor, denoised: Tensor) -> Tensor:
    """The exact solution of the linear part plus denoised held constant (DPM-Solver++(1), which
    is DDIM): x' = (sigma_to / sigma) x + (1 - sigma_to / sigma) denoised."""
    h = _lam(sigma_to) - _lam(sigma)
    return (sigma_to / sigma) * x - torch.expm1(-h) * denoised


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                    callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """DPM-Solver++(2M): Lu et al. (2022), Algorithm 2; first step first-order, and the last step
    to sigma 0 returns the denoised prediction (k-diffusion's sample_dpmpp_2m)."""
    extra_args = args(extra_args)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        if old_denoised is None or sigmas[i + 1] == 0:
            x = _first_order(x, sigmas[i], sigmas[i + 1], denoised)
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            r = (_lam(sigmas[i]) - _lam(sigmas[i - 1])) / h
            x = _first_order(x, sigmas[i], sigmas[i + 1], (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised)
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                        callback: Callback | None = None, noise: NoiseSource | None = None,
                        eta: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE: Lu et al. (2022), the multistep SDE solver of section 5 / appendix,
    with the midpoint (default) or Heun correction of k-diffusion's sample_dpmpp_2m_sde. One
    Brownian increment per step, so a plain noise draw is the exact increment; eta = 0 gives
    DPM++ 2M exactly."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    extra_args, noise = args(extra_args), noise_or_default(noise)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            eta_h = eta * h
            phi = -torch.expm1(-h - eta_h)
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(x) * sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt()
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                     callback: Callback | None = None, noise: NoiseSource | None = None,
                     eta: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ (stochastic), k-diffusion's sample_dpmpp_sde: a second-order singlestep
    solver (Lu et al. 2022, DPM-Solver-2 with data prediction) whose sub-step at lambda + r*h and
    full step both add ancestral noise. The two noises are increments of one Brownian path, so
    the sub-step's noise is part of the full step's (BrownianPath built from `noise`)."""
    extra_args, noise = args(extra_args), noise_or_default(noise)
    path = BrownianPath(x, noise)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        sigma_s = _sigma(lam + r * (lam_next - lam))
        # sub-step to sigma_s
        sd, su = ancestral_step(sigmas[i], sigma_s, eta)
        x_2 = _first_order(x, sigmas[i], sd, denoised) + path(sigmas[i], sigma_s) * su
        denoised_2 = model(x_2, sigma_s, **extra_args)
        # full step with the combined prediction
        sd, su = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = _first_order(x, sigmas[i], sd, (1 - fac) * denoised + fac * denoised_2)
        x = x + path(sigmas[i], sigmas[i + 1]) * su
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                              callback: Callback | None = None, noise: NoiseSource | None = None,
                              eta: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) singlestep steps (Lu et al. 2022, Algorithm 1, r = 1/2) down to
    sigma_down, plus ancestral noise (k-diffusion's sample_dpmpp_2s_ancestral)."""
    extra_args, noise = args(extra_args), noise_or_default(noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            lam, lam_down = _lam(sigmas[i]), _lam(sigma_down)
            sigma_s = _sigma(lam + 0.5 * (lam_down - lam))
            x_2 = _first_order(x, sigmas[i], sigma_s, denoised)
            x = _first_order(x, sigmas[i], sigma_down, model(x_2, sigma_s, **extra_args))
        if sigmas[i + 1] > 0:
            x = x + noise(x) * sigma_up
    return x
