"""txt2img on one generation core: prompt encoding, seeded noise, the denoiser, a sampler, the VAE.

img2img, inpainting, hires fix and ControlNet reuse this core: they change the starting latents,
the sigma range, or what the Denoiser adds to the UNet call, never the samplers.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from stablekit.components import Components
from stablekit.generate.denoiser import Denoiser, module_dtype
from stablekit.generate.noise import ImageNoise, resolve_seed
from stablekit.generate.params import GenerationParams
from stablekit.prompts.conditioning import Conditioning
from stablekit.prompts.encode import PromptEncoder
from stablekit.prompts.parse import extract_extra_networks
from stablekit.prompts.schedule import at_step, prompt_schedule
from stablekit.samplers import get_sampler, get_sigmas, resolve_schedule

StepCallback = Callable[[dict], None]


def decode(components: Components, latents: torch.Tensor) -> np.ndarray:
    """VAE decode to float images [B, H, W, 3] in [0, 1], as diffusers' image processor does."""
    vae = components.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    with torch.no_grad():
        x = vae.decode(z.to(module_dtype(vae))).sample.float()
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a) for a in (images * 255).round().astype(np.uint8)]


class Pipeline:
    """Generation with a loaded model. `generate()` returns PIL images carrying their metadata.

    Each image's `.info` holds "parameters" (A1111's text, exactly as the web UI writes it) and
    "stablekit" (JSON with every setting needed to regenerate it).
    """

    def __init__(self, components: Components, progress: bool = True):
        self.components = components
        self.progress = progress
        self.prompts = PromptEncoder(components)
        self.denoiser = Denoiser.from_components(components)

    @property
    def native_size(self) -> int:
        c = self.components
        return int(c.unet.config.sample_size) * c.vae_scale_factor

    def generate(self, prompt: str = "", callback: StepCallback | None = None, output: str = "pil",
                 **settings) -> list[Image.Image]:
        """txt2img. Settings are GenerationParams fields: negative_prompt, steps, cfg, sampler,
        schedule, seed, width, height, batch_size, batch_count, clip_skip. output="np" returns
        float arrays [H, W, 3] in [0, 1] (no metadata) instead of PIL images."""
        return self.run(GenerationParams(prompt=prompt, **settings), callback=callback, output=output)

    def run(self, params: GenerationParams, callback: StepCallback | None = None, output: str = "pil") -> list:
        c = self.components
        params = GenerationParams(**params.to_dict())  # never mutate the caller's
        params.validate()
        params.width = params.width or self.native_size
        params.height = params.height or self.native_size
        params.seed = resolve_seed(params.seed)
        sampler = get_sampler(params.sampler)
        schedule = resolve_schedule(params.schedule, params.sampler)
        sigmas = get_sigmas(schedule, params.steps, self.denoiser, sampler=params.sampler)
        model, cond, uncond = self._conditioned_model(params, sigmas)

        f = c.vae_scale_factor
        shape = (c.unet.config.in_channels, params.height // f, params.width // f)
        total = params.steps * params.batch_count
        bar = tqdm(total=total, desc="generate", disable=not self.progress, dynamic_ncols=True)
        images: list[Image.Image] = []
        for b in range(params.batch_count):
            seeds = [params.seed + b * params.batch_size + i for i in range(params.batch_size)]
            noise = ImageNoise(seeds)
            x = noise.initial_latents(*shape).to(c.dtype) * sigmas[0]
            extra = {"cond": cond, "uncond": uncond, "cfg_scale": params.cfg}  # one row serves every image
            if c.is_sdxl:
                extra["added_time_ids"] = torch.tensor([[params.height, params.width, 0, 0, params.height, params.width]],
                                                       dtype=c.dtype).repeat(len(seeds), 1)

            def on_step(info, b=b) -> None:
                bar.update(1)
                if callback is not None:
                    callback({"batch": b, "batches": params.batch_count, "step": info.i + 1, "steps": info.steps})

            with torch.no_grad():
                latents = sampler(model, x, sigmas, extra_args=extra, callback=on_step, noise=noise)
            pixels = decode(c, latents)
            if output == "np":
                images.extend(pixels)
                continue
            for seed, image in zip(seeds, to_pil(pixels)):
                self._annotate(image, params, seed, schedule)
                images.append(image)
        bar.close()
        return images

    def _conditioned_model(self, params: GenerationParams, sigmas: torch.Tensor):
        """(model, cond, uncond). With A1111 prompt editing ([a:b:when], [a|b]) the model picks
        the conditioning in force at each step; otherwise it is the plain Denoiser."""
        enc = self.prompts
        texts = [prompt_schedule(extract_extra_networks(p)[0], params.steps) for p in (params.prompt, params.negative_prompt)]
        if len(texts[0]) == 1 and len(texts[1]) == 1:
            cond, uncond = enc.encode_pair(texts[0][0][1], texts[1][0][1], params.clip_skip)
            return self.denoiser, cond, uncond
        conds, unconds = ([(end, enc.encode(t, params.clip_skip)) for end, t in sched] for sched in texts)
        if params.negative_prompt == "" and enc.zero_empty_negative:  # as encode_pair does for SDXL
            zero = conds[0][1]
            unconds = [(params.steps, Conditioning(torch.zeros_like(zero.hidden_states),
                                                   None if zero.pooled is None else torch.zeros_like(zero.pooled)))]
        n = max(enc.n_chunks(c) for _, c in conds + unconds)
        conds = [(end, enc.pad(c, n, params.clip_skip)) for end, c in conds]
        unconds = [(end, enc.pad(c, n, params.clip_skip)) for end, c in unconds]
        if unconds[0][1].hidden_states.shape[1] != conds[0][1].hidden_states.shape[1]:  # zeros: widen
            z = unconds[0][1]
            unconds = [(params.steps, Conditioning(z.hidden_states.new_zeros(conds[0][1].hidden_states.shape), z.pooled))]

        def model(x, sigma, cond=None, uncond=None, **kwargs):
            step = int((sigmas > float(torch.as_tensor(sigma).reshape(-1)[0]) * (1 + 1e-6)).sum())
            return self.denoiser(x, sigma, at_step(conds, step), at_step(unconds, step), **kwargs)

        return model, conds[0][1], unconds[0][1]

    def _annotate(self, image: Image.Image, params: GenerationParams, seed: int, schedule: str) -> None:
        from stablekit import __version__
        from stablekit.metadata import format_parameters

        c = self.components
        settings = {
            "Steps": params.steps,
            "Sampler": params.sampler,
            "Schedule type": params.schedule,
            "CFG scale": params.cfg,
            "Seed": seed,
            "Size": f"{params.width}x{params.height}",
            "Model hash": c.hash or None,
            "Model": c.name or None,
            "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
            "Version": f"stablekit {__version__}",
        }
        image.info["parameters"] = format_parameters(params.prompt, params.negative_prompt,
                                                     {k: v for k, v in settings.items() if v is not None})
        record = {**params.to_dict(), "seed": seed, "batch_size": 1, "batch_count": 1, "schedule_resolved": schedule,
                  "model": {"name": c.name, "hash": c.hash, "arch": c.arch, "source": c.source},
                  "stablekit": __version__}
        image.info["stablekit"] = json.dumps(record, sort_keys=True)
