"""Edit tasks on rendered images for the img2img and inpainting checks: which colour or shape
to ask for instead, and a mask over the object. Shared by benchmarks/ and the tests."""
from __future__ import annotations

import numpy as np

from stablekit.shapes.render import IMAGE_SIZE, ShapeSpec, render_alpha


def other_color(spec: ShapeSpec, choices=("blue", "yellow", "red", "white")) -> str:
    """The first of `choices` that is neither the object's nor the background's colour."""
    return next(c for c in choices if c not in (spec.color, spec.background))


def other_shape(spec: ShapeSpec, choices=("star", "circle", "square", "triangle")) -> str:
    return next(s for s in choices if s != spec.shape)


def object_box_mask(spec: ShapeSpec, margin: int = 4) -> np.ndarray:
    """[64, 64] float mask, 1 over the object's bounding box grown by `margin` px."""
    ys, xs = np.nonzero(render_alpha(spec) > 0.01)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    mask[max(0, ys.min() - margin):ys.max() + margin + 1, max(0, xs.min() - margin):xs.max() + margin + 1] = 1
    return mask
