"""Generation as small typed steps that txt2img, img2img, inpainting and everything later compose.

    conditioning = condition(encoder, prompt, negative, steps, clip_skip, cfg, size=(w, h))
    latents = empty_latents(components, w, h)            # or encode_image(components, InitImage.load(...))
    x = sample(denoiser, latents, sigmas, sampling, conditioning, ImageNoise(seeds))
    pixels = paste_back(decode(components, x), init, mask)

`sample()` needs no Pipeline: a ComfyUI KSampler node or a hires-fix pass calls it with its own
latents, sigmas and conditioning. Every tensor a step makes is made on the device of its inputs;
noise is drawn on the CPU (generate/noise.py) and moved; NumPy results are copied to the CPU first.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stablekit.components import Components, module_dtype
from stablekit.errors import StablekitError
from stablekit.generate.noise import ImageNoise
from stablekit.prompts.conditioning import Conditioning
from stablekit.prompts.parse import ParsedPrompt
from stablekit.prompts.schedule import at_step
from stablekit.samplers.common import Callback

Schedule = list  # [(last_step, Conditioning)], as PromptEncoder.encode_schedule returns


# ----------------------------------------------------------------------------- inputs
def _open_image(source, mode: str, what: str, fix: str) -> Image.Image:
    """A PIL image or a path -> PIL image in `mode`; an unreadable file is a one-line error."""
    if isinstance(source, Image.Image):
        return source.convert(mode)
    try:
        with Image.open(source) as im:
            return im.convert(mode)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise StablekitError(f"cannot read {what} {source!r}: {exc}; {fix}") from None


def _identity(data: np.ndarray) -> dict:
    """How the record identifies an input: sha256 of its 8-bit pixel bytes, and its size."""
    return {"sha256": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(),
            "width": int(data.shape[1]), "height": int(data.shape[0])}


@dataclass(frozen=True)
class InitImage:
    """The image img2img and inpainting start from: 8-bit RGB [H, W, 3] at the generation size."""

    rgb: np.ndarray

    @classmethod
    def load(cls, source, width: int | None = None, height: int | None = None, multiple: int = 8) -> "InitImage":
        """A path, PIL image or InitImage, resized to width x height (A1111's "Just resize",
        Lanczos); without a size, its own size rounded down to a multiple of `multiple`."""
        if isinstance(source, InitImage):
            if (width or source.width, height or source.height) == (source.width, source.height):
                return source
            source = Image.fromarray(source.rgb)
        image = _open_image(source, "RGB", "init image", "give a PNG/JPEG/WebP file")
        w = width or max(multiple, image.width // multiple * multiple)
        h = height or max(multiple, image.height // multiple * multiple)
        if image.size != (w, h):
            image = image.resize((w, h), Image.LANCZOS)
        return cls(np.asarray(image, dtype=np.uint8))

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def pixels(self) -> np.ndarray:
        """Float RGB [H, W, 3] in [0, 1]."""
        return self.rgb.astype(np.float32) / 255.0

    def identity(self) -> dict:
        """{"sha256", "width", "height"}: what the generation record stores for it."""
        return _identity(self.rgb)


@dataclass(frozen=True)
class InpaintMask:
    """Where to repaint: [H, W] float in {0, 1} at the image's size, 1 = repaint (A1111's
    "inpaint masked"; a grey level above half counts as white)."""

    repaint: np.ndarray

    @classmethod
    def load(cls, source, width: int, height: int) -> "InpaintMask":
        """A path, PIL image, [H, W] array in [0, 1] (or uint8) or InpaintMask, resized to the image."""
        if isinstance(source, InpaintMask):
            source = Image.fromarray((source.repaint * 255).astype(np.uint8))
        if isinstance(source, np.ndarray):
            data = source if source.dtype == np.uint8 else (np.clip(source, 0, 1) * 255).astype(np.uint8)
            source = Image.fromarray(data)
        mask = _open_image(source, "L", "mask", "give a black-and-white PNG (white = repaint)")
        mask = mask.resize((width, height), Image.LANCZOS)
        return cls((np.asarray(mask, dtype=np.float32) > 127.5).astype(np.float32))

    def latent(self, factor: int, device=None, dtype=torch.float32) -> Tensor:
        """[1, 1, H/f, W/f] mask for the latents, as A1111: resized to latent size, rounded to 0/1."""
        h, w = self.repaint.shape
        small = InpaintMask.load(self.repaint, w // factor, h // factor).repaint
        return torch.from_numpy(small)[None, None].to(device=device, dtype=dtype)

    def identity(self) -> dict:
        """{"sha256" of the 0/255 bytes, "width", "height"}: what the generation record stores."""
        return _identity((self.repaint * 255).astype(np.uint8))


# ----------------------------------------------------------------------------- conditioning
@dataclass
class StepConditioning:
    """What the denoiser is conditioned on at each sampler step.

    cond / uncond: [(last_step, Conditioning)] schedules (one entry without prompt editing);
    uncond None: no guidance. cfg_scale: classifier-free guidance scale. added_time_ids: SDXL's
    [1, 6] size ids (None for SD 1.x / 2.x). control: ControlNet residuals (Denoiser's Control).
    guidance: GuidanceOptions resolved for the model (CFG rescale, FreeU, PAG; generate/guidance.py).
    """

    cond: Schedule
    uncond: Schedule | None = None
    cfg_scale: float = 7.0
    added_time_ids: Tensor | None = None
    control: object = None
    guidance: object = None

    @property
    def constant(self) -> bool:
        return len(self.cond) == 1 and (self.uncond is None or len(self.uncond) == 1)

    def at(self, step: int) -> tuple[Conditioning, Conditioning | None]:
        """(cond, uncond) in force at 0-based sampler step `step` (A1111's reconstruct_cond_batch)."""
        return at_step(self.cond, step), None if self.uncond is None else at_step(self.uncond, step)


def sdxl_time_ids(width: int, height: int, device=None, dtype=torch.float32) -> Tensor:
    """SDXL's size conditioning [1, 6]: original size, crop (0, 0), target size (as A1111/diffusers)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)


def condition(encoder, prompt: str | ParsedPrompt, negative: str | ParsedPrompt | None, steps: int,
              clip_skip: int = 1, cfg_scale: float = 7.0, *, size: tuple[int, int] | None = None) -> StepConditioning:
    """Prompt and negative (A1111 syntax, prompt editing included) -> per-step conditioning.

    encoder: a PromptEncoder (the one implementation of the pairing rules). size: (width, height),
    needed for SDXL's size ids.
    """
    cond, uncond = encoder.encode_pair_schedule(prompt, negative, steps, clip_skip)
    c = encoder.components
    time_ids = None
    if c.is_sdxl:
        if size is None:
            raise StablekitError("SDXL conditioning needs the image size: pass size=(width, height)")
        time_ids = sdxl_time_ids(size[0], size[1], cond[0][1].hidden_states.device, c.dtype)
    return StepConditioning(cond, uncond, float(cfg_scale), time_ids)


# ----------------------------------------------------------------------------- latents
def empty_latents(components: Components, width: int, height: int) -> Tensor:
    """txt2img's start: zero latents [1, C, H/f, W/f] on the model's device (noise is added by sample)."""
    f = components.vae_scale_factor
    return torch.zeros(1, components.unet.config.in_channels, height // f, width // f,
                       device=components.device, dtype=components.dtype)


def encode_image(components: Components, image: "InitImage | np.ndarray") -> Tensor:
    """An InitImage or float images [B, H, W, 3] in [0, 1] -> scaled latents in the UNet's dtype:
    the posterior mean, as A1111 takes it (diffusers' img2img samples the posterior instead)."""
    images = image.pixels[None] if isinstance(image, InitImage) else image
    return encode(components, images).to(components.dtype)


def encode(components: Components, images: np.ndarray) -> Tensor:
    """Float images [B, H, W, 3] in [0, 1] -> scaled float32 latents (VAE posterior mean)."""
    vae = components.vae
    device = next(vae.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() * 2 - 1
    with torch.no_grad():
        z = vae.encode(x.to(module_dtype(vae))).latent_dist.mean.float()
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


def img2img_sigmas(sigmas: Tensor, steps: int, strength: float) -> Tensor:
    """A1111's img2img schedule: of the full `steps` schedule, the last int(strength * steps) + 1
    steps (sd_samplers_common.setup_img2img_steps, without "fix steps")."""
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


def img2img_schedule(sampling, denoiser, steps: int, strength: float, fix_steps: bool = False) -> Tensor:
    """The sigmas an img2img pass runs. Without fix_steps: img2img_sigmas of the `steps` schedule
    (int(strength * steps) + 1 steps). With fix_steps (A1111's img2img_fix_steps, and what A1111
    always does for the hires pass): exactly `steps` steps, the last ones of a schedule of
    int(steps / strength) steps (sd_samplers_common.setup_img2img_steps)."""
    if not fix_steps or strength <= 0:
        return img2img_sigmas(sampling.sigmas(steps, denoiser), steps, strength)
    full = max(steps, int(steps / min(strength, 0.999))) if strength > 0 else steps
    return sampling.sigmas(full, denoiser)[full - steps:]


# ----------------------------------------------------------------------------- sampling
def guided_model(denoiser, conditioning: StepConditioning, sigmas: Tensor, latents: Tensor | None = None,
                 mask: Tensor | None = None):
    """The sampler's model x, sigma -> x0: the denoiser with the conditioning in force at each
    step, and with a mask, x0 reset to `latents` outside it after every call (A1111's inpainting)."""
    fixed = conditioning.at(0) if conditioning.constant else None
    guidance = getattr(conditioning, "guidance", None)
    extra = {"guidance": guidance} if guidance is not None else {}  # denoisers without the option still work

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        if fixed is None:  # prompt editing: the step whose sigma interval holds this sigma
            step = int((sigmas > float(torch.as_tensor(sigma).reshape(-1)[0]) * (1 + 1e-6)).sum())
            cond, uncond = conditioning.at(step)
        else:
            cond, uncond = fixed
        x0 = denoiser(x, sigma, cond, uncond, cfg_scale=conditioning.cfg_scale,
                      added_time_ids=conditioning.added_time_ids, control=conditioning.control, **extra)
        if mask is None:
            return x0
        return latents * (1 - mask) + x0 * mask

    return model


def sample(denoiser, latents: Tensor, sigmas: Tensor, sampler, conditioning: StepConditioning,
           noise: ImageNoise, callback: Callback | None = None, *, mask: Tensor | None = None,
           add_noise: bool = True) -> Tensor:
    """Denoise `latents` along `sigmas` with a sampler: the step every mode and node shares.

    latents: the clean start [1 or B, C, h, w] (zeros for txt2img, the encoded image for img2img),
    on the model's device; noise: the per-image source (its first draw is the start noise, added
    as latents + noise * sigmas[0] unless add_noise=False, where latents are already noisy);
    sampler: a resolved Sampling or SamplerSpec (or a sampler function); mask: [1, 1, h, w],
    1 = repaint, 0 = keep `latents`. Returns the denoised latents [B, C, h, w].
    """
    fn = getattr(sampler, "fn", sampler)
    if not callable(fn):
        raise StablekitError(f"sample() needs a resolved sampler (stablekit.samplers.resolve_sampling), got {sampler!r}")
    batch = len(noise.seeds)
    if add_noise:
        start = noise.first(tuple(latents.shape[1:])).to(latents.device, latents.dtype)
        x = latents + start * sigmas[0]
    else:
        x = latents.expand(batch, *latents.shape[1:]) if latents.shape[0] == 1 else latents
    # Contiguous: encoded latents come out channels-last, and a UNet/VAE run on that layout picks
    # other kernels (outputs 2e-6 apart); one layout keeps images identical however the start was made.
    x = x.contiguous()
    model = guided_model(denoiser, conditioning, sigmas, latents, mask)
    with torch.no_grad():
        return fn(model, x, sigmas, callback=callback, noise=noise)


# ----------------------------------------------------------------------------- decode, post-process
def decode(components: Components, latents: Tensor) -> np.ndarray:
    """VAE decode to float images [B, H, W, 3] in [0, 1] (on the CPU), as diffusers' image processor."""
    vae = components.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    with torch.no_grad():
        x = vae.decode(z.to(next(vae.parameters()).device, module_dtype(vae))).sample.float()
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def paste_back(pixels: np.ndarray, init: InitImage | None, mask: InpaintMask | None) -> np.ndarray:
    """A1111's inpainting overlay: outside the mask the original pixels, exactly. Without a mask
    (txt2img, img2img) the pixels are returned unchanged."""
    if mask is None:
        return pixels
    if init is None:
        raise StablekitError("a mask needs an image to inpaint: pass init_image (CLI: --init-image)")
    m = mask.repaint[None, :, :, None]
    return init.pixels[None] * (1 - m) + pixels * m


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """Float images [B, H, W, 3] in [0, 1] -> 8-bit PIL images (rounded, as diffusers)."""
    return [Image.fromarray(a) for a in (images * 255).round().astype(np.uint8)]


def attach_metadata(image: Image.Image, parameters: str, record: dict) -> Image.Image:
    """The image carrying A1111's text and the stablekit record, so that an ordinary
    `image.save(path)` writes them (stablekit.metadata.annotate: PNG text, JPEG/WebP EXIF)."""
    from stablekit.metadata import annotate

    return annotate(image, parameters, record)
