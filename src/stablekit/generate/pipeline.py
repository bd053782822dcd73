"""txt2img, img2img and inpainting as short compositions of the public steps (generate/steps.py).

Each mode only chooses its start latents, sigma range and post-processing; prompts, noise,
sampling and decoding are the same steps a ComfyUI node or a hires-fix pass calls directly.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.generate.accelerators import Accelerators, use_accelerators
from stablekit.generate.denoiser import Denoiser
from stablekit.generate.guidance import take as take_guidance
from stablekit.generate.hires import plan, second_pass
from stablekit.generate.inpaint_unet import inpaint_denoiser, is_inpainting_unet
from stablekit.generate.mask_size import check_mask_size
from stablekit.generate.noise import ImageNoise, batch_seeds, resolve_seed
from stablekit.generate.networks import ExtraNetworks, UsedNetworks, use_networks
from stablekit.generate.notes import note, size_note
from stablekit.generate.params import GenerationParams
from stablekit.generate.record import make_record, parameters_text
from stablekit.generate.steps import (
    InitImage,
    InpaintMask,
    attach_metadata,
    condition,
    decode,
    empty_latents,
    encode,
    encode_image,
    img2img_schedule,
    img2img_sigmas,
    paste_back,
    sample,
    to_pil,
)
from stablekit.prompts.encode import PromptEncoder
from stablekit.prompts.parse import ParsedPrompt
from stablekit.samplers import Sampling, resolve_sampling

StepCallback = Callable[[dict], None]
SETTINGS = tuple(f.name for f in dataclasses.fields(GenerationParams) if f.name not in ("prompt", "denoising_strength"))

__all__ = ["Pipeline", "decode", "encode", "img2img_sigmas", "to_pil"]


@dataclasses.dataclass
class _Run:
    """One resolved request: settings (names canonical, seed fixed), sampler, start and inputs."""

    params: GenerationParams
    sampling: Sampling
    latents: torch.Tensor
    init: InitImage | None = None
    mask: InpaintMask | None = None
    networks: ExtraNetworks = ExtraNetworks()
    controls: list | None = None  # ControlUnits (generate/control.py)
    hires: object = None  # HiresFix (generate/hires.py), txt2img only
    denoiser: Denoiser | None = None  # a 9-channel inpainting model's (generate/inpaint_unet.py)
    inpaint: object = None  # InpaintOptions (generate/inpaint_options.py)
    guidance: object = None  # GuidanceOptions (generate/guidance.py): CFG rescale, FreeU, PAG, fix steps
    accelerators: Accelerators | None = None  # opt-in lossy accelerators (generate/accelerators.py)


class Pipeline:
    """Generation with a loaded model. `generate()` returns PIL images carrying their metadata.

    Each image's `.info` holds "parameters" (A1111's text, exactly as the web UI writes it) and
    "stablekit" (JSON with every setting needed to regenerate it). device: where to run (a name
    for `stablekit.devices.resolve_device` or a torch.device); None keeps the components where they are.
    """

    def __init__(self, components: Components, progress: bool = True, device=None):
        if device is not None:
            from stablekit.devices import resolve_device

            components.to(resolve_device(device))
        self.components = components
        self.progress = progress
        self.prompts = PromptEncoder(components)
        self.denoiser = Denoiser.from_components(components)
        self._controlnets: dict = {}  # loaded ControlNets by path
        self.acceleration = None  # what stablekit.load chose (generate/acceleration.py); None: as given

    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def model_defaults(self) -> dict:
        """Generation defaults the model records (formats/model_defaults.py), e.g. {"cfg": 7.0}."""
        return self.components.extra.get("defaults") or {}

    @property
    def native_size(self) -> int:
        c = self.components
        return int(c.unet.config.sample_size) * c.vae_scale_factor

    def generate(self, prompt: str = "", callback: StepCallback | None = None, output: str = "pil",
                 **settings) -> list[Image.Image]:
        """txt2img. Settings are GenerationParams fields: negative_prompt, steps, cfg, sampler,
        schedule, seed, width, height, batch_size, batch_count, clip_skip, subseed,
        subseed_strength, seed_resize_from_w/_h; and loras=[(path, scale)], lora_dir= (where
        `<lora:NAME:SCALE>` tags find NAME.safetensors), embeddings_dir= (embeddings used by file
        name), applied for this call only (generate/networks.py). controlnets: [ControlUnit, ...]
        (every mode); hires: HiresFix(scale, steps, denoise, upscaler) for A1111's two-pass hires
        fix; guidance: GuidanceOptions (or a dict of its fields: cfg_rescale, freeu, pag_scale, pag_layers,
        fix_steps; generate/guidance.py), also for img2img/inpaint. output="np" returns float arrays [H, W, 3] in [0, 1] (no metadata) instead of PIL images."""
        controls, hires = settings.pop("controlnets", None), settings.pop("hires", None)
        guidance = self._guidance(settings)
        accelerators = Accelerators.take(settings)
        params, sampling, networks = self._resolve(prompt, settings, None)
        run = _Run(params, sampling, empty_latents(self.components, params.width, params.height), networks=networks,
                   controls=controls, hires=hires, guidance=guidance, accelerators=accelerators)
        return self._render(run, callback, output)

    def img2img(self, image, prompt: str = "", strength: float = 0.75, callback: StepCallback | None = None,
                output: str = "pil", **settings) -> list[Image.Image]:
        """img2img: `image` (path, PIL or InitImage) is encoded, noised to the sigma where
        `strength` of the schedule remains, and denoised from there (A1111's semantics:
        int(strength * steps) + 1 sampler steps). Other settings as generate(); size defaults
        to the image's."""
        controls = settings.pop("controlnets", None)
        guidance = self._guidance(settings)
        accelerators = Accelerators.take(settings)
        params, sampling, networks = self._resolve(prompt, settings, strength)
        init = self._init_image(image, params)
        return self._render(_Run(params, sampling, encode_image(self.components, init), init, networks=networks,
                                 controls=controls, guidance=guidance, accelerators=accelerators),
                            callback, output)

    def inpaint(self, image, mask, prompt: str = "", strength: float = 1.0, callback: StepCallback | None = None,
                output: str = "pil", **settings) -> list[Image.Image]:
        """Inpainting with any (non-inpainting) model, as A1111 does it: img2img whose x0
        prediction is reset to the image's latents outside the mask after every step, then the
        original pixels pasted back outside the mask, so they are unchanged exactly. `mask`:
        path, PIL image, [H, W] array or InpaintMask, white = repaint; the init image's size, or its
        aspect ratio (resized, with a note), else a one-line error (generate/mask_size.py)."""
        if image is None:
            raise StablekitError("a mask needs an image to inpaint: pass init_image (CLI: --init-image)")
        text = check_mask_size(mask, image)
        if text:
            note(text)
        options = _inpaint_options(settings.pop("inpaint_options", None))  # generate/inpaint_options.py
        if options is not None and options.only_masked:
            from stablekit.generate.inpaint_options import only_masked

            return only_masked(self, image, mask, prompt, strength, callback, output, options, settings)
        controls = settings.pop("controlnets", None)
        guidance = self._guidance(settings)
        accelerators = Accelerators.take(settings)
        params, sampling, networks = self._resolve(prompt, settings, strength)
        init = self._init_image(image, params)
        repaint = InpaintMask.load(mask, init.width, init.height) if options is None else \
            options.mask(mask, init.width, init.height)
        start = init if options is None else options.start_image(init, repaint)
        run = _Run(params, sampling, encode_image(self.components, start), init, repaint, networks, controls,
                   inpaint=options, guidance=guidance, accelerators=accelerators)
        if options is not None:
            run.latents = options.start_latents(run.latents, repaint, self.components.vae_scale_factor, params.seed)
        if is_inpainting_unet(self.components.unet):
            run.denoiser = inpaint_denoiser(self.denoiser, self.components, start, repaint)
        return self._render(run, callback, output)

    def outpaint(self, image, pads, prompt: str = "", strength: float = 1.0, callback: StepCallback | None = None,
                 output: str = "pil", **settings) -> list[Image.Image]:
        """Outpainting: `image` padded by pads = (left, top, right, bottom) pixels (or "L,T,R,B"; rounded
        up to multiples of 8, filled with its edge pixels) and inpainted there (generate/outpaint.py);
        the original pixels stay unchanged exactly. Size: the padded image's."""
        from stablekit.generate.outpaint import outpaint_inputs

        init, mask = outpaint_inputs(image, pads, self.components.vae_scale_factor)
        settings.update(width=init.width, height=init.height)
        return self.inpaint(init, mask, prompt, strength, callback, output, **settings)

    # ------------------------------------------------------------------ the shared parts
    def _guidance(self, settings: dict):
        """The guidance options of a call, with the CFG rescale the model records (a zero-terminal-SNR
        model's) when the call sets none: no `guidance`, or a dict of fields without cfg_rescale. A
        GuidanceOptions object is taken as it is."""
        recorded, given = self.model_defaults.get("cfg_rescale"), settings.get("guidance")
        if recorded and (given is None or (isinstance(given, dict) and "cfg_rescale" not in given)):
            settings["guidance"] = {**(given or {}), "cfg_rescale": recorded}
        return take_guidance(settings, self.components.arch)

    def _resolve(self, prompt: str, settings: dict, strength: float | None) -> tuple[GenerationParams, Sampling,
                                                                                  ExtraNetworks]:
        """Settings -> validated GenerationParams with canonical names and fixed seeds, the Sampling
        resolved once, and the LoRAs / embeddings asked for (loras=, lora_dir=, embeddings_dir=).
        Unknown settings are one-line errors naming the valid ones."""
        networks = ExtraNetworks.take(settings)
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise StablekitError(f"unknown setting {unknown[0]!r}; use one of: "
                                 f"{', '.join(SETTINGS + ExtraNetworks.SETTINGS + Accelerators.SETTINGS)}")
        if "cfg" not in settings and "cfg" in self.model_defaults:
            settings["cfg"] = self.model_defaults["cfg"]  # the CFG the model's figures were measured at
        params = GenerationParams(prompt=prompt, denoising_strength=strength, **settings).validate()
        sampling = resolve_sampling(params.sampler, params.schedule)
        params.sampler, params.schedule = sampling.sampler.name, sampling.schedule
        params.seed = resolve_seed(params.seed)
        if params.subseed_strength:
            params.subseed = resolve_seed(params.subseed)
        if strength is None:
            params.width = params.width or self.native_size
            params.height = params.height or self.native_size
            self._size_note(params)
        return params, sampling, networks

    def _init_image(self, image, params: GenerationParams) -> InitImage:
        init = InitImage.load(image, params.width, params.height)
        params.width, params.height = init.width, init.height
        self._size_note(params)
        return init

    def _size_note(self, params: GenerationParams) -> None:
        text = size_note(params.width, params.height, self.native_size)
        if text:
            note(text)

    def _controls(self, run: _Run, conditioning, sigmas) -> dict:
        """ControlNet units -> the conditioning's Control, and what the image text and record add."""
        if not run.controls:
            return {"text": {}, "record": {}}
        from stablekit.generate.control import ControlNetControl, prepare_units

        units = prepare_units(run.controls, self.components, run.params.width, run.params.height, self._controlnets)
        conditioning.control = ControlNetControl(units, sigmas, run.params.batch_size)
        return {"text": {f"ControlNet {i}": u.infotext() for i, u in enumerate(units)},
                "record": {"controlnet": [u.record() for u in units]}}

    def _hires(self, run: _Run, prompt, negative, extra: dict):
        """The hires fix's second pass (generate/hires.py), its text and record; None without one."""
        if run.hires is None:
            return None
        from stablekit.generate.control import ControlNetControl, prepare_units

        second = plan(self, run.params, run.sampling, run.hires, prompt, negative)
        second.conditioning.guidance = run.guidance
        if run.controls:  # the units act in the second pass too, fitted to its size (A1111's default)
            units = prepare_units(run.controls, self.components, second.width, second.height, self._controlnets)
            second.conditioning.control = ControlNetControl(units, second.sigmas, run.params.batch_size, hires=True)
        extra["text"].update(second.hires.fields())
        extra["record"]["hires"] = second.hires.record()
        return second

    def _render(self, run: _Run, callback: StepCallback | None, output: str) -> list:
        """With the LoRAs and embeddings in use (LoRAs removed afterwards, whatever happens): render."""
        prompt, negative = ParsedPrompt.parse(run.params.prompt), ParsedPrompt.parse(run.params.negative_prompt)
        with use_networks(self.prompts, run.networks, prompt, negative) as used, \
                use_accelerators(self.components, run.accelerators, used):
            return self._render_with(run, prompt, negative, used, callback, output)

    def _render_with(self, run: _Run, prompt: ParsedPrompt, negative: ParsedPrompt, used: UsedNetworks,
                     callback: StepCallback | None, output: str) -> list:
        """Conditioning once, then per batch: seeded noise, sample, decode, paste back, metadata."""
        c, p = self.components, run.params
        sigmas = run.sampling.sigmas(p.steps, self.denoiser)
        if run.init is not None:
            sigmas = img2img_schedule(run.sampling, self.denoiser, p.steps, p.denoising_strength,
                                      bool(run.guidance and run.guidance.fix_steps))
        conditioning = condition(self.prompts, prompt, negative, p.steps, p.clip_skip, p.cfg, size=(p.width, p.height))
        conditioning.guidance = run.guidance
        extra = self._controls(run, conditioning, sigmas)
        if run.guidance is not None:
            extra["text"].update(run.guidance.fields())
            extra["record"]["guidance"] = run.guidance.record()
        if run.inpaint is not None:
            extra["text"].update(run.inpaint.fields())
            extra["record"]["inpaint"] = run.inpaint.record()
        second = self._hires(run, prompt, negative, extra)
        latent_mask = run.mask.latent(c.vae_scale_factor, c.device, c.dtype) if run.mask is not None else None
        if run.denoiser is not None:  # an inpainting model sees the image: nothing reset per step, as diffusers,
            latent_mask = latent_mask if run.inpaint is not None and run.inpaint.noise_mask else None  # unless asked
        elif is_inpainting_unet(c.unet):
            raise StablekitError("this is an inpainting model (9-channel UNet): it needs an image and a mask "
                                 "(CLI: --init-image FILE --mask FILE)")
        steps = len(sigmas) - 1 + (second.steps if second else 0)
        bar = tqdm(total=steps * p.batch_count, desc="generate", disable=not self.progress, dynamic_ncols=True)
        images: list = []
        for b in range(p.batch_count):
            seeds, subseeds = batch_seeds(p.seed, p.subseed, p.subseed_strength, b * p.batch_size, p.batch_size)
            noise = ImageNoise(seeds, subseeds, p.subseed_strength, (p.seed_resize_from_w, p.seed_resize_from_h),
                               c.vae_scale_factor)

            def on_step(info, b=b) -> None:
                bar.update(1)
                if callback is not None:
                    # denoised: the model's current x0 estimate (latents), for live previews
                    callback({"batch": b, "batches": p.batch_count, "step": info.i + 1, "steps": info.steps,
                              "denoised": info.denoised})

            latents = sample(run.denoiser or self.denoiser, run.latents, sigmas, run.sampling, conditioning, noise,
                             on_step, mask=latent_mask)
            if second is not None:  # hires fix: fresh noise from the same seeds, as A1111
                noise = ImageNoise(seeds, subseeds, p.subseed_strength, (p.seed_resize_from_w, p.seed_resize_from_h),
                                   c.vae_scale_factor)
                latents = second_pass(c, self.denoiser, second, latents, run.sampling, noise, on_step)
            pixels = paste_back(decode(c, latents), run.init, run.mask)
            if output == "np":
                images.extend(pixels)
                continue
            for i, image in enumerate(to_pil(pixels)):
                record = make_record(p, seeds[i], subseeds[i], i, run.sampling.schedule_used, c, run.init, run.mask,
                                     extra={**used.record, **extra["record"]})
                text = parameters_text(p, seeds[i], subseeds[i], c, extra={**used.infotext, **extra["text"]})
                images.append(attach_metadata(image, text, record))
        bar.close()
        return images


def _inpaint_options(options):
    """None, an InpaintOptions or a dict of its fields -> a validated InpaintOptions (or None)."""
    if options is None:
        return None
    from stablekit.generate.inpaint_options import InpaintOptions

    return (options if isinstance(options, InpaintOptions) else InpaintOptions(**options)).validate()
