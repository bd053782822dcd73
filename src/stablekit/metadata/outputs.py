"""Where generated images go: plan and validate an output path before any compute, then write.

`plan_outputs(out, format, overwrite=, grid=)` checks everything the file system can tell before
the images exist (a known extension, the path not an existing non-folder unless it is a file to
`overwrite`, the folder creatable and writable), so a mistake costs no compute and reads as one
line. `check_count(plan, n)` adds the one check that needs the image count. `write_outputs(plan,
images)` writes them (and an A1111-style grid) with their metadata and returns the paths.

`out` is a file when it ends in .png, .jpg, .jpeg or .webp (and is not an existing folder), a
folder otherwise; a trailing "/" makes any name a folder. Folders get A1111's numbered names,
`NNNNN-SEED.EXT`, never overwriting; grids are `grid-NNNNN-SEED.EXT` beside them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.metadata.annotate import PARAMETERS_KEY, RECORD_KEY, annotate
from stablekit.metadata.files import IMAGE_EXTENSIONS, save_image

DEFAULT_FOLDER = "outputs"
# --format name -> file extension; the names are the CLI's choices.
FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_FORMAT_OF_EXTENSION = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


@dataclass(frozen=True)
class OutputPlan:
    """A validated destination: one file, or a folder of numbered files (and grids)."""

    path: Path
    is_folder: bool
    format: str  # "png" | "jpg" | "webp"
    overwrite: bool = False
    grid: bool = False


def plan_outputs(out: str | os.PathLike | None, format: str | None = None, *,  # noqa: A002
                 overwrite: bool = False, grid: bool = False) -> OutputPlan:
    """Decide and validate where images will go; raises a one-line StablekitError if they cannot.

    Creates nothing. `format` (png, jpg, webp) sets the folder's file type and must agree with a
    file's extension. An existing file is refused unless `overwrite`; something that is neither a
    regular file nor a folder (/dev/null, a socket) is always refused.
    """
    if format is not None and format not in FORMATS:
        raise StablekitError(f"unknown image format {format!r}; use one of {', '.join(FORMATS)}")
    raw = os.fspath(out) if out is not None else DEFAULT_FOLDER
    if not raw:
        raise StablekitError("--out is empty; give a folder or a .png/.jpg/.webp file name")
    path = Path(raw).expanduser()
    suffix = path.suffix.lower()
    if raw.endswith(("/", os.sep)) or path.is_dir() or not suffix:
        plan = OutputPlan(path, True, format or "png", overwrite, grid)
        if path.exists() and not path.is_dir():
            raise StablekitError(f"--out {raw} exists and is not a folder; give a folder or a .png/.jpg/.webp file name")
        _check_writable(path, raw)
        return plan
    if suffix not in IMAGE_EXTENSIONS:
        raise StablekitError(f"--out {raw}: unknown image extension {suffix!r}; use .png, .jpg or .webp, "
                             f"or end a folder name with '/'")
    kind = _FORMAT_OF_EXTENSION[suffix]
    if format is not None and format != kind:
        raise StablekitError(f"--out {raw} is a .{kind} file but --format is {format}; "
                             f"drop --format or change the extension")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise StablekitError(f"--out {raw} exists and is not a regular file; choose an image file name or a folder")
        if not overwrite:
            raise StablekitError(f"--out {raw} exists; add --overwrite to replace it, or choose another name")
    _check_writable(path.parent, raw)
    return OutputPlan(path, False, kind, overwrite, grid)


def check_count(plan: OutputPlan, count: int) -> None:
    """A file takes one image (or, with `grid`, the grid of all); refuse more before computing them."""
    if not plan.is_folder and count > 1 and not plan.grid:
        raise StablekitError(f"--out {plan.path} is one file but {count} images were asked for; "
                             "give a folder, or add --grid to write them as one grid image")


def write_outputs(plan: OutputPlan, images: list) -> list[Path]:
    """Write `images` (PIL images with their metadata in `.info`) as planned; returns the paths written.

    A file plan writes its one image, or with `grid` the grid of all of them. A folder plan writes
    every image and, with `grid` and more than one image, the grid (as A1111 by default).
    """
    if not images:
        return []
    if not plan.is_folder:
        image = grid_image(images) if plan.grid and len(images) > 1 else images[0]
        _make_folder(plan.path.parent)
        return [save_image(image, plan.path, format=_pil_format(plan.format), overwrite=plan.overwrite)]
    _make_folder(plan.path)
    ext = FORMATS[plan.format]
    number = next_number(plan.path)
    written = []
    for image in images:
        path = _free_name(plan.path, number, _seed_of(image), ext)
        written.append(save_image(image, path, overwrite=False))
        number = int(path.name.split("-")[0]) + 1
    if plan.grid and len(images) > 1:
        grids = [int(p.name.split("-")[1]) for p in plan.path.glob("grid-*") if p.name.split("-")[1].isdigit()]
        path = _free_name(plan.path, max(grids, default=-1) + 1, _seed_of(images[0]), ext, prefix="grid-")
        written.append(save_image(grid_image(images), path, overwrite=False))
    return written


def grid_image(images: list, rows: int | None = None):
    """An A1111 grid (`modules/images.py` `image_grid`): round(sqrt(n)) rows, filled row by row, black gaps.

    Carries the first image's parameters text, as A1111's grid does, and its record with a
    "grid" entry (rows, cols, images) added.
    """
    from PIL import Image

    rows = rows or max(1, round(math.sqrt(len(images))))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image, box=(i % cols * width, i // cols * height))
    record = _record_of(images[0])
    if record is not None:
        record = {**record, "grid": {"rows": rows, "cols": cols, "images": len(images)}}
    return annotate(grid, images[0].info.get(PARAMETERS_KEY), record)


def next_number(folder: Path) -> int:
    """A1111's next sequence number in a folder: one more than the largest `NNNNN-...` image name."""
    taken = [int(p.name.split("-")[0]) for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.name.split("-")[0].isdigit()]
    return max(taken, default=-1) + 1


def _free_name(folder: Path, number: int, seed, ext: str, prefix: str = "") -> Path:
    while True:  # a name another run took meanwhile is skipped, never overwritten
        path = folder / f"{prefix}{number:05d}{'' if seed is None else f'-{seed}'}{ext}"
        if not path.exists():
            return path
        number += 1


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StablekitError(f"cannot create folder {folder}: {exc.strerror or exc}") from None


def _check_writable(target: Path, raw: str) -> None:
    # The nearest existing ancestor must be a folder we can create a file in: a probe file (removed at
    # once) catches what permission bits cannot (read-only file systems, root on NFS, ACLs).
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StablekitError(f"--out {raw}: {existing} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stablekit-probe-", dir=existing)
    except OSError as exc:
        raise StablekitError(f"--out {raw}: cannot write in {existing} ({exc.strerror or exc}); "
                             "choose a writable folder") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _record_of(image) -> dict | None:
    raw = image.info.get(RECORD_KEY)
    if raw is None or isinstance(raw, dict):
        return raw
    return json.loads(raw)


def _seed_of(image):
    record = _record_of(image)
    return record.get("seed") if record else None


def _pil_format(name: str) -> str:
    return IMAGE_EXTENSIONS[FORMATS[name]]
