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

from stablekit.components import Components, module_dtype
from stablekit.generate.denoiser import Denoiser
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


def encode(components: Components, images: np.ndarray) -> torch.Tensor:
    """Float images [B, H, W, 3] in [0, 1] -> scaled latents: the posterior mean, as A1111 takes
    it (diffusers' img2img samples the posterior instead)."""
    vae = components.vae
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1
    with torch.no_grad():
        z = vae.encode(x.to(module_dtype(vae))).latent_dist.mean.float()
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


def _open_image(source, mode: str, what: str, fix: str) -> Image.Image:
    """A PIL image or a path -> PIL image in `mode`; an unreadable file is a one-line error."""
    from stablekit.errors import StablekitError

    if isinstance(source, Image.Image):
        return source.convert(mode)
    try:
        with Image.open(source) as im:
            return im.convert(mode)
    except (OSError, ValueError) as exc:
        raise StablekitError(f"cannot read {what} {source}: {exc}; {fix}") from None


def load_init_image(image, width: int | None, height: int | None, multiple: int) -> np.ndarray:
    """A path or PIL image -> float RGB [H, W, 3] in [0, 1], resized to width x height (A1111's
    "Just resize"); without a size, the image's own size rounded down to a multiple of `multiple`."""
    image = _open_image(image, "RGB", "init image", "give a PNG/JPEG/WebP file")
    w = width or max(multiple, image.width // multiple * multiple)
    h = height or max(multiple, image.height // multiple * multiple)
    if image.size != (w, h):
        image = image.resize((w, h), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def load_mask(mask, width: int, height: int) -> np.ndarray:
    """A path, PIL image or array -> float [H, W] in {0, 1} at the image's size; white (> half)
    marks what to repaint (A1111's "inpaint masked")."""
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8) if mask.dtype != np.uint8 else mask)
    mask = _open_image(mask, "L", "mask", "give a black-and-white PNG (white = repaint)")
    mask = mask.resize((width, height), Image.LANCZOS)
    return (np.asarray(mask, dtype=np.float32) > 127.5).astype(np.float32)


def img2img_sigmas(sigmas: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """A1111's img2img schedule: of the full `steps` schedule, the last int(strength * steps) + 1
    steps (sd_samplers_common.setup_img2img_steps, without "fix steps")."""
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


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

    def img2img(self, image, prompt: str = "", strength: float = 0.75, callback: StepCallback | None = None,
                output: str = "pil", **settings) -> list[Image.Image]:
        """img2img: `image` (path or PIL) is encoded, noised to the sigma where `strength` of the
        schedule remains, and denoised from there (A1111's semantics: int(strength * steps) + 1
        sampler steps). Other settings as generate(); size defaults to the image's."""
        return self.run(GenerationParams(prompt=prompt, denoising_strength=strength, **settings),
                        callback=callback, output=output, init_image=image)

    def inpaint(self, image, mask, prompt: str = "", strength: float = 1.0, callback: StepCallback | None = None,
                output: str = "pil", **settings) -> list[Image.Image]:
        """Inpainting with any (non-inpainting) model, as A1111 does it: img2img whose x0
        prediction is reset to the image's latents outside the mask after every step, then the
        original pixels pasted back outside the mask, so they are unchanged exactly. `mask`:
        path, PIL image or [H, W] array, white = repaint."""
        return self.run(GenerationParams(prompt=prompt, denoising_strength=strength, **settings),
                        callback=callback, output=output, init_image=image, mask=mask)

    def run(self, params: GenerationParams, callback: StepCallback | None = None, output: str = "pil",
            init_image=None, mask=None) -> list:
        c = self.components
        params = GenerationParams(**params.to_dict())  # never mutate the caller's
        params.validate()
        init = self._prepare_init(params, init_image, mask) if init_image is not None or mask is not None else None
        init_latents = init["latents"] if init else None
        params.width = params.width or self.native_size
        params.height = params.height or self.native_size
        params.seed = resolve_seed(params.seed)
        sampler = get_sampler(params.sampler)
        schedule = resolve_schedule(params.schedule, params.sampler)
        sigmas = get_sigmas(schedule, params.steps, self.denoiser, sampler=params.sampler)
        if init_latents is not None:
            sigmas = img2img_sigmas(sigmas, params.steps, params.denoising_strength)
        model, cond, uncond = self._conditioned_model(params, sigmas)
        if mask is not None:
            unmasked, repaint = model, init["latent_mask"]

            def model(x, sigma, **kwargs):  # noqa: F811 -- the same model, x0 kept outside the mask
                return init_latents * (1 - repaint) + unmasked(x, sigma, **kwargs) * repaint

        f = c.vae_scale_factor
        shape = (c.unet.config.in_channels, params.height // f, params.width // f)
        total = (len(sigmas) - 1) * params.batch_count
        bar = tqdm(total=total, desc="generate", disable=not self.progress, dynamic_ncols=True)
        images: list[Image.Image] = []
        for b in range(params.batch_count):
            seeds = [params.seed + b * params.batch_size + i for i in range(params.batch_size)]
            noise = ImageNoise(seeds)
            x = noise.initial_latents(*shape).to(c.dtype) * sigmas[0]
            if init_latents is not None:
                x = x + init_latents
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
            if mask is not None:  # A1111's overlay: outside the mask the original pixels, exactly
                m = init["pixel_mask"][None, :, :, None]
                pixels = init["pixels"][None] * (1 - m) + pixels * m
            if output == "np":
                images.extend(pixels)
                continue
            for seed, image in zip(seeds, to_pil(pixels)):
                self._annotate(image, params, seed, schedule)
                images.append(image)
        bar.close()
        return images

    def _prepare_init(self, params: GenerationParams, init_image, mask) -> dict:
        """img2img / inpainting inputs; sets params' size (from the image) and default strength."""
        from stablekit.errors import StablekitError

        c = self.components
        if init_image is None:
            raise StablekitError("a mask needs an image to inpaint: pass init_image (CLI: --init-image)")
        if params.denoising_strength is None:
            params.denoising_strength = 0.75  # A1111's default
        pixels = load_init_image(init_image, params.width, params.height, 8)
        params.height, params.width = pixels.shape[:2]
        init = {"pixels": pixels, "latents": encode(c, pixels[None]).to(c.dtype)}
        if mask is not None:
            init["pixel_mask"] = load_mask(mask, params.width, params.height)
            f = c.vae_scale_factor  # latent mask as A1111: resized to latent size, rounded to 0/1
            latent = load_mask(Image.fromarray((init["pixel_mask"] * 255).astype(np.uint8)), params.width // f,
                               params.height // f)
            init["latent_mask"] = torch.from_numpy(latent)[None, None].to(c.dtype)
        return init

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
            "Denoising strength": params.denoising_strength,
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
