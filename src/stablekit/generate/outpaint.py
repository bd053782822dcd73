"""Outpainting: the image padded on its sides, the new border as the inpainting mask.

Pads are rounded up to a multiple of 8 pixels (whole latents), the new border is filled by
repeating the image's edge pixels (a start the sampler reworks at the default strength 1.0), and
the mask is white exactly there, so inpainting (any model, 9-channel inpainting models included)
paints the border while the original pixels stay unchanged exactly.
"""
from __future__ import annotations

import numpy as np

from stablekit.errors import StablekitError


def parse_pads(text) -> tuple[int, int, int, int]:
    """"LEFT,TOP,RIGHT,BOTTOM" (pixels, >= 0) or a 4-sequence -> a tuple; anything else is one line."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or min(values) < 0 or max(values) == 0:
        raise StablekitError(f"outpaint pads must be LEFT,TOP,RIGHT,BOTTOM in pixels, >= 0 and not all 0 (got {text!r}); "
                             "e.g. 64,0,64,0")
    return tuple(values)


def outpaint_inputs(image, pads, multiple: int = 8):
    """(InitImage padded, InpaintMask of the border) for an image (path, PIL or InitImage) and pads."""
    from stablekit.generate.steps import InitImage, InpaintMask

    init = InitImage.load(image, multiple=multiple)
    left, top, right, bottom = [-(-p // multiple) * multiple for p in parse_pads(pads)]
    padded = np.pad(init.rgb, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.ones(padded.shape[:2], np.float32)
    mask[top:top + init.height, left:left + init.width] = 0
    return InitImage(padded), InpaintMask(mask)
