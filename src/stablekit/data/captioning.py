"""Captions for a folder of training images, from what people have: file names, a table (CSV or
JSON, including attribute tables such as CelebA's), templates with an identifier token, the
shapes-world judge, or an image-captioning model (stablekit.data.caption_model).

Writing is resumable and safe: an image that already has a caption keeps it unless `overwrite`;
captions go to same-name .txt files (kohya, stablekit's folder loader) or to metadata.jsonl
(Hugging Face imagefolder: {"file_name": ..., "text": ...}).
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Callable, Iterable

from stablekit.errors import StablekitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
IMAGE_COLUMNS = ("file_name", "image", "image_path", "image_id", "filename", "file", "path")
CAPTION_COLUMNS = ("text", "caption", "prompt", "tags")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The images in `folder` (by extension), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StablekitError(f"image folder {folder} does not exist")
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# --- sources ------------------------------------------------------------------------------

def caption_from_filename(path: str | Path) -> str:
    """'a_red-car (2).jpg' -> 'a red car': separators become spaces; trailing counters, copy
    markers and camera prefixes (IMG_1234) are dropped."""
    words = re.split(r"[\s_\-.+]+", Path(path).stem)
    words = [w for w in words if w and not re.fullmatch(r"\(?\d+\)?|copy|img|dsc|dscn|pxl", w.lower())]
    return " ".join(words)


def read_table(path: str | Path, image_column: str | None = None,
               caption_column: str | None = None) -> dict[str, str]:
    """A CSV or JSON table -> {image file name: caption}. JSON may be a list of records, a
    {name: caption} map or kohya's metadata JSON ({path: {"caption": ...}}); JSONL is read too.
    Column names default to the usual ones (file_name/image/image_path, text/caption)."""
    rows = _read_rows(Path(path))
    if isinstance(rows, dict):  # {name: caption} or kohya's {name: {"caption": ..., "tags": ...}}
        return {Path(k).name: (v if isinstance(v, str) else v.get("caption") or v.get("tags") or "")
                for k, v in rows.items()}
    if not rows:
        return {}
    image_column = image_column or _pick(rows[0], IMAGE_COLUMNS, "image", path)
    caption_column = caption_column or _pick(rows[0], CAPTION_COLUMNS, "caption", path)
    return {Path(str(r[image_column])).name: str(r[caption_column]) for r in rows}


def read_attribute_table(path: str | Path, image_column: str | None = None) -> dict[str, dict[str, bool]]:
    """An attribute table -> {image name: {attribute: present}}. Reads CelebA's own
    list_attr_celeba.txt (a count line, a line of names, then `name 1 -1 ...`) and CSVs of
    1/-1 or 1/0 (or true/false) columns."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".txt" and lines and lines[0].strip().isdigit():
        names = lines[1].split()
        table = {}
        for line in lines[2:]:
            parts = line.split()
            if len(parts) == len(names) + 1:
                table[parts[0]] = {n: v.strip() == "1" for n, v in zip(names, parts[1:])}
        return table
    rows = _read_rows(path)
    if not isinstance(rows, list) or not rows:
        raise StablekitError(f"{path} holds no attribute rows; expected a CSV with an image column "
                             f"and 1/-1 columns, or CelebA's list_attr_celeba.txt")
    image_column = image_column or _pick(rows[0], IMAGE_COLUMNS, "image", path)
    truthy = {"1", "true", "yes", "y"}
    return {Path(str(r[image_column])).name: {k: str(v).strip().lower() in truthy
                                               for k, v in r.items() if k != image_column}
            for r in rows}


# Attributes that describe the person as a whole (CelebA's names): they go before the noun.
_ADJECTIVES = {"young": "young", "attractive": "attractive", "smiling": "smiling", "chubby": "chubby",
               "bald": "bald", "blurry": "blurry"}


