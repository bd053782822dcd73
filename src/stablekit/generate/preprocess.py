"""ControlNet preprocessors that need no downloaded weights, and A1111's control-map resizing.

Follows the A1111 extension sd-webui-controlnet (scripts/preprocessor/model_free_preprocessors.py,
legacy/processor.py, controlnet.py `detectmap_proc`): the image is scaled so its short side is the
processor resolution (default 512), processed, then fitted to the generation size by the unit's
resize mode. Names are the extension's module names, so the infotext reads back in A1111:
  none           the image as given (depth / pose / segmentation maps made elsewhere)
  canny          OpenCV Canny edges, thresholds A/B (default 100/200)
  invert         255 - image ("invert (from white bg & black line)": black lines on white -> white on black)
  threshold      binary: white where every channel exceeds threshold A (default 127); alias "binary"
  scribble_xdog  XDoG scribble, threshold A (default 32)
"""
from __future__ import annotations

import numpy as np

from stablekit.errors import StablekitError

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
# name -> (default threshold A, default threshold B); A1111's hidden sliders default to 0.5
PREPROCESSORS = {"none": (0.5, 0.5), "canny": (100, 200), "invert": (0.5, 0.5), "threshold": (127, 0.5),
                 "scribble_xdog": (32, 0.5)}
ALIASES = {"binary": "threshold", "invert (from white bg & black line)": "invert"}


def preprocessor_name(name: str) -> str:
    """The canonical module name of a preprocessor name or alias; unknown names are one line."""
    key = (name or "none").strip()
    key = ALIASES.get(key.lower(), key.lower())
    if key not in PREPROCESSORS:
        raise StablekitError(f"unknown ControlNet preprocessor {name!r}; use one of: "
                             f"{', '.join([*PREPROCESSORS, *ALIASES][:6])} (others need downloaded weights: "
                             "preprocess the image elsewhere and give it with preprocessor none)")
    return key


def _cv2():
    import cv2

    return cv2


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def _resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Short side -> resolution (cubic up, area down), as the extension's resize_image_with_pad
    (its padding to a multiple of 64 is removed again afterwards, so it is left out)."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    size = (int(np.round(w * k)), int(np.round(h * k)))
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def preprocess(image: np.ndarray, name: str, resolution: int = 512, threshold_a: float | None = None,
               threshold_b: float | None = None) -> np.ndarray:
    """8-bit RGB [H, W, 3] -> the control map (8-bit RGB) of preprocessor `name`."""
    cv2 = _cv2()
    name = preprocessor_name(name)
    a_default, b_default = PREPROCESSORS[name]
    a = a_default if threshold_a is None else threshold_a
    b = b_default if threshold_b is None else threshold_b
    image = _rgb(image)
    if name == "none":
        return image
    if name == "invert":
        return 255 - image
    image = _resize_short_side(image, resolution)
    if name == "canny":
        return cv2.cvtColor(cv2.Canny(image, int(a), int(b)), cv2.COLOR_GRAY2RGB)
    if name == "threshold":
        out = np.zeros_like(image)
        out[image.min(axis=2) > a] = 255
        return out
    g1 = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)  # scribble_xdog
    g2 = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(image)
    out[2 * (255 - dog) > a] = 255
    return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The extension's high_quality_resize, simplified: nearest for maps of few colours (segmentation,
    binary edges, which must stay crisp), area when shrinking, cubic when growing; a binary map
    (two colours, black and white) is thresholded back to 0/255 with Otsu."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    binary = colours == 2 and image.min() < 16 and image.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < w * h:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if binary:
        grey = out.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out = np.stack([grey] * 3, axis=2)
    return out


def fit(image: np.ndarray, width: int, height: int, mode: str = "Crop and Resize") -> np.ndarray:
    """A control map fitted to width x height by A1111's resize mode: "Just Resize" (stretch),
    "Crop and Resize" (cover, centre crop; the extension's default) or "Resize and Fill" (fit inside,
    the rest filled with the median border colour)."""
    if mode not in RESIZE_MODES:
        raise StablekitError(f"unknown resize mode {mode!r}; use one of: {', '.join(RESIZE_MODES)}")
    image = _rgb(image)
    if mode == "Just Resize":
        return _resize(image, width, height)
    h, w = image.shape[:2]
    if mode == "Resize and Fill":
        k = min(height / h, width / w)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
        out = np.tile(np.median(border, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        small = _resize(image, int(np.round(w * k)), int(np.round(h * k)))
        top, left = max(0, (height - small.shape[0]) // 2), max(0, (width - small.shape[1]) // 2)
        out[top:top + small.shape[0], left:left + small.shape[1]] = small[:height, :width]
        return out
    k = max(height / h, width / w)
    big = _resize(image, int(np.round(w * k)), int(np.round(h * k)))
    top, left = max(0, (big.shape[0] - height) // 2), max(0, (big.shape[1] - width) // 2)
    return np.ascontiguousarray(big[top:top + height, left:left + width])
