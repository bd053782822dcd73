"""FID and KID on feature arrays, and clean-fid's image conventions.

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature sets,
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), with S the unbiased covariance (np.cov, as
  clean-fid and torch-fidelity compute it).
- KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (torch-fidelity's defaults: 100
  subsets of 1,000, seed 2020; the subset shrinks to the smaller set when fewer images exist, as
  clean-fid does).
- Images (clean-fid's "clean" mode, Parmar et al. 2022): generated floats are quantised to uint8
  exactly as saving a PNG would, then each channel is resized on its own as a float image with
  PIL's bicubic filter (which antialiases, unlike torch's interpolate) and clipped to [0, 255].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stablekit.errors import StablekitError


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set (what FID compares), plus how many rows made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance (float64) of features [n, d]; needs n >= 2."""
    f = _as_features(features, "features")
    return FeatureStats(f.mean(0), np.atleast_2d(np.cov(f, rowvar=False)), len(f))


def _as_features(features, what: str) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise StablekitError(f"{what} must be a [n, d] array with n >= 2 (got shape {f.shape}); "
                             f"evaluate at least 2 images")
    if not np.isfinite(f).all():
        raise StablekitError(f"{what} contain NaN or inf; check the images and the feature extractor")
    return f


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off
    eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two fitted Gaussians.

    tr((S1 S2)^1/2) is computed as the trace of (S1^1/2 S2 S1^1/2)^1/2, which has the same
    eigenvalues as S1 S2 but is symmetric, so it needs no complex sqrtm and no epsilon fudge even
    when the covariances are singular (fewer images than feature dimensions).
    """
    if a.mu.shape != b.mu.shape:
        raise StablekitError(f"feature sizes differ ({a.mu.shape[0]} vs {b.mu.shape[0]}); "
                             f"use the same feature extractor for both sets")
    diff = a.mu - b.mu
    root = _sqrt_psd(a.sigma)
    inner = np.linalg.eigvalsh((root @ b.sigma @ root + (root @ b.sigma @ root).T) / 2)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    value = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean
    return float(max(value, 0.0))  # a tiny negative is round-off; FID is a squared distance


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets [n, d] and [m, d]."""
    return frechet_distance(feature_stats(features_a), feature_stats(features_b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel: (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD of two equal-size samples with the polynomial kernel: the diagonals
    of K_xx and K_yy are left out, K_xy is averaged over all m^2 pairs."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / (m * m))


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> tuple[float, float]:
    """KID (mean, std over subsets). Subsets are drawn without replacement from each set with a
    seeded generator, so the figure is reproducible."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise StablekitError(f"feature sizes differ ({a.shape[1]} vs {b.shape[1]}); "
                             f"use the same feature extractor for both sets")
    m = min(subset_size, len(a), len(b))
    rng = np.random.RandomState(seed)
    values = np.array([mmd2_unbiased(a[rng.choice(len(a), m, replace=False)],
                                     b[rng.choice(len(b), m, replace=False)]) for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def quantize(images) -> np.ndarray:
    """Float images in [0, 1] ([n, H, W, 3] or a list) -> uint8 as a PNG would store them
    (round to nearest, as Pipeline's PIL output does); uint8 input is returned unchanged."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)


def clean_resize(image: np.ndarray, size: int = 299) -> np.ndarray:
    """One uint8 [H, W, 3] image -> float32 [size, size, 3] in [0, 255], clean-fid's "clean"
    resize: every channel resized as a 32-bit float image with PIL bicubic, then clipped."""
    if image.shape[:2] == (size, size):
        return image.astype(np.float32)
    channels = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                           .resize((size, size), resample=Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.float32)


def load_image_folder(folder, limit: int | None = None) -> np.ndarray:
    """Every image file in `folder` (sorted by name; PNG/JPEG/WebP/BMP) as uint8 RGB [n, H, W, 3].
    All images must share one size (resize happens per metric, not here)."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        raise StablekitError(f"reference folder {folder} does not exist; pass --reference DIR with images")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})[:limit]
    if len(files) < 2:
        raise StablekitError(f"{folder} holds {len(files)} images; FID/KID need at least 2 reference images")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise StablekitError(f"cannot read reference image {p}: {exc}; remove or replace it") from None
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise StablekitError(f"reference images in {folder} have different sizes {sorted(sizes)[:3]}; "
                             f"resize them to one size first (stablekit data prepare)")
    return np.stack(arrays)
