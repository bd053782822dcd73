"""Image-caption datasets from the layouts users have, bucketed and augmented for training.

`load_dataset(source, config)` reads a folder of images + same-name .txt captions, a
metadata.jsonl / metadata.csv (Hugging Face imagefolder), a CSV with image_path,caption, a kohya
metadata JSON or a kohya dataset TOML, and returns an ImageCaptionDataset: the training loop's
Dataset (len, get_batch) with a bucket-aware batch_order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from stablekit.data import augment
from stablekit.data.buckets import BucketBatchOrder, Placement, make_bucket_resolutions, select_bucket, select_bucket_no_upscale
from stablekit.data.config import DatasetConfig, SubsetConfig, read_kohya_toml
from stablekit.data.sources import IMAGE_EXTENSIONS, Record, read_csv, read_folder, read_jsonl, read_kohya_metadata
from stablekit.errors import StablekitError

_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Example:
    """One image of the dataset with everything needed to make its training pixels."""

    path: Path
    caption: str
    subset: SubsetConfig
    group: int  # which kohya [[datasets]] entry (0 for other sources)
    placement: Placement
    conditioning: Path | None = None


def open_rgb(path: Path) -> Image.Image:
    """Decode fully (so a truncated file fails here, not mid-training), EXIF-rotated, RGB."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


class ImageCaptionDataset:
    """Examples (repeated num_repeats times) with their buckets; see the module docstring.

    get_batch(indices, generator) -> {"pixels": float32 [B,3,H,W] in [-1, 1], "captions": [str],
    "is_reg": bool [B], "keys": [str]} (+ "conditioning_pixels" in [0, 1] for ControlNet subsets).
    keys name the exact pixels (file content, bucket, crop, flip): a latent cache keyed by them is
    right whatever the augmentations.
    """

    def __init__(self, examples: list[Example], groups: list[DatasetConfig], skipped: list[Path], source: str):
        self.examples, self.groups, self.skipped, self.source = examples, groups, skipped, source
        self.index = np.array([i for i, e in enumerate(examples) for _ in range(e.subset.num_repeats)], dtype=np.int64)
        self._hashes: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def batch_size(self) -> int | None:
        """The TOML's batch_size (first [[datasets]] entry that sets one): a default for the trainer."""
        return next((g.batch_size for g in self.groups if g.batch_size), None)

    @property
    def latents_cacheable(self) -> bool:
        """False when random_crop is on: every step sees a new crop, a latent cache never hits."""
        return not any(e.subset.random_crop for e in self.examples)

    @property
    def text_cacheable(self) -> bool:
        """False when captions are shuffled: each step's caption is a new text."""
        return not any(e.subset.shuffle_caption for e in self.examples)

    def buckets(self) -> list[np.ndarray]:
        """Dataset indices grouped by (group, bucket size), in a fixed order."""
        by: dict[tuple, list[int]] = {}
        for i, ex in enumerate(self.index):
            e = self.examples[ex]
            by.setdefault((e.group, e.placement.bucket), []).append(i)
        return [np.array(by[k]) for k in sorted(by)]

    def batch_order(self, seed: int, batch_size: int) -> BucketBatchOrder:
        return BucketBatchOrder(self.buckets(), seed, batch_size)

    def file_hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
        return self._hashes[path]

    def get_batch(self, indices, generator: torch.Generator | None = None) -> dict:
        examples = [self.examples[self.index[int(i)]] for i in np.asarray(indices).reshape(-1)]
        sizes = {(e.group, e.placement.bucket) for e in examples}
        if len(sizes) > 1:
            raise StablekitError(f"a batch mixes buckets {sorted(s for _, s in sizes)}; draw batches with "
                                 "dataset.batch_order(seed, batch_size)")
        pixels, conds, captions, keys = [], [], [], []
        for e in examples:
            p, s = e.placement, e.subset
            box = augment.crop_box(p.resized, p.bucket, s.random_crop, generator)
            img, flipped = augment.maybe_flip(augment.resize_and_crop(open_rgb(e.path), p.resized, p.bucket, box),
                                              s.flip_aug, generator)
            pixels.append(img)
            if e.conditioning is not None:
                c = augment.resize_and_crop(open_rgb(e.conditioning), p.resized, p.bucket, box)
                conds.append(c[:, ::-1] if flipped else c)
            captions.append(augment.process_caption(e.caption, shuffle=s.shuffle_caption, keep_tokens=s.keep_tokens,
                                                    separator=s.caption_separator, dropout_rate=s.caption_dropout_rate,
                                                    generator=generator))
            keys.append(f"{self.file_hash(e.path)}-{p.resized[0]}x{p.resized[1]}-{box[0]},{box[1]}-"
                        f"{p.bucket[0]}x{p.bucket[1]}{'-flip' if flipped else ''}")
        batch = {"pixels": torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0),
                 "captions": captions, "keys": keys,
                 "is_reg": torch.tensor([e.subset.is_reg for e in examples], dtype=torch.bool)}
        if conds:
            if len(conds) != len(examples):
                raise StablekitError("a batch mixes ControlNet and plain subsets; keep them in separate datasets")
            batch["conditioning_pixels"] = torch.from_numpy(np.stack(conds)).permute(0, 3, 1, 2).float().div(255.0)
        return batch


