"""Per-example augmentations, deterministic given a torch.Generator: resize + crop into the
bucket (kohya's trim_and_resize_if_required), horizontal flip, and caption shuffle with kept
tokens and caption dropout (kohya's process_caption)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _randint(generator: torch.Generator | None, high: int) -> int:
    """Uniform in [0, high] from the generator (python's random would break exact resume)."""
    return int(torch.randint(0, high + 1, (1,), generator=generator))


def _coin(generator: torch.Generator | None, p: float) -> bool:
    return p > 0 and float(torch.rand(1, generator=generator)) < p


def crop_box(resized: tuple[int, int], bucket: tuple[int, int], random_crop: bool,
             generator: torch.Generator | None) -> tuple[int, int]:
    """(left, top) of the bucket-sized window in the resized image: centred, or uniform at random."""
    dx, dy = resized[0] - bucket[0], resized[1] - bucket[1]
    if random_crop:
        return (_randint(generator, dx) if dx > 0 else 0, _randint(generator, dy) if dy > 0 else 0)
    return dx // 2, dy // 2


def resize_and_crop(image: Image.Image, resized: tuple[int, int], bucket: tuple[int, int],
                    box: tuple[int, int]) -> np.ndarray:
    """RGB image -> uint8 [h, w, 3] of the bucket's size. Downscales use PIL's BOX-antialiased
    reduce + LANCZOS (kohya uses cv2 INTER_AREA), upscales LANCZOS."""
    if image.size != resized:
        image = image.resize(resized, Image.LANCZOS, reducing_gap=3.0 if resized[0] < image.width else None)
    left, top = box
    return np.asarray(image.crop((left, top, left + bucket[0], top + bucket[1])), dtype=np.uint8)


def maybe_flip(pixels: np.ndarray, flip_aug: bool, generator: torch.Generator | None) -> tuple[np.ndarray, bool]:
    """Mirror left-right with probability 1/2 when flip_aug is on."""
    if flip_aug and _coin(generator, 0.5):
        return pixels[:, ::-1], True
    return pixels, False


def process_caption(caption: str, *, shuffle: bool = False, keep_tokens: int = 0, separator: str = ",",
                    dropout_rate: float = 0.0, generator: torch.Generator | None = None) -> str:
    """kohya's caption processing: with probability dropout_rate the caption becomes "" (the
    unconditional text, so CFG is learned); otherwise, when shuffling, the caption is split on
    `separator`, the first keep_tokens tags stay in place and the rest are shuffled, re-joined
    with ", "."""
    if _coin(generator, dropout_rate):
        return ""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.strip().split(separator)]
    fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]
    if len(flex) > 1:
        flex = [flex[i] for i in torch.randperm(len(flex), generator=generator).tolist()]
    return ", ".join(fixed + flex)
