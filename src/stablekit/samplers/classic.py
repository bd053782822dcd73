"""The first k-diffusion samplers: Euler, Euler a, Heun, DPM2, DPM2 a, LMS.

Each follows k-diffusion's sampling.py (Crowson) step for step, so results match A1111/ComfyUI
and, configured as docs/samplers.md says, diffusers' Euler/EulerAncestral/Heun/LMS schedulers.
The churn options of Karras' Algorithm 2 (s_churn, s_tmin, s_tmax) are left out: A1111 and
ComfyUI default them to off.
"""
from __future__ import annotations

import torch
from numpy.polynomial import Polynomial
from torch import Tensor

from stablekit.samplers.common import Callback, Model, ancestral_step, args, report, to_d
from stablekit.samplers.noise import NoiseSource, noise_or_default


@torch.no_grad()
def sample_euler(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """Euler steps on the probability-flow ODE: Karras et al. (2022), "Elucidating the Design
    Space of Diffusion-Based Generative Models", Algorithm 2 without churn (first-order)."""
    extra_args = args(extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, noise: NoiseSource | None = None,
                           eta: float = 1.0) -> Tensor:
    """Euler steps down to sigma_down plus fresh noise up to the next sigma: ancestral sampling
    (Ho et al. 2020, DDPM) in k-diffusion's form; eta < 1 interpolates towards Euler."""
    extra_args, noise = args(extra_args), noise_or_default(noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and eta:
            x = x + noise(x) * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """Heun's second-order method: Karras et al. (2022), Algorithm 1/2 without churn; the last
    step (to sigma 0) is an Euler step."""
    extra_args = args(extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1], **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


def _dpm2_step(model: Model, x: Tensor, sigma: Tensor, sigma_to: Tensor, d: Tensor, extra_args: dict) -> Tensor:
    """One DPM-Solver-2 step (Lu et al. 2022, "DPM-Solver", Algorithm 1 with r = 1/2): the
    midpoint's derivative, the midpoint taken halfway in log sigma (k-diffusion's sample_dpm_2)."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid, **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """DPM2: second-order DPM-Solver-2 steps (Lu et al. 2022) in Karras' ODE form, as
    k-diffusion's sample_dpm_2; Euler for the last step to sigma 0."""
    extra_args = args(extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = _dpm2_step(model, x, sigmas[i], sigmas[i + 1], d, extra_args)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, noise: NoiseSource | None = None,
                           eta: float = 1.0) -> Tensor:
    """DPM2 a: DPM-Solver-2 steps down to sigma_down plus fresh noise (k-diffusion's
    sample_dpm_2_ancestral; Lu et al. 2022 with ancestral noise as in DDPM)."""
    extra_args, noise = args(extra_args), noise_or_default(noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm2_step(model, x, sigmas[i], sigma_down, d, extra_args)
            x = x + noise(x) * sigma_up
    return x


def lms_coefficient(order: int, sigmas: list[float], i: int, j: int) -> float:
    """Integral over [sigmas[i], sigmas[i+1]] of the Lagrange basis polynomial of node i - j
    through the nodes sigmas[i], ..., sigmas[i - order + 1]. Integrated exactly (k-diffusion and
    diffusers use scipy's quad, which is exact for these low-degree polynomials)."""
    basis = Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis *= Polynomial([-sigmas[i - k], 1.0]) / (sigmas[i - j] - sigmas[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@torch.no_grad()
def sample_lms(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
               callback: Callback | None = None, noise: NoiseSource | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth with variable step) on the ODE derivative, order 4
    after warm-up: the "LMS" of k-diffusion, after Karras et al. (2022) and the PLMS idea of
    Liu et al. (2022)."""
    extra_args = args(extra_args)
    nodes = sigmas.double().tolist()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        cur_order = len(ds)
        coeffs = [lms_coefficient(cur_order, nodes, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x