def attributes_to_caption(attrs: dict[str, bool], style: str = "tags", prefix: str | None = None,
                          subject: str = "person") -> str:
    """Present attributes -> a caption. style "tags": the CelebA lab's lower-case list
    ("celeba, arched_eyebrows, attractive, ..."); style "sentence": "a photo of a smiling young
    man with arched eyebrows and brown hair, wearing a hat" (Male picks man/woman when present)."""
    present = [name for name, on in attrs.items() if on]
    if style == "tags":
        return ", ".join(([prefix] if prefix else []) + [p.lower() for p in present])
    if style != "sentence":
        raise StablekitError(f"unknown attribute caption style {style!r}; choose tags or sentence")
    lower = {k.lower(): v for k, v in attrs.items()}
    noun = ("man" if lower["male"] else "woman") if "male" in lower else subject
    adjectives = [_ADJECTIVES[k.lower()] for k in present if k.lower() in _ADJECTIVES]
    wearing, having = [], []
    for name in present:
        key = name.lower()
        if key in _ADJECTIVES or key == "male":
            continue
        words = key.replace("5_o_clock", "five o'clock").replace("_", " ")
        if key.startswith("wearing_"):
            item = words.removeprefix("wearing ")
            wearing.append(item if item.endswith("s") else f"a {item}")
        else:
            having.append(words)
    text = f"a photo of {_article(adjectives[0] if adjectives else noun)} " + " ".join(adjectives + [noun])
    if having:
        text += " with " + _and_list(having)
    if wearing:
        text += ", wearing " + _and_list(wearing)
    return f"{prefix}, {text}" if prefix else text


def judge_captions(images: list, batch_size: int = 256) -> list[str]:
    """Shapes-world captions from the project's judge (offline, no model download): every
    attribute it reads, in the renderer's first template; "" for an image with no object."""
    from stablekit.shapes.captions import compose_caption
    from stablekit.shapes.judge import Judge
    from stablekit.shapes.render import ShapeSpec

    verdicts = Judge.load().judge(images, batch_size=batch_size)
    out = []
    for v in verdicts:
        if v["shape"] is None:
            out.append("")
            continue
        spec = ShapeSpec(shape=v["shape"], color=v["color"], background=v["background"],
                         size=v["size"], position=v["position"], hollow=bool(v["hollow"]))
        out.append(compose_caption(spec, ("size", "color", "background", "position"))[0])
    return out


# --- templates, identifiers and tags ------------------------------------------------------

def apply_template(template: str, caption: str = "", *, token: str = "", class_word: str = "",
                   name: str = "") -> str:
    """Fill {caption}, {token}, {class} and {name} (the file stem) in `template`,
    e.g. "a photo of {token} {class}, {caption}"."""
    try:
        text = template.format(caption=caption, token=token, name=name, **{"class": class_word})
    except (KeyError, IndexError) as exc:
        raise StablekitError(f"template {template!r} uses an unknown placeholder {exc}; "
                             f"use {{caption}}, {{token}}, {{class}} or {{name}}") from None
    return re.sub(r"\s+", " ", text).strip(" ,")


def insert_identifier(caption: str, token: str, class_word: str | None = None, mode: str = "prefix") -> str:
    """Put an identifier token into a caption as the lecture does by hand:
    prefix -> "sks, a cartoon shark"; replace -> the class word becomes the token
    ("a stuffed mychar4 with a big smile", textual inversion); before -> the token goes
    before the class word ("a stuffed ohwx shark", DreamBooth's [identifier] [class noun]).
    When the class word is absent, replace/before fall back to prefix."""
    if mode == "prefix" or not class_word:
        return f"{token}, {caption}" if caption else token
    pattern = re.compile(rf"\b{re.escape(class_word)}\b", re.IGNORECASE)
    if not pattern.search(caption):
        return f"{token}, {caption}" if caption else token
    if mode == "replace":
        return pattern.sub(token, caption)
    if mode == "before":
        return pattern.sub(lambda m: f"{token} {m.group(0)}", caption)
    raise StablekitError(f"unknown identifier mode {mode!r}; choose prefix, replace or before")


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """'a, b ,, c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def shuffle_tags(caption: str, keep_tokens: int = 0, seed: int | None = None, separator: str = ",") -> str:
    """kohya's shuffle_caption: the first `keep_tokens` tags stay in place, the rest shuffle."""
    tags = split_tags(caption, separator)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    random.Random(seed).shuffle(tail)
    return f"{separator} ".join(head + tail)


