"""DreamBooth data (Ruiz et al. 2023): instance images under "a sks square", class images under
"a square" for prior preservation.

When the user gives no class images, the model itself draws them from the class prompt (the
paper's recipe and diffusers' train_dreambooth.py), once: they are cached as PNGs with .txt
captions in <out>/class-images/<key>/, keyed by the model, prompt, size, count, seed and sampler
settings, and reused by the next run. Instance and class items are mixed in one dataset with
`is_reg` set on class items; the strategy weights their loss by prior_loss_weight (kohya's rule),
so every batch may hold both. Buckets are honoured as in every other method: each batch comes
from one bucket of the instance dataset (its batch_order), the class positions are shared out
over the buckets and class images are resized to the bucket of the batch they land in.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stablekit.errors import StablekitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _pixels(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    arrays = [np.asarray(im.convert("RGB").resize((w, h), Image.LANCZOS), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def load_image_folder(folder: Path, size: tuple[int, int]) -> torch.Tensor:
    """Every image in `folder` (sorted by name) as pixels [N, 3, H, W] in [-1, 1]; undecodable files are an error."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise StablekitError(f"no images in the class folder {folder}; give a folder of PNG/JPEG images or leave --class-data out")
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise StablekitError(f"cannot read class image {p}: {exc}; remove or replace it") from None
    return _pixels(images, size)


def class_images(components, prompt: str, count: int, size: tuple[int, int], cache_root: Path, seed: int = 0,
                 steps: int = 20, cfg: float = 7.0) -> Path:
    """A folder of `count` images of `prompt` drawn by the model (cached; only missing ones are drawn)."""
    from stablekit.generate.pipeline import Pipeline

    model_id = components.hash or components.name or "model"
    if not components.hash:  # no file hash (a model built in memory): key by its weights
        first = next(components.unet.parameters()).detach().float().cpu().numpy().tobytes()
        model_id += hashlib.sha256(first).hexdigest()[:12]
    key = json.dumps([model_id, prompt, list(size), seed, steps, cfg])
    folder = Path(cache_root) / hashlib.sha256(key.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(key)
    missing = [i for i in range(count) if not (folder / f"{i:04d}.png").exists()]
    if missing:
        pipe = Pipeline(components, progress=False)
        for i in missing:
            image = pipe.generate(prompt, seed=seed + i, steps=steps, cfg=cfg, width=size[1], height=size[0])[0]
            tmp = folder / f"{i:04d}.tmp.png"
            image.save(tmp)
            (folder / f"{i:04d}.txt").write_text(prompt)
            tmp.replace(folder / f"{i:04d}.png")  # atomic: a killed run never leaves half an image
    return folder


class PriorPreservationData:
    """Instance items (caption = instance prompt) then class items (caption = class prompt, is_reg).

    Length 2 x max(instances, class images): each half repeats its images, so one epoch sees as many
    of each. Items of one batch keep the order of `indices`.
    """

    def __init__(self, instance, instance_prompt: str, class_pixels: torch.Tensor | None, class_prompt: str):
        self.instance, self.instance_prompt = instance, instance_prompt
        self.class_pixels, self.class_prompt = class_pixels, class_prompt
        n_class = 0 if class_pixels is None else len(class_pixels)
        self.half = max(len(instance), n_class)
        self.total = self.half * (2 if n_class else 1)
        self._buckets = self._share_buckets()

    def __len__(self) -> int:
        return self.total

    def _share_buckets(self) -> list[np.ndarray]:
        """Positions grouped by the instance dataset's buckets: instance position i goes with the
        bucket of item i % len(instance); class positions are dealt out in proportion to the
        buckets' sizes (round robin over the instance positions' buckets)."""
        groups = self.instance.buckets() if hasattr(self.instance, "buckets") else [np.arange(len(self.instance))]
        bucket_of = np.zeros(len(self.instance), dtype=np.int64)
        for b, members in enumerate(groups):
            bucket_of[np.asarray(members, dtype=np.int64)] = b
        inst_bucket = bucket_of[np.arange(self.half) % len(self.instance)]
        positions = [list(np.flatnonzero(inst_bucket == b)) for b in range(len(groups))]
        for j in range(self.total - self.half):
            positions[inst_bucket[j % self.half]].append(self.half + j)
        self._class_bucket = inst_bucket  # class position half + j belongs to bucket _class_bucket[j % half]
        self._bucket_member = [int(np.asarray(m)[0]) for m in groups]
        self._bucket_size: dict[int, tuple[int, int]] = {}
        return [np.array(sorted(p), dtype=np.int64) for p in positions if p]

    def batch_order(self, seed: int, batch_size: int):
        """Bucket-aware order (data/buckets.py): every batch holds one bucket's positions."""
        from stablekit.data.buckets import BucketBatchOrder

        return BucketBatchOrder(self._buckets, seed, batch_size)

    def _class_size(self, position: int) -> tuple[int, int]:
        """(h, w) of the bucket a class position belongs to (read once per bucket)."""
        b = int(self._class_bucket[(position - self.half) % self.half])
        if b not in self._bucket_size:
            item = _get(self.instance, np.array([self._bucket_member[b]]), None)
            self._bucket_size[b] = tuple(item["pixels"].shape[-2:])
        return self._bucket_size[b]

    def get_batch(self, indices: np.ndarray, generator: torch.Generator | None = None) -> dict:
        indices = np.asarray(indices)
        is_reg = indices >= self.half
        inst = indices[~is_reg] % len(self.instance)
        parts, inst_keys = {}, []
        if len(inst):
            got = _get(self.instance, inst, generator)
            parts["inst"], inst_keys = got["pixels"], list(got.get("keys", []))
        h, w = parts["inst"].shape[-2:] if parts else self._class_size(int(indices[is_reg][0]))
        pixels = torch.empty(len(indices), 3, h, w)
        if len(inst):
            pixels[torch.from_numpy(~is_reg)] = parts["inst"]
        if is_reg.any():
            cls = self.class_pixels[torch.from_numpy((indices[is_reg] - self.half) % len(self.class_pixels))]
            if cls.shape[-2:] != (h, w):  # a bucketed instance batch: bring the class images to its size
                cls = torch.nn.functional.interpolate(cls, size=(h, w), mode="bilinear", antialias=True)
            pixels[torch.from_numpy(is_reg)] = cls
        captions = [self.class_prompt if r else self.instance_prompt for r in is_reg]
        inst_keys = iter(inst_keys or [f"instance:{i}" for i in inst])
        keys = [f"class:{(i - self.half) % len(self.class_pixels)}-{h}x{w}" if r else next(inst_keys)
                for i, r in zip(indices, is_reg)]
        return {"pixels": pixels, "captions": captions, "is_reg": torch.from_numpy(is_reg), "keys": keys}


def _get(dataset, indices, generator):
    try:
        return dataset.get_batch(indices, generator)
    except TypeError:
        return dataset.get_batch(indices)
