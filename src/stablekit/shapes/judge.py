"""The judge: reads a 64x64 shapes-world image and says what it shows.

Classical measurements for everything but the shape:
- background: per-channel median of the border pixels -> nearest color of the palette + teal;
- object: pixels far from the background, largest 8-connected component, holes filled;
- color: median of the component's interior -> nearest palette color (+ teal);
- alpha: each pixel's projection on the background -> object color line (undoes anti-aliasing);
- size: largest extent (Feret diameter) of the filled object, split between small and large;
- position: alpha-weighted centroid -> nearest of the 5 positions;
- hollow: share of the filled object that is enclosed background.
The shape comes from a small softmax classifier over the filled alpha resampled on a grid
centered at the centroid and scaled by sqrt(area) (so it sees the silhouette, whatever its size
and place). It is trained only on rendered images with blur, noise and color-shift augmentation
(`train_shape_classifier`), and its weights ship as judge_weights.safetensors.

The judge abstains rather than guesses. A silhouette gets shape None ("unrecognised") when the
classifier's top probability is below SHAPE_THRESHOLD, or when it does not fit the template of
the class it was given (soft IoU with the ideal silhouette of that shape, best of 5 rotations,
below FIT_THRESHOLD): a softmax is confident about anything far from its training data (an
ellipse reads "star" at 0.94), the fit is not. Both thresholds are calibrated on held-out
renders passed through the embedded autoencoder, the best a latent model's image can be
(`python -m stablekit.shapes.judge_train --calibrate`). An object whose colour reads as the background's, or no
object at all, gets None for every object attribute. `abstained` says why, or is None.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stablekit.errors import StablekitError
from stablekit.shapes.render import ALL_COLORS, ALL_SHAPES, IMAGE_SIZE, POSITIONS

WEIGHTS_PATH = Path(__file__).with_name("judge_weights.safetensors")
GRID = 24  # resampled silhouette side
WINDOW = 1.15  # half-width of the resampling window, in units of sqrt(area)
OBJECT_DISTANCE = 40.0  # RGB distance from the background that marks object pixels
SIZE_THRESHOLD = 23.0  # px of Feret diameter: small objects reach <= 18, large ones >= 26
HOLLOW_THRESHOLD = 0.05  # enclosed share: filled shapes 0, thinnest outline (star) about 0.13
# Shape confidence below which the judge says "unrecognised" (see judge_train.calibrate_threshold).
# Each is the 1% quantile of the correct reads of 2,000 renders through the embedded autoencoder
# (judge_train.calibrate_thresholds), so together they keep >= 98% of those reads.
SHAPE_THRESHOLD = 0.542  # classifier probability of the top class
FIT_THRESHOLD = 0.67  # soft IoU of the silhouette with its class's template
TEMPLATE_ROTATIONS = (-10.0, -5.0, 0.0, 5.0, 10.0)  # the renderer's rotation jitter
OBJECT_ATTRIBUTES = ("shape", "color", "size", "position", "hollow")

_COLOR_NAMES = list(ALL_COLORS)
_COLOR_RGB = np.asarray([ALL_COLORS[c] for c in _COLOR_NAMES], dtype=np.float32)
_POS_NAMES = list(POSITIONS)
_POS_XY = np.asarray([POSITIONS[p] for p in _POS_NAMES], dtype=np.float32)


def as_array(images) -> np.ndarray:
    """Images (PIL, uint8 arrays, a list of either, or one [n,64,64,3] array) -> uint8 [n,64,64,3]."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        arr = images
    else:
        if not isinstance(images, (list, tuple)):
            images = [images]
        arr = np.stack([_one_array(im) for im in images]) if images else np.zeros((0, 64, 64, 3))
    if arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise StablekitError(f"the judge reads 64x64 RGB images, got shape {arr.shape[1:]}; "
                             f"generate or resize to 64x64")
    return arr.astype(np.uint8, copy=False)


def _one_array(image) -> np.ndarray:
    if hasattr(image, "convert"):  # PIL image
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise StablekitError(f"the judge reads 64x64 images, got {image.size[0]}x{image.size[1]}; "
                                 f"generate or resize to 64x64")
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image)