def dedupe_tags(caption: str, separator: str = ",") -> str:
    """Drop repeated tags (case-insensitive), keeping the first."""
    seen, out = set(), []
    for tag in split_tags(caption, separator):
        if tag.lower() not in seen:
            seen.add(tag.lower())
            out.append(tag)
    return f"{separator} ".join(out)


def edit_tags(caption: str, add: Iterable[str] = (), remove: Iterable[str] = (), separator: str = ",") -> str:
    """Remove the tags in `remove` (case-insensitive), then append those of `add` not present."""
    gone = {t.lower() for t in remove}
    tags = [t for t in split_tags(caption, separator) if t.lower() not in gone]
    have = {t.lower() for t in tags}
    tags += [t for t in add if t.lower() not in have]
    return f"{separator} ".join(tags)


# --- writing ------------------------------------------------------------------------------

def existing_captions(folder: Path, images: list[Path], fmt: str) -> set[Path]:
    """Images that already have a caption in the chosen output (what a resumed run skips)."""
    if fmt == "txt":
        return {p for p in images if p.with_suffix(".txt").exists()}
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        return set()
    names = {json.loads(line)["file_name"] for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()}
    return {p for p in images if p.relative_to(folder).as_posix() in names}


def write_captions(folder: str | Path, captions: dict[Path, str], fmt: str = "txt",
                   overwrite: bool = False) -> int:
    """Write {image: caption} as .txt files beside the images or lines of folder/metadata.jsonl
    (appended; with `overwrite` an image's earlier line is replaced). Returns how many written."""
    folder = Path(folder)
    if fmt == "txt":
        n = 0
        for image, text in captions.items():
            target = image.with_suffix(".txt")
            if overwrite or not target.exists():
                target.write_text(text + "\n", encoding="utf-8")
                n += 1
        return n
    if fmt != "jsonl":
        raise StablekitError(f"unknown caption output {fmt!r}; choose txt or jsonl")
    meta = folder / "metadata.jsonl"
    records = {}
    if meta.exists():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                records[rec["file_name"]] = rec
    n = 0
    for image, text in captions.items():
        name = image.relative_to(folder).as_posix()
        if overwrite or name not in records:
            records[name] = {"file_name": name, "text": text}
            n += 1
    tmp = meta.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()), encoding="utf-8")
    tmp.replace(meta)
    return n


def caption_folder(folder: str | Path, make: Callable[[list[Path]], list[str]], fmt: str = "txt",
                   overwrite: bool = False, batch_size: int = 16, recursive: bool = False,
                   progress: bool = False, transform: Callable[[Path, str], str] | None = None) -> dict:
    """Caption every image of `folder` that has no caption yet (all with `overwrite`), calling
    `make(paths) -> captions` (None: no caption for that image) one batch at a time and writing after each batch, so an
    interrupted run resumes where it stopped. `transform(path, caption)` post-edits each
    caption (identifier, template, tag edits). Returns counts."""
    folder = Path(folder)
    images = list_images(folder, recursive)
    done = set() if overwrite else existing_captions(folder, images, fmt)
    todo = [p for p in images if p not in done]
    batches = range(0, len(todo), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="captions", unit="batch", leave=False)
    written, missing = 0, []
    for start in batches:
        chunk = todo[start:start + batch_size]
        found = {p: t for p, t in zip(chunk, make(chunk)) if t is not None}
        missing += [p for p in chunk if p not in found]
        if transform is not None:
            found = {p: transform(p, t) for p, t in found.items()}
        written += write_captions(folder, found, fmt, overwrite=True)
    return {"images": len(images), "already captioned": len(done), "written": written,
            "no caption found": [str(p.relative_to(folder)) for p in missing]}


def _read_rows(path: Path):
    if not path.exists():
        raise StablekitError(f"caption table {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        return json.loads(text)
    return list(csv.DictReader(text.splitlines()))


def _pick(row: dict, candidates: tuple[str, ...], what: str, path) -> str:
    lowered = {k.lower(): k for k in row}
    for c in candidates:
        if c in lowered:
            return lowered[c]
    raise StablekitError(f"{path} has no {what} column (columns: {', '.join(row)}); "
                         f"name it with --{what}-column")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
