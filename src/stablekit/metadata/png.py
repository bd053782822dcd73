"""PNG files with generation metadata: A1111's "parameters" chunk plus stablekit's JSON record.

A1111 stores its infotext in a PNG text chunk named "parameters" (tEXt, or iTXt when the text is
not Latin-1: PIL's `PngInfo.add_text` picks, as A1111 uses it). stablekit writes the same chunk,
so A1111, ComfyUI and civitai read our images, and adds a "stablekit" chunk holding a JSON
record with everything needed to reproduce the image (ASCII-escaped, so always tEXt).
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.metadata.infotext import parse_parameters

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = "parameters"
RECORD_KEY = "stablekit"


def save_png(image, path, parameters: str, record: dict | None = None) -> Path:
    """Write `image` (PIL image or HxWxC uint8 array) to `path` as PNG with both text chunks.

    Atomic: the file is written and fsync'ed under a temporary name in the same folder, then
    renamed over `path`, so a reader never sees half a file. An empty `parameters` or a None
    `record` leaves that chunk out. Returns the path.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    info = PngInfo()
    if parameters:
        info.add_text(PARAMETERS_KEY, parameters)
    if record is not None:
        info.add_text(RECORD_KEY, json.dumps(record, ensure_ascii=True, default=_jsonable))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StablekitError(f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is writable") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)  # e.g. torch.dtype


def read_png_info(path) -> dict:
    """The generation metadata of a PNG written by stablekit or A1111.

    Returns {"parameters": the A1111 text or None, "fields": parse_parameters of it (or {}),
    "stablekit": the JSON record or None, "text": every other text chunk}. Raises a one-line
    StablekitError for a missing, non-PNG or damaged file or a broken stablekit record.
    """
    from PIL import Image

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != PNG_SIGNATURE:
        raise StablekitError(f"{path} is not a PNG file (it does not start with the PNG signature); png-info reads PNG files")
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything, checks CRCs, and reads text chunks after the image data
            text = dict(im.text)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as exc:
        raise StablekitError(f"{path} is a damaged PNG ({exc}); re-export or re-download it") from None

    parameters = text.pop(PARAMETERS_KEY, None)
    raw_record = text.pop(RECORD_KEY, None)
    record = None
    if raw_record is not None:
        try:
            record = json.loads(raw_record)
        except ValueError as exc:
            raise StablekitError(f"{path}: its '{RECORD_KEY}' text chunk is not valid JSON ({exc})") from None
    return {
        "parameters": parameters,
        "fields": parse_parameters(parameters) if parameters else {},
        "stablekit": record,
        "text": text,
    }
