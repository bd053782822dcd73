"""Sampler nodes: KSampler and KSamplerAdvanced, with ComfyUI's sampler_name/scheduler names and
its step semantics, calling the library's `generate.steps.sample` (no sampling loop of its own).

What follows ComfyUI (comfy/samplers.py, comfy/sample.py):
- names: sampler_name and scheduler are ComfyUI's; each is an alias in stablekit.samplers
  ("normal" is k-diffusion's t = linspace(T-1, 0, steps) schedule in both);
- denoise < 1: the schedule of int(steps / denoise) steps, its last steps + 1 sigmas;
- KSamplerAdvanced: start_at_step / end_at_step cut the schedule, the last sigma set to 0
  unless return_with_leftover_noise;
- noise (engine noise="comfyui", the default): the batch's start noise is one torch.randn of
  the whole [B, C, h, w] latent from a CPU generator seeded with the seed; at full denoise it
  is scaled by sqrt(1 + sigma_max^2) (ComfyUI's max_denoise) rather than sigma_max; ancestral
  samplers draw from a second generator seeded with the same seed.
  noise="a1111": stablekit generate's noise (seed + i per image, scaled by sigma_max), so a
  txt2img graph gives `stablekit generate`'s image bit for bit.
"""
from __future__ import annotations

import math

import torch

from stablekit.errors import StablekitError
from stablekit.nodes.control import node_control
from stablekit.nodes.registry import register

# ComfyUI's KSampler.SAMPLERS / SCHEDULERS that stablekit implements, in ComfyUI's order. Names
# ComfyUI has and stablekit lacks are left out, so validation answers value_not_in_list.
COMFY_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                  "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "lcm", "ddim",
                  "uni_pc", "uni_pc_bh2")
# ComfyUI's *_gpu variants differ only in where their Brownian noise is drawn; ours is always CPU.
_GPU_ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde"}
COMFY_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform")
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True})
STEPS = ("INT", {"default": 20, "min": 1, "max": 10000})
CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def resolve(sampler_name: str, scheduler: str):
    from stablekit.samplers import resolve_sampling

    return resolve_sampling(_GPU_ALIASES.get(sampler_name, sampler_name), scheduler)


class ComfyNoise:
    """ComfyUI's KSampler noise as a stablekit noise source (see the module docstring)."""

    def __init__(self, seed: int, batch: int, scale: float = 1.0):
        self.seed, self.scale = int(seed), float(scale)
        self.seeds = [self.seed] * batch  # sample() reads the batch size from here
        self._later = torch.Generator("cpu").manual_seed(self.seed)

    def first(self, shape) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn((len(self.seeds), *shape), generator=generator, dtype=torch.float32)
        return noise * self.scale if self.scale != 1.0 else noise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self._later, dtype=torch.float32).to(x.device, x.dtype)


def schedule(sampling, steps: int, denoise: float, denoiser) -> torch.Tensor:
    """ComfyUI's KSampler.set_steps: the full schedule, or for denoise < 1 the last steps + 1
    sigmas of an int(steps / denoise)-step schedule."""
    if denoise is None or denoise > 0.9999:
        return sampling.sigmas(steps, denoiser)
    if denoise <= 0.0:
        return torch.zeros(0)
    return sampling.sigmas(int(steps / denoise), denoiser)[-(steps + 1):]


def start_latents(latent: dict, components) -> torch.Tensor:
    """The LATENT's samples on the model's device; an EmptyLatentImage (made before the model was
    known) becomes the model's own empty latents, as ComfyUI's fix_empty_latent_channels."""
    from stablekit.generate.steps import empty_latents

    samples = latent["samples"]
    if "pixel_size" in latent:
        w, h = latent["pixel_size"]
        samples = empty_latents(components, w, h).expand(samples.shape[0], -1, -1, -1)
    channels = components.unet.config.in_channels
    if samples.shape[1] != channels:
        raise StablekitError(f"the latent has {samples.shape[1]} channels but the model takes {channels}; "
                             "encode the image with this model's VAE")
    return samples.to(components.device, components.dtype)


def step_conditioning(positive, negative, steps: int, cfg: float, size: tuple[int, int]):
    """StepConditioning through generate.steps.condition, the same call `stablekit generate` makes."""
    from stablekit.generate.steps import condition

    if positive.clip.components is not negative.clip.components or positive.clip != negative.clip:
        raise StablekitError("positive and negative must be encoded by the same CLIP (same checkpoint, "
                             "CLIPSetLastLayer and LoRAs); connect both CLIPTextEncode nodes to one CLIP")
    return condition(positive.clip.encoder(), positive.text, negative.text, steps, positive.clip.clip_skip, cfg,
                     size=size)


def run_sampler(ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
                add_noise=True, start_step=None, last_step=None, force_full_denoise=False) -> tuple[dict]:
    """ComfyUI's common_ksampler on stablekit's steps; returns (LATENT,)."""
    from stablekit.generate.noise import ImageNoise
    from stablekit.generate.steps import sample

    components = model.activate()
    denoiser = model.denoiser()
    sampling = resolve(sampler_name, scheduler)
    sigmas = schedule(sampling, steps, denoise, denoiser)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[-1:]
    latents = start_latents(latent, components)
    out = {k: v for k, v in latent.items() if k != "pixel_size"}
    if len(sigmas) < 2:
        out["samples"] = latents
        return (out,)
    f = components.vae_scale_factor
    batch = latents.shape[0]
    if ctx.noise == "a1111":
        noise = ImageNoise([seed + i for i in range(batch)], factor=f)
    else:
        top = float(sigmas[0])
        full = math.isclose(denoiser.sigma_max, top, rel_tol=1e-5) or top > denoiser.sigma_max
        noise = ComfyNoise(seed, batch, math.sqrt(1 + top**2) / top if full else 1.0)
    size = (latents.shape[3] * f, latents.shape[2] * f)
    conditioning = step_conditioning(positive, negative, steps, cfg, size)
    conditioning.control = node_control(positive, negative, components, denoiser, size, sigmas, batch)
    mask = latent.get("noise_mask")
    if mask is not None:
        mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(),
                                               size=latents.shape[2:], mode="bilinear")
        mask = mask.to(components.device, components.dtype)

    def on_step(info) -> None:
        ctx.check_interrupt()
        ctx.emit("progress", {"value": info.i + 1, "max": info.steps, "prompt_id": ctx.prompt_id,
                              "node": ctx.node_id, "x0": info.denoised})

    out["samples"] = sample(denoiser, latents, sigmas, sampling, conditioning, noise, on_step, mask=mask,
                            add_noise=add_noise)
    return (out,)


@register
class KSampler:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"model": ("MODEL",), "seed": SEED, "steps": STEPS, "cfg": CFG,
                             "sampler_name": (list(COMFY_SAMPLERS),), "scheduler": (list(COMFY_SCHEDULERS),),
                             "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent_image": ("LATENT",),
                             "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return run_sampler(self.ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                           latent_image, denoise=denoise)


@register
class KSamplerAdvanced:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"model": ("MODEL",), "add_noise": (["enable", "disable"],), "noise_seed": SEED,
                             "steps": STEPS, "cfg": CFG, "sampler_name": (list(COMFY_SAMPLERS),),
                             "scheduler": (list(COMFY_SCHEDULERS),), "positive": ("CONDITIONING",),
                             "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
                             "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
                             "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
                             "return_with_leftover_noise": (["disable", "enable"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        return run_sampler(self.ctx, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                           latent_image, denoise=denoise, add_noise=add_noise == "enable", start_step=start_at_step,
                           last_step=end_at_step, force_full_denoise=return_with_leftover_noise != "enable")
