"""One source image -> one training-ready RGB image: decoding, orientation, matte, crop, resize.

Decoding covers what collected folders hold: EXIF orientation (phones), alpha composited on a
chosen matte (transparent PNG/WebP), palette and CMYK images (converted through their ICC profile
when one is embedded), 16-bit and 32-bit grayscale (scaled, where Pillow's convert("L") clips at
255), and animated GIF/WebP/APNG (first frame). The geometry follows kohya sd-scripts: the
square mode crops to resolution x resolution; the bucket mode picks kohya's bucket
(stablekit.data.buckets), scales to cover it and crops, so kohya and stablekit's loader use the
file without resizing again.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageColor, ImageOps

from stablekit.errors import StablekitError

# Modes Pillow gives images with an alpha channel (premultiplied ones included).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def parse_matte(color: str) -> tuple[int, int, int]:
    """A matte colour from a name ("white"), hex ("#808080") or "r,g,b" -> an RGB triple."""
    text = color.strip()
    try:
        if "," in text:
            rgb = tuple(int(v) for v in text.split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
            return rgb  # type: ignore[return-value]
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise StablekitError(f"unknown matte colour {color!r}; give a name (white), "
                             f"hex (#ffffff) or r,g,b (255,255,255)") from None


def to_rgb(image: Image.Image, matte: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow image -> 8-bit RGB: first frame, EXIF orientation applied, alpha on `matte`."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    with warnings.catch_warnings():  # a malformed EXIF block is not worth a skip
        warnings.simplefilter("ignore")
        if image.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even when nothing turns
            image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    elif mode == "CMYK":
        image = _icc_to_srgb(image)
    elif mode == "1":
        image = image.convert("L")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, matte + (255,))
        image = Image.alpha_composite(base, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    # 16-bit PNG/TIFF grayscale: scale the full range to 8 bits instead of clipping at 255.
    arr = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    else:
        top = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _icc_to_srgb(image: Image.Image) -> Image.Image:
    # CMYK from print workflows carries an ICC profile; Pillow's plain convert ignores it.
    profile = image.info.get("icc_profile")
    if profile:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to the naive conversion below
    return image.convert("RGB")


# --- geometry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """How to cut one image: the box (l, t, r, b) in source pixels and the output size."""
    box: tuple[float, float, float, float]
    size: tuple[int, int]


def cover_box(width: int, height: int, target: tuple[int, int], center: tuple[float, float],
              zoom_side: float | None = None) -> tuple[float, float, float, float]:
    """The largest box of the target's aspect ratio that fits the image (what kohya's scale-to-
    cover then crop keeps), centred as near `center` as the image allows. `zoom_side` asks for
    a smaller box whose shorter side is that many source pixels (face crops)."""
    tw, th = target
    scale = max(tw / width, th / height)
    bw, bh = tw / scale, th / scale
    if zoom_side is not None and zoom_side < min(bw, bh):
        shrink = zoom_side / min(bw, bh)
        bw, bh = bw * shrink, bh * shrink
    left = min(max(center[0] - bw / 2, 0.0), width - bw)
    top = min(max(center[1] - bh / 2, 0.0), height - bh)
    return left, top, left + bw, top + bh


def cut(image: Image.Image, geometry: Geometry) -> Image.Image:
    """Crop and resize in one Lanczos pass (Pillow's box= avoids an intermediate copy)."""
    if geometry.box == (0, 0, image.width, image.height) and geometry.size == image.size:
        return image
    return image.resize(geometry.size, Image.Resampling.LANCZOS, box=geometry.box)
