"""Image files with generation metadata: writing them atomically, reading PNG, JPEG and WebP.

A1111 stores its infotext in a PNG text chunk named "parameters" and, in JPEG and WebP, in the
EXIF UserComment; stablekit writes the same, so A1111, ComfyUI and civitai read our images, and
adds its JSON record ("stablekit" chunk; EXIF MakerNote). See `annotate` and `exif`.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.metadata.annotate import PARAMETERS_KEY, RECORD_KEY, annotate, as_annotated
from stablekit.metadata.exif import read_exif_metadata
from stablekit.metadata.infotext import parse_parameters

# The extensions stablekit writes and reads, with PIL's format name for each.
IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# A1111's defaults (jpeg_quality 80, lossy WebP at the same quality); PNG is lossless.
SAVE_OPTIONS = {"JPEG": {"quality": 80}, "WEBP": {"quality": 80}}
_SIGNATURES = {"PNG": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"), "JPEG": lambda h: h.startswith(b"\xff\xd8\xff"),
               "WEBP": lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"}


def save_image(image, path, *, format: str | None = None, overwrite: bool = True) -> Path:  # noqa: A002
    """Write `image` with its metadata to `path`, atomically; returns the path.

    The image is an `annotate`d one or any PIL image whose `.info` holds "parameters" / "stablekit"
    text (as the pipeline's images). The format follows the extension (.png, .jpg/.jpeg, .webp)
    unless `format` ("PNG", "JPEG", "WEBP") is given. The file is written and fsync'ed under a
    temporary name in the same folder, then renamed over `path`, so a reader never sees half a
    file. `overwrite=False` refuses an existing `path`. Errors are one-line StablekitErrors.
    """
    path = Path(path)
    kind = (format or IMAGE_EXTENSIONS.get(path.suffix.lower(), "")).upper()
    if kind not in SAVE_OPTIONS and kind != "PNG":
        raise StablekitError(f"cannot save {path}: unknown image extension {path.suffix!r}; use .png, .jpg or .webp")
    image = as_annotated(image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if not overwrite and path.exists():
            raise FileExistsError(17, "the file exists (use overwrite to replace it)")
        with open(tmp, "wb") as f:
            image.save(f, format=kind, **SAVE_OPTIONS.get(kind, {}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # Clean up without masking the real error (on a read-only file system unlink fails too).
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StablekitError(f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is writable") from None
    return path


def save_png(image, path, parameters: str, record: dict | None = None) -> Path:
    """Write `image` (PIL image or HxWxC uint8 array) to `path` as PNG with both text chunks.

    Atomic as `save_image`. An empty `parameters` or a None `record` leaves that chunk out.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    return save_image(annotate(image, parameters, record), path, format="PNG")


def read_image_info(path) -> dict:
    """The generation metadata of a PNG, JPEG or WebP written by stablekit or A1111.

    Returns {"format": "PNG" | "JPEG" | "WEBP", "parameters": the A1111 text or None, "fields":
    parse_parameters of it (or {}), "stablekit": the JSON record or None, "text": every other PNG
    text chunk}. As A1111's `read_info_from_image`, a non-empty EXIF UserComment wins over a
    "parameters" chunk. Raises a one-line StablekitError for a missing, unsupported or damaged
    file or a broken stablekit record.
    """
    from PIL import Image

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    kind = next((name for name, matches in _SIGNATURES.items() if matches(head)), None)
    if kind is None:
        raise StablekitError(f"{path} is not a PNG, JPEG or WebP file (by its first bytes); png-info reads those")
    try:
        with Image.open(path, formats=[kind]) as im:
            im.load()  # decodes everything, checks CRCs, and reads text chunks after the image data
            text = dict(getattr(im, "text", {}))
            exif_parameters, exif_record = read_exif_metadata(im.getexif())
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as exc:
        raise StablekitError(f"{path} is a damaged {kind} ({exc}); re-export or re-download it") from None

    parameters = exif_parameters or text.pop(PARAMETERS_KEY, None)
    text.pop(PARAMETERS_KEY, None)
    raw_record = text.pop(RECORD_KEY, None) or exif_record
    record = None
    if raw_record is not None:
        try:
            record = json.loads(raw_record)
        except ValueError as exc:
            raise StablekitError(f"{path}: its '{RECORD_KEY}' record is not valid JSON ({exc})") from None
    return {
        "format": kind,
        "parameters": parameters,
        "fields": parse_parameters(parameters) if parameters else {},
        "stablekit": record,
        "text": text,
    }


# The name this reader had when it read PNG only; kept for callers and scripts.
read_png_info = read_image_info
