"""Reading the layouts users have into (image path, caption) records.

- a folder of images with same-name caption files (`stablekit shapes render`, kohya DreamBooth)
- `metadata.jsonl` (Hugging Face imagefolder: file_name + text per line) and `metadata.csv`
- a CSV with image_path,caption (the Keras fine-tuning tutorial)
- kohya's metadata JSON ({image: {"caption": ..., "tags": ...}}, from its fine-tuning scripts)
Paths in a file are relative to the file's folder unless absolute.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from stablekit.data.config import SubsetConfig
from stablekit.errors import StablekitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_COLUMNS = ("file_name", "image_path", "image", "path")
CAPTION_COLUMNS = ("text", "caption")


@dataclass(frozen=True)
class Record:
    path: Path
    caption: str


def _missing_captions(missing: list[Path], where: str, fix: str) -> StablekitError:
    return StablekitError(f"{len(missing)} image(s) in {where} have no caption (first: {missing[0].name}); {fix}")


def read_folder(folder: Path, subset: SubsetConfig) -> list[Record]:
    """Images in `folder` (not recursive, sorted by name), each captioned by the same-name
    caption file, else by subset.class_tokens (kohya's DreamBooth caption; the trainer sets it for
    the methods that need no captions: dreambooth, textual-inversion). Else missing captions are
    an error: a method that learns from captions must not silently train on none."""
    if not folder.is_dir():
        raise StablekitError(f"image folder {folder} does not exist; check image_dir or the --data path")
    records, missing = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        cap = path.with_suffix(subset.caption_extension)
        if cap.is_file():
            records.append(Record(path, cap.read_text(encoding="utf-8").strip()))
        elif subset.class_tokens is not None:
            records.append(Record(path, subset.class_tokens))
        else:
            missing.append(path)
    if missing:
        raise _missing_captions(missing, str(folder), f"write {missing[0].stem}{subset.caption_extension} beside it "
                                "or set class_tokens (textual-inversion and dreambooth train without captions)")
    return records


def _column(names: list[str], wanted: str | None, choices: tuple[str, ...], what: str, where: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise StablekitError(f"{where}: no {what} column {wanted!r} (columns: {', '.join(names)})")
        return wanted
    for c in choices:
        if c in names:
            return c
    raise StablekitError(f"{where}: no {what} column; name one of {', '.join(choices)} (columns: {', '.join(names)})")


def _table_records(rows: list[dict], where: Path, caption_column: str | None) -> list[Record]:
    if not rows:
        raise StablekitError(f"{where} has no rows; add one per image ({IMAGE_COLUMNS[0]} and {CAPTION_COLUMNS[0]})")
    names = list(rows[0])
    image_col = _column(names, None, IMAGE_COLUMNS, "image", where)
    caption_col = _column(names, caption_column, CAPTION_COLUMNS, "caption", where)
    records, missing = [], []
    for row in rows:
        path = Path(str(row.get(image_col) or ""))
        path = path if path.is_absolute() else where.parent / path
        caption = row.get(caption_col)
        if caption is None or (isinstance(caption, str) and not caption.strip()):
            missing.append(path)
        else:
            records.append(Record(path, str(caption).strip()))
    if missing:
        raise _missing_captions(missing, str(where), f"fill its {caption_col!r} value")
    return records


def read_jsonl(path: Path, caption_column: str | None = None) -> list[Record]:
    """Hugging Face imagefolder metadata.jsonl: one JSON object per line with file_name + text."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StablekitError(f"{path} line {n} is not JSON ({exc.msg}); one object per line") from None
            if not isinstance(row, dict):
                raise StablekitError(f"{path} line {n} is not a JSON object; write {{\"file_name\": ..., \"text\": ...}}")
            rows.append(row)
    return _table_records(rows, path, caption_column)


def read_csv(path: Path, caption_column: str | None = None) -> list[Record]:
    """A CSV with a header row: image_path,caption (Keras) or file_name,text (imagefolder)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    return _table_records(rows, path, caption_column)


def _find_image(key: str, image_dir: Path | None) -> Path | None:
    """kohya's lookup: the key as a path, else image_dir/key (with an image extension added when
    it has none); stablekit also tries image_dir/<key's file name> so a moved dataset loads."""
    candidates = [Path(key)]
    if image_dir is not None:
        for name in (key, Path(key).name):
            p = image_dir / name
            candidates += [p] + [p.with_name(p.name + ext) for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), None)


def read_kohya_metadata(path: Path, subset: SubsetConfig) -> list[Record]:
    """kohya metadata JSON: {image key: {"caption": str, "tags": str}}; caption and tags are
    joined with the caption separator as kohya's FineTuningDataset does."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StablekitError(f"cannot read kohya metadata {path}: {exc}") from None
    if not isinstance(data, dict):
        raise StablekitError(f"{path}: kohya metadata must be a JSON object {{image: {{\"caption\": ...}}}}")
    image_dir = Path(subset.image_dir) if subset.image_dir else None
    records, missing, unfound = [], [], []
    for key, md in data.items():
        md = md if isinstance(md, dict) else {}
        caption, tags = md.get("caption"), md.get("tags")
        if caption is None:
            caption = tags
        elif tags:
            caption = caption + subset.caption_separator + " " + tags
        image = _find_image(key, image_dir)
        if image is None:
            unfound.append(key)
        elif caption is None or not str(caption).strip():
            missing.append(image)
        else:
            records.append(Record(image, str(caption).strip()))
    if unfound:
        raise StablekitError(f"{len(unfound)} image(s) named in {path} not found (first: {unfound[0]}); "
                             f"put them in image_dir ({image_dir})")
    if missing:
        raise _missing_captions(missing, str(path), "give each a \"caption\" or \"tags\"")
    return records
