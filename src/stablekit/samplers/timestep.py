"""The samplers A1111 runs on training timesteps: DDIM, PLMS, LCM.

They are written here in the same sigma space as the others; what makes them "timestep"
samplers is only their default schedule (DDIM / LCM timesteps, see schedules.py). In this space
(x = x_t / sqrt(alphas_cumprod_t)) a DDIM step is an Euler step, and PLMS is Adams-Bashforth on
the same derivative, which is the model's eps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from stablekit.samplers.classic import sample_euler_ancestral
from stablekit.samplers.common import Callback, Model, args, report, to_d
from stablekit.samplers.noise import NoiseSource, noise_or_default


@torch.no_grad()
def sample_ddim(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise: NoiseSource | None = None, eta: float = 0.0) -> Tensor:
    """DDIM: Song et al. (2021), "Denoising Diffusion Implicit Models", eq. (12).

    Divided by sqrt(alphas_cumprod), DDIM's update x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev -
    s^2) eps + s z becomes x0 + sigma_down eps + sigma_up z: an Euler step to sigma_down plus
    noise sigma_up, with k-diffusion's ancestral split scaled by eta. eta = 0 (A1111's default)
    is deterministic and is the Euler sampler on DDIM's timesteps.
    """
    return sample_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, noise=noise, eta=eta)


@torch.no_grad()
def sample_plms(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """PLMS: Liu et al. (2022), "Pseudo Numerical Methods for Diffusion Models on Manifolds"
    (PNDM), eq. (12) with the pseudo improved Euler start of CompVis' PLMSSampler.

    A DDIM step driven by an eps combined Adams-Bashforth style from the last four eps (fixed
    coefficients, as the paper); the first step averages eps at both ends (one extra model call).
    Same steps as diffusers' PNDMScheduler(skip_prk_steps=True) and A1111's PLMS.
    """
    extra_args = args(extra_args)
    old_eps: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        report(callback, i, sigmas, x, denoised)
        eps = to_d(x, sigma, denoised)
        if not old_eps:
            eps_prime = eps
            if sigma_next > 0:  # pseudo improved Euler: average eps at both ends of the step
                x_2 = x + eps * (sigma_next - sigma)
                eps_prime = (eps + to_d(x_2, sigma_next, model(x_2, sigma_next, **extra_args))) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        old_eps = (old_eps + [eps])[-3:]
        x = x + eps_prime * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_lcm(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
               callback: Callback | None = None, noise: NoiseSource | None = None) -> Tensor:
    """Latent Consistency Model multistep sampling: Luo et al. (2023), "Latent Consistency
    Models", Algorithm 1: jump to the predicted x0, then re-noise it to the next sigma with fresh
    noise. For LCM-distilled models (LCM, LCM-LoRA), with few steps and CFG about 1-2.

    diffusers' LCMScheduler also applies the consistency boundary scalings c_skip/c_out; at
    LCM's timesteps (t >= 19) c_skip < 7e-6, so they are left out, as ComfyUI does.
    """
    extra_args, noise = args(extra_args), noise_or_default(noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        report(callback, i, sigmas, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise(x) * sigmas[i + 1]
    return x
