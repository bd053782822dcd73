"""The mask size rule, applied wherever a mask enters (Pipeline.inpaint, `generate --mask`, the job API).

A mask the init image's size is used as it is. One of the same aspect ratio (a mask drawn on a
preview, or at latent size) is resized to the image, with a one-line note. Any other mask is a
one-line error naming both sizes: resizing it would stretch the painted area off what it was drawn
around, silently. A1111 resizes any mask (its img2img "Just resize"), so the A1111-compatible
endpoint (serve/a1111) keeps doing that and never reaches this check with two sizes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from stablekit.errors import StablekitError

ASPECT_TOLERANCE = 0.01  # relative: 1% covers sizes rounded to multiples of 8 (e.g. 1000x750 vs 64x48)


def source_size(source) -> tuple[int, int] | None:
    """(width, height) of an image or mask given as a path, PIL image, [H, W(, C)] array, InitImage or
    InpaintMask; None when it cannot be read (the loader then raises its own one-line error)."""
    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, np.ndarray):
        return (int(source.shape[1]), int(source.shape[0])) if source.ndim >= 2 else None
    for field in ("rgb", "repaint"):  # InitImage, InpaintMask
        data = getattr(source, field, None)
        if isinstance(data, np.ndarray):
            return int(data.shape[1]), int(data.shape[0])
    try:
        with Image.open(source) as im:
            return im.size
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def mask_size_note(mask_size: tuple[int, int] | None, image_size: tuple[int, int] | None) -> str | None:
    """None when the sizes are equal (or unknown); the note to print when only the aspect ratio is the
    same; a StablekitError otherwise."""
    if mask_size is None or image_size is None or tuple(mask_size) == tuple(image_size):
        return None
    (mw, mh), (iw, ih) = mask_size, image_size
    if abs(mw / mh - iw / ih) <= ASPECT_TOLERANCE * (iw / ih):
        return f"the mask is {mw}x{mh} and the init image {iw}x{ih}: mask resized to the image (same aspect ratio)"
    raise StablekitError(f"the mask is {mw}x{mh} but the init image is {iw}x{ih} (another aspect ratio); give a mask "
                         f"of the image's size {iw}x{ih} (white = repaint), or one of its aspect ratio")


def check_mask_size(mask, image) -> str | None:
    """mask_size_note for a mask and an init image in any form Pipeline.inpaint takes."""
    return mask_size_note(source_size(mask), source_size(image))