def _placer(group: DatasetConfig):
    w, h = group.size
    if not group.enable_bucket:
        return lambda iw, ih: select_bucket(iw, ih, [(w, h)])
    if group.bucket_no_upscale:
        return lambda iw, ih: select_bucket_no_upscale(iw, ih, w * h, group.bucket_reso_steps)
    resos = make_bucket_resolutions((w, h), group.min_bucket_reso, group.max_bucket_reso, group.bucket_reso_steps)
    return lambda iw, ih: select_bucket(iw, ih, resos)


def _conditioning_path(record: Record, subset: SubsetConfig) -> Path | None:
    if not subset.conditioning_data_dir:
        return None
    folder = Path(subset.conditioning_data_dir)
    found = next((p for p in (folder / (record.path.stem + ext) for ext in IMAGE_EXTENSIONS) if p.is_file()), None)
    if found is None:
        raise StablekitError(f"no conditioning image for {record.path.name} in {folder}; add {record.path.stem}.png")
    return found


def _read_subset(subset: SubsetConfig, config: DatasetConfig) -> list[Record]:
    if subset.metadata_file:
        return read_kohya_metadata(Path(subset.metadata_file), subset)
    return read_folder(Path(subset.image_dir), subset)


def _sources(path: Path, config: DatasetConfig) -> list[tuple[DatasetConfig, list[tuple[SubsetConfig, list[Record]]]]]:
    if path.is_dir():
        for name, reader in (("metadata.jsonl", read_jsonl), ("metadata.csv", read_csv)):
            if (path / name).is_file():
                return [(config, [(config.subset, reader(path / name, config.caption_column))])]
        return [(config, [(config.subset, read_folder(path, config.subset))])]
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return [(g.config, [(s, _read_subset(s, g.config)) for s in g.subsets]) for g in read_kohya_toml(path, config)]
    if suffix == ".jsonl":
        return [(config, [(config.subset, read_jsonl(path, config.caption_column))])]
    if suffix == ".csv":
        return [(config, [(config.subset, read_csv(path, config.caption_column))])]
    if suffix == ".json":
        subset = replace(config.subset, image_dir=config.subset.image_dir or str(path.parent))
        return [(config, [(subset, read_kohya_metadata(path, subset))])]
    raise StablekitError(f"cannot tell the dataset layout of {path}: give a folder, metadata.jsonl, a .csv, "
                         "a kohya dataset .toml or a kohya metadata .json")


def load_dataset(source: str | Path, config: DatasetConfig | None = None) -> ImageCaptionDataset:
    """Read `source` (see the module docstring) with `config` (DatasetConfig; for a kohya TOML,
    the defaults its sections override). Every image is decoded once here: an undecodable one is
    skipped and counted in `dataset.skipped` (fatal with config.strict_images)."""
    config = replace(config or DatasetConfig()).validate()
    path = Path(source)
    if not path.exists():
        raise StablekitError(f"dataset {path} does not exist; give a folder, metadata.jsonl, CSV or kohya TOML")
    groups, examples, skipped = [], [], []
    for g, (group, subsets) in enumerate(_sources(path, config)):
        groups.append(group)
        place = _placer(group)
        for subset, records in subsets:
            if subset.caption_prefix or subset.caption_suffix:
                records = [Record(r.path, " ".join(x for x in (subset.caption_prefix, r.caption, subset.caption_suffix)
                                                   if x)) for r in records]
            for r in records:
                try:
                    width, height = open_rgb(r.path).size
                except _UNREADABLE as exc:
                    if group.strict_images:
                        raise StablekitError(f"cannot decode image {r.path}: {exc}; fix or remove it") from None
                    skipped.append(r.path)
                    continue
                examples.append(Example(r.path, r.caption, subset, g, place(width, height), _conditioning_path(r, subset)))
    if not examples:
        extra = f" ({len(skipped)} undecodable)" if skipped else ""
        raise StablekitError(f"dataset {path} has no usable images{extra}; add images with captions")
    return ImageCaptionDataset(examples, groups, skipped, str(path))
