"""Noise schedules and samplers as plain functions with one signature, in a name table.

    sampling = resolve_sampling("dpmpp_2m", "Automatic")    # once, where the names enter
    sigmas = sampling.sigmas(20, denoiser)                   # Karras: DPM++ 2M's own schedule
    x = sampling.fn(denoiser, noise(x) * sigmas[0], sigmas, extra_args=dict(cond=c, uncond=u, cfg_scale=7))

Names are A1111's ("Euler a", "DPM++ 2M", ...) with ComfyUI's as aliases ("euler_ancestral",
"dpmpp_2m", ...), any case. See docs/samplers.md for the table, the papers and the diffusers
configurations that give identical results.
"""
from stablekit.samplers.common import Callback, StepInfo
from stablekit.samplers.noise import BrownianPath, NoiseSource, seeded_noise
from stablekit.samplers.registry import (
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULE_NAMES,
    SamplerSpec,
    Sampling,
    get_sampler,
    get_sampler_spec,
    get_schedule,
    get_sigmas,
    resolve_sampling,
    resolve_schedule,
    split_legacy_sampler_name,
)
from stablekit.samplers.schedules import sigma_to_t, sigmas_at_timesteps, t_to_sigma

__all__ = [
    "SAMPLERS", "SAMPLER_NAMES", "SCHEDULE_NAMES", "BrownianPath", "Callback", "NoiseSource", "SamplerSpec", "Sampling",
    "StepInfo", "get_sampler", "get_sampler_spec", "get_schedule", "get_sigmas", "resolve_sampling", "resolve_schedule",
    "seeded_noise", "sigma_to_t", "sigmas_at_timesteps", "split_legacy_sampler_name", "t_to_sigma",
]
