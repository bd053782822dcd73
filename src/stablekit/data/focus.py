"""Where to crop: faces (OpenCV's bundled Haar cascade) and a focus point (spectral residual).

Both work offline with nothing downloaded: the cascade XML ships inside opencv-python-headless
(cv2.data.haarcascades; OpenCV 5 dropped it, hence the <5 pin), and the saliency map is a few
NumPy FFTs. The lecture's advice is why faces matter: a face that covers few pixels is what the
VAE distorts, so a face crop zooms until the face fills a good part of the frame.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image

from stablekit.errors import StablekitError

DETECT_SIDE = 800  # detect on a copy this long: Haar cost grows with pixels, accuracy does not
SALIENCY_SIDE = 64  # Hou & Zhang compute the spectral residual at about 64 px


@lru_cache(maxsize=1)
def _cascade():
    try:
        import cv2
    except ImportError:
        raise StablekitError("face crops need OpenCV; pip install 'opencv-python-headless<5'") from None
    root = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = os.path.join(root, "haarcascade_frontalface_default.xml")
    cascade = cv2.CascadeClassifier(path) if hasattr(cv2, "CascadeClassifier") else None
    if cascade is None or cascade.empty():
        raise StablekitError(f"OpenCV {cv2.__version__} has no bundled Haar face cascade at {path}; "
                             f"install opencv-python-headless 4.x (OpenCV 5 removed it)")
    return cv2, cascade


def find_faces(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (left, top, width, height) in `image` pixels, largest first."""
    cv2, cascade = _cascade()
    scale = min(1.0, DETECT_SIDE / max(image.size))
    small = image.convert("L")
    if scale < 1.0:
        small = small.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    gray = cv2.equalizeHist(np.asarray(small))
    # minNeighbors 5 and a 24 px floor are OpenCV's usual settings against false positives.
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def _box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """k x k mean filter with edge padding (the 'local average' of the log spectrum)."""
    pad = k // 2
    p = np.pad(a, pad, mode="edge")
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = a.shape
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


def _gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    p = np.pad(a, radius, mode="edge")
    p = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, p)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, p)


def saliency_map(image: Image.Image) -> np.ndarray:
    """Spectral residual saliency (Hou & Zhang, CVPR 2007) on a ~64 px grayscale copy:
    the log amplitude spectrum minus its 3x3 local mean, back-transformed with the original
    phase, squared and smoothed. Returns a float map in [0, 1] of the small copy's shape."""
    scale = SALIENCY_SIDE / max(image.size)
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    gray = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    spectrum = np.fft.fft2(gray)
    log_amp = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amp - _box_mean(log_amp, 3)
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = _gaussian(sal, sigma=max(1.0, SALIENCY_SIDE / 24))  # the paper's 8 px at 64 px width
    lo, hi = sal.min(), sal.max()
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)


def focus_point(image: Image.Image) -> tuple[float, float]:
    """The saliency-weighted centre of the most salient pixels (top 10%), in image pixels;
    the image centre for a flat image."""
    sal = saliency_map(image)
    if not sal.any():
        return image.width / 2, image.height / 2
    weights = np.where(sal >= np.quantile(sal, 0.9), sal, 0.0)
    ys, xs = np.mgrid[0:sal.shape[0], 0:sal.shape[1]]
    cx = (xs * weights).sum() / weights.sum() + 0.5
    cy = (ys * weights).sum() / weights.sum() + 0.5
    return cx * image.width / sal.shape[1], cy * image.height / sal.shape[0]
