"""Image nodes: LoadImage, LoadImageMask, ImageScale, ImageScaleBy, ImageUpscaleWithModel, SaveImage,
PreviewImage (ComfyUI names, inputs, outputs and file naming).

IMAGE is [B, H, W, C] float32 in [0, 1] and MASK [B, H, W] (ComfyUI's layouts). Saved PNGs carry
ComfyUI's "prompt" and "workflow" text chunks (metadata.comfy) and, as ComfyUI, 8-bit values
by truncation (255 * x clipped, then cast), where `stablekit generate` rounds.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from stablekit.errors import StablekitError
from stablekit.nodes.latent import CROP, upscale
from stablekit.nodes.registry import register

IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _open(ctx, name: str) -> Image.Image:
    path = ctx.folders.resolve("input", name)
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError) as exc:
        raise StablekitError(f"cannot read input image {name!r}: {exc}; give a PNG/JPEG/WebP file") from None


def _file_hash(folders, name) -> str:
    try:
        return hashlib.sha256(folders.resolve("input", name).read_bytes()).hexdigest()
    except (StablekitError, OSError, TypeError):
        return ""


def _input_list(folders) -> list[str]:
    return folders.list("input") if folders else []


@register
class LoadImage:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"image": (_input_list(folders), {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def IS_CHANGED(cls, folders, image=None, **_):
        return _file_hash(folders, image)

    def load_image(self, image):
        im = _open(self.ctx, image)
        pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
        if "A" in im.getbands():
            mask = 1.0 - torch.from_numpy(np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0)
        else:
            mask = torch.zeros(64, 64)  # ComfyUI's "no mask"
        return pixels, mask[None]


@register
class LoadImageMask:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"image": (_input_list(folders), {"image_upload": True}),
                             "channel": (["alpha", "red", "green", "blue"],)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CATEGORY = "mask"

    @classmethod
    def IS_CHANGED(cls, folders, image=None, **_):
        return _file_hash(folders, image)

    def load_image(self, image, channel):
        im = _open(self.ctx, image)
        if im.getbands() != ("R", "G", "B", "A"):
            im = im.convert("RGBA")
        band = channel[0].upper()
        mask = torch.from_numpy(np.asarray(im.getchannel(band), dtype=np.float32) / 255.0)
        return ((1.0 - mask if band == "A" else mask)[None],)


@register
class ImageScale:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        size = {"default": 512, "min": 0, "max": 16384, "step": 1}
        return {"required": {"image": ("IMAGE",), "upscale_method": (IMAGE_METHODS,), "width": ("INT", size),
                             "height": ("INT", size), "crop": (CROP,)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1:3]
        width = width or max(1, round(w * height / h))
        height = height or max(1, round(h * width / w))
        return (upscale(image.movedim(-1, 1), width, height, upscale_method, crop).movedim(1, -1),)


@register
class ImageScaleBy:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"image": ("IMAGE",), "upscale_method": (IMAGE_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, scale_by):
        w, h = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (upscale(image.movedim(-1, 1), w, h, upscale_method, "disabled").movedim(1, -1),)


@register
class ImageUpscaleWithModel:
    """The image upscaled by an UPSCALE_MODEL's scale as ComfyUI runs it (upscale_models.upscale_tensor)."""

    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, upscale_model, image):
        from stablekit.generate.upscale_models import upscale_tensor

        return (upscale_tensor(upscale_model, image),)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """ComfyUI's conversion: clip(255 * x, 0, 255) cast to uint8 (truncating)."""
    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def save_path(folder: Path, prefix: str) -> tuple[Path, str, str, int]:
    """(folder, file stem, subfolder, next counter) as ComfyUI's get_save_image_path: the prefix
    may name a subfolder; numbering continues after the highest `stem_NNNNN_` file there."""
    folder = Path(folder)
    sub, stem = os.path.split(os.path.normpath(prefix))
    target = (folder / sub).resolve()
    if not stem or (target != folder.resolve() and folder.resolve() not in target.parents):
        raise StablekitError(f"filename_prefix {prefix!r} leaves the output folder; give a name such as 'ComfyUI'")
    pattern = re.compile(re.escape(stem) + r"_(\d+)_")
    counters = [int(m.group(1)) for p in (target.iterdir() if target.is_dir() else []) if (m := pattern.match(p.name))]
    return target, stem, sub, max(counters, default=0) + 1


def write_pngs(images: torch.Tensor, folder: Path, prefix: str, kind: str, prompt, extra_pnginfo,
               compress_level: int) -> list[dict]:
    """Write each image as `stem_NNNNN_.png` with ComfyUI's chunks; ComfyUI's ui entries."""
    from stablekit.metadata.comfy import comfy_pnginfo

    target, stem, sub, counter = save_path(folder, prefix)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StablekitError(f"cannot create {target}: {exc.strerror}; give a writable output folder") from None
    results = []
    for batch_number, image in enumerate(images):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        tmp = target / f".{name}.{os.getpid()}.tmp"
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG", pnginfo=comfy_pnginfo(prompt, extra_pnginfo),
                                              compress_level=compress_level)
        os.replace(tmp, target / name)
        results.append({"filename": name, "subfolder": sub, "type": kind})
        counter += 1
    return results


@register
class SaveImage:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        results = write_pngs(images, self.ctx.folders.output, filename_prefix, "output", prompt, extra_pnginfo, 4)
        return {"ui": {"images": results}}


@register
class PreviewImage:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, prompt=None, extra_pnginfo=None):
        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        results = write_pngs(images, self.ctx.folders.temp_dir(), prefix, "temp", prompt, extra_pnginfo, 1)
        return {"ui": {"images": results}}
