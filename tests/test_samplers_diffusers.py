"""Our samplers against diffusers' schedulers, driven by the same UNet with CFG.

Each case runs diffusers' scheduler the way StableDiffusionPipeline does (init_noise_sigma,
scale_model_input, one UNet call on [uncond, cond], guidance on the model output, step with a
generator) and our sampler through the Denoiser on the same sigmas, from the same initial noise,
with a noise source seeded like the pipeline's generator. The final latents must agree to 1e-4
(measured: 3e-6 to 3e-5). The configurations here are the ones docs/samplers.md lists.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import scheduling_lms_discrete
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler  # the real class even without scipy

from stablekit.generate.denoiser import Denoiser
from stablekit.samplers import get_sampler, get_sigmas, seeded_noise
from test_samplers_support import (  # noqa: F401 (one_thread is an autouse fixture)
    CFG_SCALE,
    SD_SCHEDULER,
    alphas_cumprod,
    initial_noise,
    one_thread,
    prompt_pair,
    tiny_unet,
)

TOLERANCE = 1e-4
NOISE_SEED = 5
PREDICTIONS = ["epsilon", "v_prediction"]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(skip=True)


@pytest.fixture(scope="module")
def prompts():
    return prompt_pair()


def run_diffusers(unet, prompts, scheduler, steps=None, step_kwargs=None, **set_timesteps_kwargs):
    """StableDiffusionPipeline's denoising loop, reduced to the scheduler and the UNet."""
    cond, uncond = prompts
    if steps is None:
        scheduler.set_timesteps(**set_timesteps_kwargs)
    else:
        scheduler.set_timesteps(steps, **set_timesteps_kwargs)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    latents = initial_noise() * scheduler.init_noise_sigma
    context = torch.cat([uncond.hidden_states, cond.hidden_states])
    takes_generator = "generator" in scheduler.step.__code__.co_varnames
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            out_uncond, out_cond = unet(model_input, t, encoder_hidden_states=context).sample.chunk(2)
            kwargs = dict(step_kwargs or {}, **({"generator": generator} if takes_generator else {}))
            latents = scheduler.step(out_uncond + CFG_SCALE * (out_cond - out_uncond), t, latents, **kwargs).prev_sample
    return latents


def run_ours(unet, prompts, prediction, sampler, sigmas, vp_start, quantize=False, **sampler_kwargs):
    """Our sampler from the same noise. diffusers' VP-space schedulers start from unit-variance
    latents at sigma_max, i.e. x = noise * sqrt(sigma_max^2 + 1) here (vp_start); the
    Euler-family ones with linspace spacing start from noise * sigma_max, as k-diffusion."""
    cond, uncond = prompts
    denoiser = Denoiser(unet, alphas_cumprod(), prediction, quantize=quantize)
    scale = (sigmas[0] ** 2 + 1) ** 0.5 if vp_start else sigmas[0]
    return get_sampler(sampler)(denoiser, initial_noise() * scale, sigmas, noise=seeded_noise(NOISE_SEED),
                                extra_args=dict(cond=cond, uncond=uncond, cfg_scale=CFG_SCALE), **sampler_kwargs)


def sigmas(schedule, steps, sampler=None):
    return get_sigmas(schedule, steps, Denoiser(None, alphas_cumprod()), sampler=sampler)


def config(prediction, **overrides):
    return dict(SD_SCHEDULER, prediction_type=prediction, **overrides)


