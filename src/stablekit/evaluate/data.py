"""What an evaluation compares against: reference images (+ captions) and prompt lists.

- The shapes world needs no files: the reference set is rendered from a held-out caption stream
  (REFERENCE_SEED, never used for training), and generation uses the same captions, so FID/KID
  compare p(image | caption) averaged over the caption distribution, as COCO-caption FID does.
- Elsewhere the reference is a folder of images, each optionally with a same-named .txt caption
  (the layout `stablekit data captions` and kohya use) or a metadata.jsonl (file_name, text).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stablekit.errors import StablekitError

REFERENCE_SEED = 777_001  # the shapes reference stream; pretraining uses seed 0


@dataclass
class ReferenceSet:
    """uint8 images [n, H, W, 3], their captions ("" when unknown), seeds to generate with, a name."""

    images: np.ndarray
    captions: list[str]
    seeds: list[int]
    name: str


def shapes_reference(n: int, seed: int = REFERENCE_SEED) -> ReferenceSet:
    """n rendered shapes-world images with their captions (the in-domain reference)."""
    from stablekit.shapes.captions import make_batch

    images, captions, _ = make_batch(n, seed=seed)
    return ReferenceSet(images, list(captions), [seed + i for i in range(n)], f"shapes-rendered-{seed}")


def folder_reference(folder: str | Path, limit: int | None = None) -> ReferenceSet:
    """Images in `folder` (sorted) with captions from .txt sidecars or metadata.jsonl."""
    from stablekit.evaluate.fid import load_image_folder

    folder = Path(folder)
    images = load_image_folder(folder, limit)
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})[:len(images)]
    meta = {}
    if (folder / "metadata.jsonl").is_file():
        for line in (folder / "metadata.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                meta[row.get("file_name", "")] = row.get("text", row.get("caption", ""))
    captions = []
    for p in files:
        txt = p.with_suffix(".txt")
        captions.append(txt.read_text().strip() if txt.is_file() else meta.get(p.name, ""))
    return ReferenceSet(images, captions, list(range(len(images))), folder.name)


def read_prompts(path: str | Path, first_seed: int = 1000) -> tuple[list[str], list[int]]:
    """Prompts from a text file (one per line; blank lines and # comments skipped) or a .jsonl
    ({"prompt": ..., "seed": ...} per line; seed optional). Seeds default to first_seed + line."""
    path = Path(path)
    if not path.is_file():
        raise StablekitError(f"prompt file {path} does not exist; give a .txt (one prompt per line) or .jsonl file")
    prompts, seeds = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompts.append(str(row["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise StablekitError(f"{path}: line {line[:40]!r} is not a JSON object with a \"prompt\"") from None
            seeds.append(int(row.get("seed", first_seed + len(seeds))))
        else:
            prompts.append(line)
            seeds.append(first_seed + len(seeds))
    if not prompts:
        raise StablekitError(f"prompt file {path} holds no prompts")
    return prompts, seeds
