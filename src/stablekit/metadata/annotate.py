"""Images that carry their generation metadata wherever an ordinary `image.save(path)` puts them.

PIL writes nothing of `image.info` by itself, so a generated image saved with `save("out.png")`
would lose A1111's text and stablekit's record. `annotate` returns an `AnnotatedImage`, a PIL
image whose `save` adds them in each format's own place, as A1111 does:
PNG: tEXt chunks "parameters" and "stablekit" (iTXt when the text is not Latin-1, PIL's
`PngInfo.add_text` choice, as A1111); JPEG and WebP: EXIF (see `stablekit.metadata.exif`).
Other formats are saved as PIL saves them. An explicit `pnginfo=` / `exif=` argument wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stablekit.metadata.exif import exif_bytes

PARAMETERS_KEY = "parameters"
RECORD_KEY = "stablekit"


class AnnotatedImage(Image.Image):
    """A PIL image whose `save` writes `.info["parameters"]` and `.info["stablekit"]` (see module doc).

    What is saved is read from `.info` at save time. `copy()` keeps the annotation; images derived
    by PIL operations (resize, crop, convert, ...) are plain PIL images, since their pixels no
    longer match the record.
    """

    def save(self, fp, format=None, **params) -> None:  # noqa: A002 - PIL's own argument name
        kind = _format_of(fp, format)
        parameters, record = self.info.get(PARAMETERS_KEY), self.info.get(RECORD_KEY)
        if kind == "PNG" and "pnginfo" not in params:
            params["pnginfo"] = png_text(parameters, record)
        elif kind in ("JPEG", "WEBP") and "exif" not in params and (parameters is not None or record is not None):
            params["exif"] = exif_bytes(parameters, record)
        super().save(fp, format, **params)

    def copy(self) -> "AnnotatedImage":
        return _as_annotated(super().copy())


def annotate(image: Image.Image, parameters: str | None, record: dict | None) -> AnnotatedImage:
    """A copy of `image` whose `.info` holds the A1111 text and the stablekit record (JSON text).

    An ordinary `save(path)` of the result writes both (PNG text chunks; EXIF UserComment and
    MakerNote for JPEG/WebP). `parameters` None or `record` None leaves that one out. The record
    is stored as sorted, ASCII-escaped JSON, so the same record always gives the same bytes.
    """
    out = _as_annotated(image.copy())
    for key, value in ((PARAMETERS_KEY, parameters), (RECORD_KEY, record_json(record))):
        if value is None:
            out.info.pop(key, None)
        else:
            out.info[key] = value
    return out


def as_annotated(image: Image.Image) -> AnnotatedImage:
    """`image` itself if annotated, else an annotated copy taking its metadata from its `.info`."""
    if isinstance(image, AnnotatedImage):
        return image
    return _as_annotated(image.copy())


def record_json(record: dict | str | None) -> str | None:
    """The record as the JSON text stored in files (a string is taken as JSON already)."""
    if record is None or isinstance(record, str):
        return record
    return json.dumps(record, sort_keys=True, ensure_ascii=True, default=_jsonable)


def png_text(parameters: str | None, record: str | None) -> PngInfo:
    """The PNG text chunks for the A1111 text and the record JSON (None ones left out)."""
    info = PngInfo()
    if parameters:
        info.add_text(PARAMETERS_KEY, parameters)
    if record is not None:
        info.add_text(RECORD_KEY, record)
    return info


def _as_annotated(image: Image.Image) -> AnnotatedImage:
    image.__class__ = AnnotatedImage  # a fresh copy from Image.copy(): same fields, no subclass state
    return image


def _format_of(fp, format) -> str | None:  # noqa: A002
    # The format PIL will pick: the given one, else from the file name's extension.
    if format:
        return format.upper()
    name = fp if isinstance(fp, (str, bytes, os.PathLike)) else getattr(fp, "name", "")
    if not isinstance(name, (str, bytes, os.PathLike)):  # e.g. a file opened from a descriptor
        return None
    ext = os.path.splitext(os.fsdecode(name))[1].lower()
    return Image.registered_extensions().get(ext)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)  # e.g. torch.dtype
