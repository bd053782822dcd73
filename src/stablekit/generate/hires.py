"""Hires fix: A1111's two-pass txt2img, composed of the public steps (generate/steps.py).

Follows A1111 `modules/processing.py` (StableDiffusionProcessingTxt2Img.sample_hr_pass, v1.10):
  1. the first pass at width x height, as plain txt2img;
  2. upscale to int(width * scale) x int(height * scale): in latent space (the "Latent ..." modes,
     torch interpolate on the latents) or in pixel space (decode, 8-bit image, Lanczos / nearest
     resize or an ESRGAN-family model (generate/upscale_models.py), encode again);
  3. a second pass: img2img of the upscaled latents with its own steps (default: the first pass's)
     and denoising strength (int(strength * steps) + 1 steps of the schedule run), the prompt
     conditioned at the new size, fresh noise from the same seeds (A1111 re-seeds for the pass).
The PNG text carries what A1111 writes: `Denoising strength`, `Hires upscale`, `Hires steps` (when
set), `Hires upscaler` (a model by the name A1111 shows for it: "R-ESRGAN 4x+", "4x-UltraSharp"), and
`Size` stays the first pass's size, so A1111 reads it back the same.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stablekit.errors import StablekitError

# A1111 shared.latent_upscale_modes: name -> (torch interpolate mode, antialias)
LATENT_MODES = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
IMAGE_UPSCALERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
UPSCALERS = (*LATENT_MODES, *IMAGE_UPSCALERS)


def builtin_name(name: str) -> str | None:
    """A1111's name of a built-in upscaler in any case (latent, lanczos, "latent (bicubic)", ...); None
    for any other name."""
    for known in UPSCALERS:
        if str(name).strip().lower() == known.lower():
            return known
    return None


def resolve_upscaler(name: str, path: str | None = None, dirs=(), paths: bool = True) -> tuple[str, str | None]:
    """(A1111 name, model file or None) of a hires upscaler: a built-in, a model path, or a model's
    name found in the upscaler dirs (generate/upscale_models.py); unknown names are one line.
    paths=False: a model only by its name in the dirs (servers)."""
    from stablekit.generate.upscale_models import a1111_name, lookup_upscaler, search_note

    known = builtin_name(name)
    if known is not None:
        return known, None
    if path is not None and Path(path).is_file():  # a replayed record's own file
        return a1111_name(path), str(path)
    found = lookup_upscaler(name, dirs, paths=paths)
    if found is None:
        hint = "; or give a path to an ESRGAN-family .pth/.safetensors file" if paths else ""
        raise StablekitError(f"unknown hires upscaler {name!r}; use one of: {', '.join(UPSCALERS)}, or a model "
                             f"({search_note(dirs)}{hint})")
    return a1111_name(found), str(found)


@dataclass
class HiresFix:
    """A1111's hires fix settings: scale (Hires upscale), steps (Hires steps; 0: the first pass's),
    denoise (Denoising strength of the second pass), upscaler (Hires upscaler: a built-in, or an
    ESRGAN-family model's name or path), upscaler_path (the model file, set by validate()),
    upscaler_dirs (folders searched for a model name, before $STABLEKIT_UPSCALER_DIR)."""

    scale: float = 2.0
    steps: int = 0
    denoise: float = 0.7
    upscaler: str = "Latent"
    upscaler_path: str | None = None
    upscaler_dirs: tuple = ()

    def validate(self, paths: bool = True) -> "HiresFix":
        """A copy with the canonical upscaler name and its model file found; bad numbers and unknown
        upscalers are one-line errors. paths=False: a model only by its name in the dirs (servers)."""
        checked = self._checked()
        name, path = resolve_upscaler(checked.upscaler, checked.upscaler_path, checked.upscaler_dirs, paths)
        return replace(checked, upscaler=name, upscaler_path=path)

    def _checked(self) -> "HiresFix":
        """validate() without looking for a model (a PNG's fields and records: the CLI adds the dirs)."""
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not 1 <= self.scale <= 8:
            raise StablekitError(f"hires scale must be between 1 and 8 (got {self.scale!r})")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise StablekitError(f"hires steps must be a whole number >= 0 (0: the first pass's; got {self.steps!r})")
        if not isinstance(self.denoise, (int, float)) or isinstance(self.denoise, bool) or not 0 <= self.denoise <= 1:
            raise StablekitError(f"hires denoising strength must be between 0 and 1 (got {self.denoise!r})")
        return replace(self, scale=float(self.scale), denoise=float(self.denoise),
                       upscaler=builtin_name(self.upscaler) or str(self.upscaler).strip(),
                       upscaler_dirs=tuple(str(d) for d in self.upscaler_dirs or ()))

    def target(self, width: int, height: int, multiple: int = 8) -> tuple[int, int]:
        """The second pass's size: int(size * scale), rounded down to whole latents."""
        return (max(multiple, int(width * self.scale) // multiple * multiple),
                max(multiple, int(height * self.scale) // multiple * multiple))

    def fields(self) -> dict:
        """The A1111 infotext fields."""
        return {"Denoising strength": self.denoise, "Hires upscale": self.scale,
                "Hires steps": self.steps or None, "Hires upscaler": self.upscaler}

    def record(self) -> dict:
        """The settings for stablekit's JSON record (a model's file too, so a replay finds it again)."""
        record = {"scale": self.scale, "steps": self.steps, "denoise": self.denoise, "upscaler": self.upscaler}
        return {**record, "upscaler_path": self.upscaler_path} if self.upscaler_path else record

    @classmethod
    def from_fields(cls, fields: dict) -> "HiresFix | None":
        """From parsed A1111 text (None without `Hires upscale`). Only a scale is read: a PNG made with
        `Hires resize` (a fixed target size) is refused in one line."""
        if "Hires resize-1" in fields and "Hires upscale" not in fields:
            raise StablekitError("the PNG's hires fix resized to a fixed size (Hires resize); stablekit takes a "
                                 "scale: give --hires-scale X")
        if "Hires upscale" not in fields:
            return None
        try:
            return cls(scale=float(fields["Hires upscale"]), steps=int(float(fields.get("Hires steps", 0))),
                       denoise=float(fields.get("Denoising strength", 0.7)),
                       upscaler=_a1111_none(str(fields.get("Hires upscaler", "Latent"))))._checked()
        except ValueError as exc:
            raise StablekitError(f"the PNG's hires fix fields are not numbers: {exc}") from None

    @classmethod
    def from_record(cls, record: dict | None) -> "HiresFix | None":
        if not record:
            return None
        keys = ("scale", "steps", "denoise", "upscaler", "upscaler_path")
        return cls(**{k: record[k] for k in keys if k in record})._checked()


def _a1111_none(name: str) -> str:
    """A1111's upscaler "None" resizes with Lanczos (images.resize_image)."""
    return "Lanczos" if name.strip() == "None" else name


def upscale_latents(latents: Tensor, width: int, height: int, upscaler: str, factor: int = 8) -> Tensor:
    """Latents resized to width x height pixels by an A1111 "Latent ..." mode."""
    mode, antialias = LATENT_MODES[upscaler]
    size = (height // factor, width // factor)
    return torch.nn.functional.interpolate(latents.float(), size=size, mode=mode, antialias=antialias).to(latents.dtype)


def upscale_images(pixels: np.ndarray, width: int, height: int, upscaler: str, model=None) -> np.ndarray:
    """Float images [B, H, W, 3] in [0, 1] -> 8-bit, resized with PIL (or upscaled by `model` as
    A1111 does, generate/upscale_models.py), back to float [B, h, w, 3]."""
    from stablekit.generate.upscale_models import upscale_with_model

    out = []
    for a in (pixels * 255).round().astype(np.uint8):
        image = Image.fromarray(a)
        if model is not None:
            image = upscale_with_model(model, image, width, height)
        else:
            image = image.resize((width, height), IMAGE_UPSCALERS[upscaler])
        out.append(np.asarray(image, dtype=np.float32) / 255.0)
    return np.stack(out)


@dataclass
class SecondPass:
    """What the second pass needs, made once per run: its size, sigmas and conditioning."""

    hires: HiresFix
    width: int
    height: int
    sigmas: Tensor
    conditioning: object  # StepConditioning at the target size

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def plan(pipe, params, sampling, hires: HiresFix, prompt, negative) -> SecondPass:
    """The second pass of a run with these settings (params: the first pass's GenerationParams)."""
    from stablekit.generate.steps import StepConditioning, img2img_schedule, sdxl_time_ids

    hires = hires.validate()
    c = pipe.components
    width, height = hires.target(params.width, params.height, c.vae_scale_factor)
    steps = hires.steps or params.steps
    # A1111 always passes the hires step count to setup_img2img_steps, which then runs exactly that
    # many steps (the img2img_fix_steps rule), whatever the img2img option says.
    sigmas = img2img_schedule(sampling, pipe.denoiser, steps, hires.denoise, fix_steps=True)
    # prompt editing in the second pass: A1111's hires timeline (whole-number steps shift by the first
    # pass's steps, fractions by 1.0; prompts/schedule.py), over the second pass's steps
    cond, uncond = pipe.prompts.encode_pair_schedule(prompt, negative, params.steps, params.clip_skip, hires_steps=steps)
    time_ids = sdxl_time_ids(width, height, cond[0][1].hidden_states.device, c.dtype) if c.is_sdxl else None
    return SecondPass(hires, width, height, sigmas, StepConditioning(cond, uncond, float(params.cfg), time_ids))


def second_pass(components, denoiser, second: SecondPass, latents: Tensor, sampling, noise, callback=None) -> Tensor:
    """Upscale the first pass's latents and denoise them along the second pass's sigmas."""
    from stablekit.generate.steps import decode, encode_image, sample

    upscaler = second.hires.upscaler
    if upscaler in LATENT_MODES:
        start = upscale_latents(latents, second.width, second.height, upscaler, components.vae_scale_factor)
    else:
        model = None
        if second.hires.upscaler_path:
            from stablekit.generate.upscale_models import load_upscaler

            model = load_upscaler(second.hires.upscaler_path, components.device)
        pixels = upscale_images(decode(components, latents), second.width, second.height, upscaler, model)
        start = encode_image(components, pixels)
    return sample(denoiser, start, second.sigmas, sampling, second.conditioning, noise, callback)
