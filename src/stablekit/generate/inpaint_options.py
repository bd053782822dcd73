"""A1111's inpainting options: mask blur, invert, masked content, "only masked" with padding.

Semantics of A1111 (modules/processing.py, StableDiffusionProcessingImg2Img.init, v1.10):
  - the mask is made binary (grey > half = repaint), inverted with `invert` ("Mask mode: Inpaint
    not masked"), then blurred by a Gaussian of sigma `mask_blur` along x and then y (kernel
    2 * int(2.5 * sigma + 0.5) + 1, OpenCV) -> "Mask blur: N";
  - the latent mask is the blurred mask resized to the latent size and rounded to 0/1;
  - the paste-back (overlay) alpha is min(1, 2 x blurred) for the whole picture, the blurred mask
    itself with "only masked": pixels where it is 0 are the original pixels, exactly;
  - masked content: "fill" (masked pixels replaced by blurred colours of their surroundings before
    encoding), "original" (nothing), "latent noise" (fill, then the latents under the mask replaced
    by seeded Gaussian noise), "latent nothing" (fill, then those latents set to 0); the text
    records "Masked content" for all but "original";
  - "only masked" (Inpaint area: Only masked; Masked area padding: N): the bounding box of the
    mask grown by the padding and then to the output's aspect ratio, cropped, inpainted at the
    output size, resized back and pasted into the untouched full image through the blurred mask.

`noise_mask` is for 9-channel inpainting models (generate/inpaint_unet.py): ComfyUI's
InpaintModelConditioning "noise_mask" switch. On, the x0 prediction outside the mask is reset to
the image's latents after every step, as for plain models; A1111 always does this
(sd_samplers_cfg_denoiser: `denoised = init_latent * mask + nmask * denoised` whenever the job
has a mask). Off (the default) is diffusers' StableDiffusionInpaintPipeline, which leaves a
9-channel model's latents alone; stablekit's default output equals diffusers'. Plain models are
always blended, so the switch changes nothing for them. Written as "Noise mask: True".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from stablekit.errors import StablekitError
from stablekit.generate.steps import InitImage, InpaintMask, _open_image

FILLS = ("fill", "original", "latent noise", "latent nothing")


def fill_name(name: str) -> str:
    """The A1111 name for a masked-content choice (latent-noise and latent_noise accepted)."""
    canonical = str(name).strip().lower().replace("-", " ").replace("_", " ")
    if canonical not in FILLS:
        raise StablekitError(f"unknown inpaint fill {name!r}; use one of: fill, original, latent-noise, latent-nothing")
    return canonical


@dataclass(frozen=True)
class SoftMask(InpaintMask):
    """An InpaintMask whose paste-back alpha (`repaint`, soft) and latent mask (`blurred`, rounded
    at latent size) differ, as in A1111 with a mask blur."""

    blurred: np.ndarray | None = None

    def latent(self, factor: int, device=None, dtype=torch.float32):
        h, w = self.blurred.shape
        small = Image.fromarray(np.rint(self.blurred * 255).astype(np.uint8)).resize((w // factor, h // factor),
                                                                                    Image.BICUBIC)
        rounded = np.around(np.asarray(small, dtype=np.float32) / 255.0)
        return torch.from_numpy(rounded)[None, None].to(device=device, dtype=dtype)


@dataclass(frozen=True)
class InpaintOptions:
    """A1111's inpainting settings (field names in comments). crop: set internally for the inner
    pass of "only masked" (the mask it gets is already inverted, blurred and cropped)."""

    mask_blur: int = 0  # Mask blur (A1111's UI default is 4; 0 keeps the hard mask)
    invert: bool = False  # Mask mode: Inpaint not masked
    fill: str = "original"  # Masked content: fill | original | latent noise | latent nothing
    only_masked: bool = False  # Inpaint area: Only masked
    padding: int = 32  # Masked area padding (only masked), pixels
    noise_mask: bool = False  # ComfyUI's noise_mask: blend a 9-channel model's latents as A1111 (docstring)
    crop: tuple | None = None

    def validate(self) -> "InpaintOptions":
        if not isinstance(self.mask_blur, int) or not 0 <= self.mask_blur <= 64:
            raise StablekitError(f"mask blur must be an integer from 0 to 64 (got {self.mask_blur!r})")
        if not isinstance(self.padding, int) or not 0 <= self.padding <= 256:
            raise StablekitError(f"only-masked padding must be an integer from 0 to 256 (got {self.padding!r})")
        if not isinstance(self.noise_mask, bool):
            raise StablekitError(f"noise_mask must be True or False (got {self.noise_mask!r})")
        return dataclasses.replace(self, fill=fill_name(self.fill))

    def fields(self) -> dict:
        """What A1111 writes into the parameters text for these settings."""
        out = {}
        if self.invert:
            out["Mask mode"] = "Inpaint not masked"
        if self.mask_blur:
            out["Mask blur"] = self.mask_blur
        if self.only_masked or self.crop:
            out.update({"Inpaint area": "Only masked", "Masked area padding": self.padding})
        if self.fill != "original":
            out["Masked content"] = self.fill
        if self.noise_mask:
            out["Noise mask"] = True
        return out

    def record(self) -> dict:
        return {"mask_blur": self.mask_blur, "invert": self.invert, "fill": self.fill,
                "only_masked": bool(self.only_masked or self.crop), "padding": self.padding,
                "noise_mask": self.noise_mask}

    # -- the steps ---------------------------------------------------------------------------
    def mask(self, source, width: int, height: int) -> InpaintMask:
        """The mask at the image size: binary, inverted, blurred (see the module docstring)."""
        if isinstance(source, SoftMask):
            return source
        if self.crop is not None:  # prepared by only_masked; alpha is the blurred mask itself
            blurred = _mask_array(source, width, height)
            return SoftMask(blurred, blurred=blurred)
        blurred = prepared_mask(source, width, height, self.invert, self.mask_blur)
        if not self.mask_blur:
            return InpaintMask(blurred)
        return SoftMask(np.clip(blurred * 2, 0, 1), blurred=blurred)

    def start_image(self, init: InitImage, mask: InpaintMask) -> InitImage:
        """The image to encode: masked pixels filled from the surroundings for every fill but original."""
        if self.fill == "original":
            return init
        source = mask.blurred if isinstance(mask, SoftMask) else mask.repaint
        return InitImage(fill_masked(init.rgb, source))

    def start_latents(self, latents: torch.Tensor, mask: InpaintMask, factor: int, seed: int) -> torch.Tensor:
        """latent noise / latent nothing: the latents under the (latent) mask replaced."""
        if self.fill not in ("latent noise", "latent nothing"):
            return latents
        m = mask.latent(factor, latents.device, latents.dtype)
        if self.fill == "latent nothing":
            return latents * (1 - m)
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(latents.shape[1:], generator=g, device="cpu").to(latents)  # CPU noise on every device
        return latents * (1 - m) + noise[None] * m


def _mask_array(source, width: int, height: int) -> np.ndarray:
    if isinstance(source, InpaintMask):
        source = source.repaint
    if isinstance(source, np.ndarray):
        data = source if source.dtype == np.uint8 else np.rint(np.clip(source, 0, 1) * 255).astype(np.uint8)
        source = Image.fromarray(data)
    image = _open_image(source, "L", "mask", "give a black-and-white PNG (white = repaint)")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def prepared_mask(source, width: int, height: int, invert: bool, blur: int) -> np.ndarray:
    """float [H, W] in [0, 1]: binary at half grey, inverted if asked, Gaussian-blurred (A1111's)."""
    import cv2

    binary = (_mask_array(source, width, height) > 0.5).astype(np.uint8) * 255
    if invert:
        binary = 255 - binary
    if blur:
        k = 2 * int(2.5 * blur + 0.5) + 1
        binary = cv2.GaussianBlur(binary, (k, 1), blur)
        binary = cv2.GaussianBlur(binary, (1, k), blur)
    return binary.astype(np.float32) / 255.0


def fill_masked(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A1111's masking.fill: masked pixels replaced by ever less blurred colours of the rest."""
    h, w = mask.shape
    keep = Image.fromarray(np.rint((1 - mask) * 255).astype(np.uint8))
    masked = Image.new("RGBa", (w, h))
    masked.paste(Image.fromarray(rgb).convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", (w, h))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return np.asarray(out.convert("RGB"), dtype=np.uint8)


def crop_region(mask: np.ndarray, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the mask's bounding box grown by `padding`, then to width:height (A1111's
    get_crop_region_v2 + expand_crop_region). A blank mask is a one-line error."""
    ys, xs = np.nonzero(mask > 0)
    if len(xs) == 0:
        raise StablekitError("the mask is blank, so there is nothing to inpaint with --only-masked; paint the "
                             "area to repaint white")
    ih, iw = mask.shape
    x1, y1 = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
    x2, y2 = min(int(xs.max()) + 1 + padding, iw), min(int(ys.max()) + 1 + padding, ih)
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), ih)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), iw)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, diff: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def only_masked(pipe, image, mask, prompt: str, strength: float, callback, output: str,
                options: InpaintOptions, settings: dict) -> list:
    """Inpaint only the mask's padded box at the output size and paste it back (module docstring)."""
    from stablekit.generate.steps import attach_metadata

    full = _full_image(image)
    blurred = prepared_mask(mask, full.width, full.height, options.invert, options.mask_blur)
    width = settings.pop("width", None) or full.width // 8 * 8
    height = settings.pop("height", None) or full.height // 8 * 8
    box = crop_region(blurred, options.padding, width, height)
    crop = InitImage(np.asarray(Image.fromarray(full.rgb).crop(box).resize((width, height), Image.LANCZOS)))
    small = Image.fromarray(np.rint(blurred * 255).astype(np.uint8)).crop(box).resize((width, height), Image.LANCZOS)
    inner = dataclasses.replace(options, only_masked=False, crop=box)
    made = pipe.inpaint(crop, np.asarray(small), prompt, strength, callback, output, inpaint_options=inner,
                        width=width, height=height, **settings)
    alpha = blurred[:, :, None]
    x1, y1, x2, y2 = box
    out = []
    for item in made:
        pixels = np.asarray(item, dtype=np.float32) / (1.0 if output == "np" else 255.0)
        patch = np.asarray(Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((x2 - x1, y2 - y1),
                                                                                           Image.LANCZOS))
        canvas = full.rgb.astype(np.float32).copy()
        canvas[y1:y2, x1:x2] = patch
        result = full.rgb * (1 - alpha) + canvas * alpha  # alpha 0: the original pixels, exactly
        if output == "np":
            out.append(result / 255.0)
            continue
        composed = Image.fromarray(np.rint(result).astype(np.uint8))
        out.append(attach_metadata(composed, item.info.get("parameters", ""), _record(item)))
    return out


def _full_image(image) -> InitImage:
    if isinstance(image, InitImage):
        return image
    if isinstance(image, np.ndarray):
        return InitImage(np.ascontiguousarray(image[..., :3], dtype=np.uint8))
    pil = _open_image(image, "RGB", "init image", "give a PNG/JPEG/WebP file")
    return InitImage(np.asarray(pil, dtype=np.uint8))


def _record(item) -> dict:
    import json

    try:
        return json.loads(item.info.get("stablekit", "{}"))
    except ValueError:
        return {}