def _nearest_color(rgb: np.ndarray) -> np.ndarray:
    d = ((rgb[:, None, :] - _COLOR_RGB[None]) ** 2).sum(-1)
    return d.argmin(1)


def _flood(seed: np.ndarray, allowed: np.ndarray, eight: bool) -> np.ndarray:
    """Pixels of `allowed` connected to `seed` ([B,H,W] bool), by repeated dilation."""
    reach = seed & allowed
    while True:
        p = np.pad(reach, ((0, 0), (1, 1), (1, 1)))
        if eight:
            rows = p[:, :-2] | p[:, 1:-1] | p[:, 2:]  # [B,H,W+2]
            grown = rows[:, :, :-2] | rows[:, :, 1:-1] | rows[:, :, 2:]
        else:
            grown = (p[:, 1:-1, 1:-1] | p[:, :-2, 1:-1] | p[:, 2:, 1:-1]
                     | p[:, 1:-1, :-2] | p[:, 1:-1, 2:])
        grown &= allowed
        if np.array_equal(grown, reach):
            return reach
        reach = grown


def _box_density(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Count of mask pixels in the (2r+1)^2 window around each pixel (summed-area table)."""
    c = np.pad(mask.astype(np.int32), ((0, 0), (r + 1, r), (r + 1, r))).cumsum(1).cumsum(2)
    k = 2 * r + 1
    return c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of each mask in a [B,H,W] bool batch.

    Floods from the densest pixel first (almost always inside the main object), and only images
    whose leftover pixels could still form a larger part get another round.
    """
    b = len(mask)
    remaining = mask.copy()
    best = np.zeros_like(mask)
    best_area = np.zeros(b, dtype=np.int64)
    todo = np.flatnonzero(remaining.reshape(b, -1).any(1))
    while todo.size:
        rem = remaining[todo]
        dens = np.where(rem, _box_density(rem), -1).reshape(len(todo), -1)
        seed = np.zeros_like(rem).reshape(len(todo), -1)
        seed[np.arange(len(todo)), dens.argmax(1)] = True
        comp = _flood(seed.reshape(rem.shape), rem, eight=True)
        area = comp.reshape(len(todo), -1).sum(1)
        better = area > best_area[todo]
        best[todo[better]] = comp[better]
        best_area[todo[better]] = area[better]
        remaining[todo] = rem & ~comp
        left = remaining[todo].reshape(len(todo), -1).sum(1)
        todo = todo[left > best_area[todo]]
    return best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` plus the background pixels not 4-connected to the frame ([B,H,W] bool)."""
    frame = np.zeros_like(mask)
    frame[:, 0] = frame[:, -1] = True
    frame[:, :, 0] = frame[:, :, -1] = True
    return ~_flood(frame, ~mask, eight=False)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return mask | p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]


def _object_color(img: np.ndarray, dist: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Median RGB of the quarter of the object's pixels least like the background.

    Those are the interior of a filled shape and the middle of an outline's stroke, so edge
    blending (or blur) does not pull the color towards the background.
    """
    d = dist[comp]
    k = max(4, len(d) // 4)
    top = np.argpartition(-d, min(k, len(d)) - 1)[:k]
    return np.median(img[comp][top], axis=0)


def _resample(alpha: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Bilinear samples of alpha [B,H,W] on a GRIDxGRID grid centered at (cx, cy), half-width half."""
    b, h, w = alpha.shape
    t = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID * 2 - 1
    xs = cx[:, None] + half[:, None] * t[None]  # continuous coords
    ys = cy[:, None] + half[:, None] * t[None]
    # pixel (i, j) has its center at (j + 0.5, i + 0.5)
    fx, fy = xs - 0.5, ys - 0.5
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    pad = np.pad(alpha, ((0, 0), (1, 1), (1, 1)))  # outside the frame counts as background
    x0c, x1c = np.clip(x0 + 1, 0, w + 1), np.clip(x0 + 2, 0, w + 1)
    y0c, y1c = np.clip(y0 + 1, 0, h + 1), np.clip(y0 + 2, 0, h + 1)
    bi = np.arange(b)[:, None, None]

    def at(yy, xx):
        return pad[bi, yy[:, :, None], xx[:, None, :]]

    top = at(y0c, x0c) * (1 - wx[:, None, :]) + at(y0c, x1c) * wx[:, None, :]
    bot = at(y1c, x0c) * (1 - wx[:, None, :]) + at(y1c, x1c) * wx[:, None, :]
    return top * (1 - wy[:, :, None]) + bot * wy[:, :, None]


def _feret(mask: np.ndarray) -> np.ndarray:
    """Largest extent of each mask over 36 directions, edge to edge in px."""
    h, w = mask.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    ang = np.radians(np.arange(0, 180, 5, dtype=np.float32))
    proj = xs[None] * np.cos(ang)[:, None, None] + ys[None] * np.sin(ang)[:, None, None]  # [A,H,W]
    out = np.zeros(len(mask), dtype=np.float32)
    for i, m in enumerate(mask):
        if m.any():
            p = proj[:, m]
            out[i] = (p.max(1) - p.min(1)).max() + 1.0
    return out


def measure(images) -> dict:
    """Classical measurements of a batch: colors, masks, alpha, size, centroid, hollow share.

    Returns arrays keyed by name; `features` is the silhouette the shape classifier reads.
    """
    img = as_array(images).astype(np.float32)
    b = len(img)
    border = np.concatenate([img[:, 0], img[:, -1], img[:, 1:-1, 0], img[:, 1:-1, -1]], axis=1)
    bg = np.median(border, axis=1)  # [B,3]
    dist = np.linalg.norm(img - bg[:, None, None], axis=-1)
    comp = largest_component(dist > OBJECT_DISTANCE)
    found = comp.reshape(b, -1).any(1)
    fg = np.stack([_object_color(img[i], dist[i], comp[i]) if found[i] else bg[i] for i in range(b)])
    diff = fg - bg
    denom = np.maximum((diff ** 2).sum(-1), 1.0)
    alpha = np.clip(((img - bg[:, None, None]) * diff[:, None, None]).sum(-1) / denom[:, None, None], 0, 1)
    alpha *= _dilate(comp)
    # Holes are judged on the half-coverage mask: a blurred outline's faint inner fringe must
    # not close its hole, and faint haze must not make a filled shape look hollow.
    solid = alpha >= 0.5
    filled = fill_holes(solid)
    holes = filled & ~solid
    alpha_filled = np.where(holes, 1.0, alpha).astype(np.float32)
    area = alpha_filled.reshape(b, -1).sum(1)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    safe = np.maximum(area, 1e-6)
    cx = (alpha_filled * xs).reshape(b, -1).sum(1) / safe
    cy = (alpha_filled * ys).reshape(b, -1).sum(1) / safe
    hollow_share = (holes.reshape(b, -1).sum(1)) / np.maximum(filled.reshape(b, -1).sum(1), 1)
    feret = _feret(alpha_filled >= 0.5)
    features = _resample(alpha_filled, cx, cy, WINDOW * np.sqrt(safe)).reshape(b, -1)
    return dict(bg=bg, fg=fg, found=found, alpha=alpha_filled, area=area, cx=cx, cy=cy,
                hollow_share=hollow_share, feret=feret, features=features.astype(np.float32))


class ShapeClassifier(torch.nn.Module):
    """Tiny CNN over the GRIDxGRID silhouette: 3 conv layers and a linear head."""

    def __init__(self, n_classes: int = len(ALL_SHAPES), width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * width, n_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.reshape(-1, 1, GRID, GRID))


_TEMPLATES: np.ndarray | None = None


def shape_templates() -> np.ndarray:
    """Ideal silhouette features [shapes, rotations, GRID*GRID] of every shape (large, centred)."""
    global _TEMPLATES
    if _TEMPLATES is None:
        from stablekit.shapes.render import ShapeSpec, render

        _TEMPLATES = np.stack([measure(np.stack([
            render(ShapeSpec(shape=s, color="white", background="black", diameter=34.0, rotation=r))
            for r in TEMPLATE_ROTATIONS]))["features"] for s in ALL_SHAPES])
    return _TEMPLATES


def silhouette_fit(features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Soft IoU of each silhouette with the best-rotated template of its class, in [0, 1]."""
    if len(features) == 0:
        return np.zeros(0, dtype=np.float32)
    t = shape_templates()[classes]  # [B, R, F]
    f = features[:, None]
    return (np.minimum(f, t).sum(-1) / np.maximum(np.maximum(f, t).sum(-1), 1e-6)).max(1)


class Judge:
    """Reads shapes-world images: shape, color, background, size, position, hollow."""

    def __init__(self, classifier: ShapeClassifier, threshold: float = SHAPE_THRESHOLD,
                 fit_threshold: float = FIT_THRESHOLD):
        self.classifier = classifier.eval()
        self.threshold, self.fit_threshold = threshold, fit_threshold

    @classmethod
    def load(cls, path: str | Path | None = None, threshold: float = SHAPE_THRESHOLD,
             fit_threshold: float = FIT_THRESHOLD) -> "Judge":
        """Load the shipped shape classifier (or the one at `path`). Shape is None below
        `threshold` (classifier probability) or `fit_threshold` (template fit); 0 and 0 never
        abstain on a silhouette (the judge before abstention)."""
        from safetensors.torch import load_file

        path = Path(path or WEIGHTS_PATH)
        if not path.exists():
            raise StablekitError(f"judge weights not found at {path}; "
                                 f"run `python -m stablekit.shapes.judge_train` to build them")
        model = ShapeClassifier()
        model.load_state_dict(load_file(str(path)))
        return cls(model, threshold, fit_threshold)

    @torch.no_grad()
    def shape_probabilities(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros((0, len(ALL_SHAPES)), dtype=np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny net: one thread is as fast and spares a busy CPU
        try:
            logits = self.classifier(torch.from_numpy(features))
        finally:
            torch.set_num_threads(threads)
        return torch.softmax(logits, -1).numpy()

    def __call__(self, images, batch_size: int = 512) -> list[dict]:
        return self.judge(images, batch_size)

    def judge(self, images, batch_size: int = 512) -> list[dict]:
        """One dict per image: shape, color, background, size, position, hollow, plus
        shape_confidence, shape_fit, `abstained` and a few raw measurements (feret px, centroid, hollow
        share). No object, or an object in the background's colour: None for every object
        attribute. A silhouette recognised with confidence below the threshold: shape None."""
        arr = as_array(images)
        out = []
        for s in range(0, len(arr), batch_size):
            out.extend(self._judge_batch(arr[s:s + batch_size]))
        return out

    def _judge_batch(self, arr: np.ndarray) -> list[dict]:
        m = measure(arr)
        probs = self.shape_probabilities(m["features"])
        fit = silhouette_fit(m["features"], probs.argmax(1))
        bg_idx = _nearest_color(m["bg"])
        fg_idx = _nearest_color(m["fg"])
        centers = np.stack([m["cx"], m["cy"]], 1)
        pos_idx = ((centers[:, None] - _POS_XY[None]) ** 2).sum(-1).argmin(1)
        results = []
        for i in range(len(arr)):
            r = {"background": _COLOR_NAMES[bg_idx[i]], "abstained": None}
            if m["found"][i] and fg_idx[i] != bg_idx[i]:
                confident = probs[i].max() >= self.threshold and fit[i] >= self.fit_threshold
                r.update(
                    shape=ALL_SHAPES[int(probs[i].argmax())] if confident else None,
                    color=_COLOR_NAMES[fg_idx[i]],
                    size="large" if m["feret"][i] > SIZE_THRESHOLD else "small",
                    position=_POS_NAMES[pos_idx[i]],
                    hollow=bool(m["hollow_share"][i] > HOLLOW_THRESHOLD),
                    shape_confidence=float(probs[i].max()),
                    shape_fit=float(fit[i]),
                    feret=float(m["feret"][i]),
                    center=(float(m["cx"][i]), float(m["cy"][i])),
                    hollow_share=float(m["hollow_share"][i]),
                    abstained=None if confident else "shape unrecognised",
                )
            else:
                r.update({a: None for a in OBJECT_ATTRIBUTES})
                r.update(shape_confidence=0.0, shape_fit=0.0, feret=0.0, center=None, hollow_share=0.0,
                         abstained="object in background colour" if m["found"][i] else "no object")
            results.append(r)
        return results