def assert_close(ours, theirs):
    diff = (ours - theirs).abs().max().item()
    assert torch.isfinite(ours).all()
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g} (latents up to {theirs.abs().max().item():.3g})"


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_matches_euler_discrete_given_sigmas(unet, prompts, prediction):
    s = sigmas("Karras", 6)
    theirs = run_diffusers(unet, prompts, EulerDiscreteScheduler.from_config(config(prediction, timestep_spacing="linspace")),
                           sigmas=s.tolist())
    assert_close(run_ours(unet, prompts, prediction, "Euler", s, vp_start=False), theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_ancestral_matches_with_same_noise(unet, prompts, prediction):
    # Normal schedule == timestep_spacing="linspace" when 999 / (steps - 1) is whole (steps 4, 10, 28, ...)
    theirs = run_diffusers(unet, prompts, EulerAncestralDiscreteScheduler.from_config(
        config(prediction, timestep_spacing="linspace")), 4)
    assert_close(run_ours(unet, prompts, prediction, "Euler a", sigmas("Normal", 4), vp_start=False), theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_heun_matches_heun_discrete_karras(unet, prompts, prediction):
    theirs = run_diffusers(unet, prompts, HeunDiscreteScheduler.from_config(
        config(prediction, timestep_spacing="linspace", use_karras_sigmas=True)), 5)
    assert_close(run_ours(unet, prompts, prediction, "Heun", sigmas("Karras", 5), vp_start=False), theirs)


@pytest.mark.parametrize("prediction", ["epsilon"])  # 10 steps of a second-order sampler: one type each
def test_dpm2_matches_kdpm2_discrete(unet, prompts, prediction):
    # our sigmas without A1111's discard-penultimate; Normal, as diffusers rounds Karras timesteps here
    theirs = run_diffusers(unet, prompts, KDPM2DiscreteScheduler.from_config(
        config(prediction, timestep_spacing="linspace")), 10)
    assert_close(run_ours(unet, prompts, prediction, "DPM2", sigmas("Normal", 10), vp_start=False), theirs)


@pytest.mark.parametrize("prediction", ["v_prediction"])
def test_dpm2_ancestral_matches_kdpm2_ancestral_with_same_noise(unet, prompts, prediction):
    theirs = run_diffusers(unet, prompts, KDPM2AncestralDiscreteScheduler.from_config(
        config(prediction, timestep_spacing="linspace")), 10)
    assert_close(run_ours(unet, prompts, prediction, "DPM2 a", sigmas("Normal", 10), vp_start=False), theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpmpp_2m_matches_dpm_solver_multistep(unet, prompts, prediction):
    # SGM Uniform == timestep_spacing="linspace" (which rounds t) when 999 / steps is whole (3, 9, 27, ...)
    theirs = run_diffusers(unet, prompts, DPMSolverMultistepScheduler.from_config(
        config(prediction, timestep_spacing="linspace")), 9)
    assert_close(run_ours(unet, prompts, prediction, "DPM++ 2M", sigmas("SGM Uniform", 9), vp_start=True), theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpmpp_2m_karras_matches_with_quantized_timesteps(unet, prompts, prediction):
    # diffusers rounds the timesteps of Karras sigmas for DPM-Solver; Denoiser(quantize=True) does the same
    theirs = run_diffusers(unet, prompts, DPMSolverMultistepScheduler.from_config(
        config(prediction, use_karras_sigmas=True)), 8)
    assert_close(run_ours(unet, prompts, prediction, "DPM++ 2M", sigmas("Karras", 8), vp_start=True, quantize=True),
                 theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpmpp_2m_sde_matches_sde_dpmsolver_with_same_noise(unet, prompts, prediction):
    theirs = run_diffusers(unet, prompts, DPMSolverMultistepScheduler.from_config(
        config(prediction, timestep_spacing="linspace", algorithm_type="sde-dpmsolver++")), 9)
    assert_close(run_ours(unet, prompts, prediction, "DPM++ 2M SDE", sigmas("SGM Uniform", 9), vp_start=True), theirs)


def _exact_quad(fn, a, b, epsrel=None):
    """Gauss-Legendre with 8 nodes: exact for LMS's polynomials (degree <= 3), independent of
    our own coefficient code; stands in for scipy.integrate.quad, which the venv lacks."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    a, b = float(a), float(b)
    return (b - a) / 2 * sum(w * fn((b - a) / 2 * x + (a + b) / 2) for x, w in zip(nodes, weights)), 0.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_lms_matches_lms_discrete(unet, prompts, prediction, monkeypatch):
    if not hasattr(scheduling_lms_discrete, "integrate"):
        monkeypatch.setattr(scheduling_lms_discrete, "integrate", types.SimpleNamespace(quad=_exact_quad), raising=False)
    theirs = run_diffusers(unet, prompts, LMSDiscreteScheduler.from_config(
        config(prediction, timestep_spacing="linspace", use_karras_sigmas=True)), 7)
    assert_close(run_ours(unet, prompts, prediction, "LMS", sigmas("Karras", 7), vp_start=False), theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_matches_ddim_scheduler(unet, prompts, prediction):
    # SD's shipped DDIM config (leading, steps_offset=1) except set_alpha_to_one=True: the last
    # step then goes to sigma 0 as ours does, instead of stopping at sigma_min = 0.029
    theirs = run_diffusers(unet, prompts, DDIMScheduler.from_config(config(prediction, set_alpha_to_one=True)), 6)
    assert_close(run_ours(unet, prompts, prediction, "DDIM", sigmas("Automatic", 6, "DDIM"), vp_start=True), theirs)


def test_ddim_with_eta_matches_ddim_scheduler_eta(unet, prompts):
    theirs = run_diffusers(unet, prompts, DDIMScheduler.from_config(config("epsilon", set_alpha_to_one=True)), 6,
                           step_kwargs={"eta": 1.0})
    assert_close(run_ours(unet, prompts, "epsilon", "DDIM", sigmas("DDIM", 6), vp_start=True, eta=1.0), theirs)


def test_plms_matches_pndm_epsilon(unet, prompts):
    # epsilon only: for v-prediction diffusers' PNDM combines raw v outputs across steps, while
    # CompVis/A1111 PLMS (and ours) convert each to eps first, so the two differ by design
    theirs = run_diffusers(unet, prompts, PNDMScheduler.from_config(config("epsilon", set_alpha_to_one=True)), 8)
    assert_close(run_ours(unet, prompts, "epsilon", "PLMS", sigmas("DDIM", 8), vp_start=True), theirs)


@pytest.mark.parametrize("prediction,order", [("epsilon", 2), ("v_prediction", 3)])
def test_unipc_bh2_matches_unipc_multistep(unet, prompts, prediction, order):
    # order 2 is diffusers' default, 3 is A1111's and ComfyUI's
    theirs = run_diffusers(unet, prompts, UniPCMultistepScheduler.from_config(
        config(prediction, timestep_spacing="linspace", solver_type="bh2", solver_order=order)), 9)
    assert_close(run_ours(unet, prompts, prediction, "UniPC bh2", sigmas("SGM Uniform", 9), vp_start=True, order=order),
                 theirs)


def test_unipc_bh1_matches_unipc_multistep_ending_at_sigma_min(unet, prompts):
    # diffusers' bh1 with final sigma 0 returns NaN (B(h) = -inf times 0), so compare with
    # final_sigmas_type="sigma_min": our x at sigma_min, mapped to diffusers' VP latents
    s = sigmas("SGM Uniform", 9)
    s[-1] = Denoiser(None, alphas_cumprod()).sigma_min
    theirs = run_diffusers(unet, prompts, UniPCMultistepScheduler.from_config(
        config("epsilon", timestep_spacing="linspace", solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min")), 9)
    ours = run_ours(unet, prompts, "epsilon", "UniPC", s, vp_start=True)
    assert_close(ours / (s[-1] ** 2 + 1) ** 0.5, theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_lcm_matches_lcm_scheduler_with_same_noise(unet, prompts, prediction):
    theirs = run_diffusers(unet, prompts, LCMScheduler.from_config(config(prediction)), 4)
    assert_close(run_ours(unet, prompts, prediction, "LCM", sigmas("Automatic", 4, "LCM"), vp_start=True), theirs)
