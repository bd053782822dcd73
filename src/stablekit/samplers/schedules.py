"""Noise schedules: which sigmas a sampler visits, as separate plain functions.

Every schedule is `fn(steps, model_sigmas) -> sigmas`: `model_sigmas` are the model's discrete
sigmas sqrt((1 - alphas_cumprod) / alphas_cumprod) in ascending order (index = training timestep,
as k-diffusion's DiscreteSchedule keeps them); the result is `steps + 1` float32 sigmas, descending,
ending in 0. Schedules are computed in float64 and rounded once to float32, as diffusers does.

Between training timesteps sigma is interpolated linearly in log sigma (k-diffusion's
DiscreteSchedule.t_to_sigma / sigma_to_t; diffusers' `_sigma_to_t` is the same interpolation).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from stablekit.errors import StablekitError


# --- sigma <-> timestep -----------------------------------------------------------------------

def sigma_to_t(sigma: Tensor, log_sigmas: Tensor, quantize: bool = False) -> Tensor:
    """The (fractional) training timestep of each sigma, interpolating linearly in log sigma.

    `log_sigmas` are the logs of the model's ascending discrete sigmas. Sigmas outside the table
    clamp to its ends. `quantize` returns the nearest integer timestep instead (k-diffusion's
    `quantize=True`; diffusers rounds its Karras timesteps the same way for DPM-Solver and UniPC).
    """
    log_sigma = sigma.to(log_sigmas.dtype).log()
    dists = log_sigma - log_sigmas[:, None]
    if quantize:
        return dists.abs().argmin(dim=0).view(sigma.shape).to(log_sigmas.dtype)
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


def t_to_sigma(t: Tensor, log_sigmas: Tensor) -> Tensor:
    """The sigma at (fractional) training timestep t, interpolating linearly in log sigma."""
    t = t.to(log_sigmas.dtype)
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp()


def _log_table(model_sigmas: Tensor) -> Tensor:
    return model_sigmas.double().log()


def _check_steps(steps: int, most: int, schedule: str) -> None:
    if steps > most:
        raise StablekitError(f"{schedule} schedule has at most {most} steps for this model (got {steps}); "
                             "use fewer steps or another schedule")


def _finish(sigmas: Tensor) -> Tensor:
    """Round to float32 and append the final sigma 0."""
    sigmas = sigmas.to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigmas_at_timesteps(timesteps, model_sigmas: Tensor) -> Tensor:
    """The model's sigmas at the given integer training timesteps (descending), then 0.

    For samplers that live on training timesteps (DDIM, PLMS, LCM, diffusers' DPM-Solver and
    UniPC), and for custom timestep lists.
    """
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    return _finish(model_sigmas[timesteps])


# --- schedules --------------------------------------------------------------------------------

def normal(steps: int, model_sigmas: Tensor) -> Tensor:
    """k-diffusion's DiscreteSchedule.get_sigmas: t = linspace(T-1, 0, steps), then 0.

    A1111 "Automatic" for Euler/Heun/LMS (its "Uniform"; its "Normal" is the same for discrete
    models) and ComfyUI "normal". diffusers' timestep_spacing="linspace" gives the same timesteps
    but interpolates sigma linearly in sigma, so the two agree exactly when (T-1)/(steps-1) is an
    integer (e.g. 10 or 28 steps with T=1000).
    """
    log_sigmas = _log_table(model_sigmas)
    t = torch.linspace(len(model_sigmas) - 1, 0, steps, dtype=torch.float64)
    return _finish(t_to_sigma(t, log_sigmas))


def sgm_uniform(steps: int, model_sigmas: Tensor) -> Tensor:
    """t = linspace(T-1, 0, steps + 1) without its last point, then 0 (A1111/ComfyUI "SGM Uniform").

    The spacing SDXL's sgm code uses; equals diffusers' DPMSolverMultistep/UniPC default
    timestep_spacing="linspace" (which rounds t) when (T-1)/steps is an integer (e.g. 9 or 27 steps).
    """
    log_sigmas = _log_table(model_sigmas)
    t = torch.linspace(len(model_sigmas) - 1, 0, steps + 1, dtype=torch.float64)[:-1]
    return _finish(t_to_sigma(t, log_sigmas))


def karras(steps: int, model_sigmas: Tensor, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
    eq. (5): sigmas evenly spaced in sigma^(1/rho), rho = 7, from the model's sigma_max to sigma_min.
    Same as diffusers' use_karras_sigmas=True and k-diffusion's get_sigmas_karras.
    """
    sigma_min, sigma_max = float(model_sigmas[0]), float(model_sigmas[-1])
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(steps: int, model_sigmas: Tensor) -> Tensor:
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min (k-diffusion
    get_sigmas_exponential; diffusers use_exponential_sigmas=True)."""
    sigma_min, sigma_max = float(model_sigmas[0]), float(model_sigmas[-1])
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return _finish(log_sigmas.exp())


def simple(steps: int, model_sigmas: Tensor) -> Tensor:
    """ComfyUI "simple": every (T/steps)-th training sigma counting down from the top."""
    _check_steps(steps, len(model_sigmas), "Simple")
    stride = len(model_sigmas) / steps
    picked = [model_sigmas[-(1 + int(i * stride))] for i in range(steps)]
    return _finish(torch.stack(picked).double())


def ddim_uniform(steps: int, model_sigmas: Tensor) -> Tensor:
    """DDIM's timesteps: t = 1 + k * (T // steps) for k < steps (Song et al. 2021 with the
    steps_offset=1 of SD's configs), then 0.

    Equals diffusers' timestep_spacing="leading", steps_offset=1 (DDIMScheduler, PNDMScheduler)
    and A1111's DDIM/PLMS timesteps (A1111 may add one more when 1000 % steps != 0; we keep
    exactly `steps`). ComfyUI calls it "ddim_uniform".
    """
    _check_steps(steps, len(model_sigmas), "DDIM")
    stride = len(model_sigmas) // steps
    t = (torch.arange(steps) * stride + 1).clamp(max=len(model_sigmas) - 1).flip(0)
    return sigmas_at_timesteps(t, model_sigmas)


def lcm(steps: int, model_sigmas: Tensor, original_steps: int = 50) -> Tensor:
    """Latent Consistency Models' timesteps (Luo et al. 2023): the distillation grid of
    `original_steps` timesteps t = k * T/50 - 1 (19, 39, ..., 999), of which `steps` are taken
    evenly by index from the top, as diffusers' LCMScheduler.set_timesteps does."""
    _check_steps(steps, original_steps, "LCM")
    stride = len(model_sigmas) // original_steps
    grid = (torch.arange(1, original_steps + 1) * stride - 1).flip(0)
    index = torch.linspace(0, original_steps, steps + 1, dtype=torch.float64)[:-1].floor().long()
    return sigmas_at_timesteps(grid[index], model_sigmas)


# canonical name -> (function, aliases). "Automatic" is resolved per sampler in registry.py.
SCHEDULES = {
    "Normal": (normal, ("normal", "uniform")),
    "Karras": (karras, ("karras",)),
    "Exponential": (exponential, ("exponential",)),
    "SGM Uniform": (sgm_uniform, ("sgm_uniform", "sgmuniform")),
    "Simple": (simple, ("simple",)),
    "DDIM": (ddim_uniform, ("ddim_uniform", "ddim")),
    "LCM": (lcm, ("lcm",)),
}
