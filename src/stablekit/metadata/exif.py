"""Generation metadata in EXIF, for JPEG and WebP files: A1111's UserComment plus stablekit's record.

A1111 (`modules/images.py` `save_image_with_geninfo`) writes the infotext of a .jpg/.jpeg/.webp
as `piexif.dump({"Exif": {UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}})`:
a big-endian TIFF block whose IFD0 holds only the Exif IFD pointer, and an Exif IFD holding only
UserComment = b"UNICODE\\0" + the text in UTF-16BE. `exif_bytes` writes that block byte for byte
(tested against piexif; also its one quirk, an Exif IFD without a next-IFD offset) and, when there is a record, adds stablekit's JSON record as the Exif
IFD's MakerNote (b"stablekit:" + ASCII JSON), a tag A1111, ComfyUI and civitai do not read.

Reading follows A1111's `read_info_from_image`: the UserComment, decoded by its 8-byte prefix as
`piexif.helper.UserComment.load` does, and read as UTF-8 when the prefix names no encoding.
"""
from __future__ import annotations

import struct

EXIF_HEADER = b"Exif\x00\x00"  # what precedes the TIFF block in a JPEG APP1 segment
EXIF_IFD_POINTER = 0x8769
MAKER_NOTE = 0x927C
USER_COMMENT = 0x9286
RECORD_PREFIX = b"stablekit:"

_LONG, _UNDEFINED = 4, 7
# UserComment's 8-byte character-code prefixes (EXIF 2.3, table 9) and the codecs piexif uses.
_COMMENT_CODES = {b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis",
                  b"UNICODE\x00": "utf_16_be"}
_UNICODE_PREFIX = b"UNICODE\x00"


def user_comment(text: str) -> bytes:
    """`text` as an EXIF UserComment, as piexif.helper.UserComment.dump(text, encoding="unicode")."""
    return _UNICODE_PREFIX + text.encode("utf_16_be", errors="replace")


def decode_user_comment(data: bytes) -> str:
    """The text of an EXIF UserComment, as A1111 reads it.

    A known prefix picks the codec (errors replaced, as piexif); otherwise A1111 reads the whole
    value as UTF-8, ignoring errors. Unlike A1111 we also drop the NUL bytes an "undefined" prefix
    leaves at the start.
    """
    codec = _COMMENT_CODES.get(bytes(data[:8])) if len(data) >= 8 else None
    if codec is None:
        return bytes(data).decode("utf8", errors="ignore").lstrip("\x00")
    return bytes(data[8:]).decode(codec, errors="replace")


def exif_bytes(parameters: str | None, record_json: str | None) -> bytes:
    """The EXIF block (with its b"Exif\\0\\0" header, as PIL's `exif=` save option takes it).

    `parameters` goes into UserComment (left out when None; an empty string is written, as A1111
    does), `record_json` (ASCII JSON) into MakerNote. With no record the bytes equal A1111's.
    """
    entries = []
    if record_json is not None:
        entries.append((MAKER_NOTE, RECORD_PREFIX + record_json.encode("ascii")))
    if parameters is not None:
        entries.append((USER_COMMENT, user_comment(parameters)))
    return EXIF_HEADER + _tiff(sorted(entries))


def _tiff(exif_entries: list[tuple[int, bytes]]) -> bytes:
    # Layout as piexif.dump: header, IFD0 (only the Exif IFD pointer), the Exif IFD, then the
    # values that do not fit in an entry, in tag order. Offsets count from the TIFF header. Like
    # piexif, the Exif IFD has no next-IFD offset (a sub-IFD's is never followed; PIL, piexif and
    # exiftool read it), so A1111's readers see the very bytes A1111 writes.
    header = b"MM\x00\x2a" + struct.pack(">L", 8)
    exif_offset = 8 + 2 + 12 + 4
    data_offset = exif_offset + 2 + 12 * len(exif_entries)
    zeroth = struct.pack(">HHHLL", 1, EXIF_IFD_POINTER, _LONG, 1, exif_offset) + b"\x00\x00\x00\x00"
    exif, data = struct.pack(">H", len(exif_entries)), b""
    for tag, value in exif_entries:
        if len(value) <= 4:
            exif += struct.pack(">HHL", tag, _UNDEFINED, len(value)) + value.ljust(4, b"\x00")
            continue
        exif += struct.pack(">HHLL", tag, _UNDEFINED, len(value), data_offset + len(data))
        data += value + (b"\x00" if len(value) % 2 else b"")  # TIFF: values start on a word boundary
    return header + zeroth + exif + data


def read_exif_metadata(exif) -> tuple[str | None, str | None]:
    """(parameters text or None, record JSON text or None) from a PIL `Image.Exif`."""
    ifd = exif.get_ifd(EXIF_IFD_POINTER)
    comment, note = ifd.get(USER_COMMENT), ifd.get(MAKER_NOTE)
    parameters = decode_user_comment(_as_bytes(comment)) if comment is not None else None
    record = None
    if note is not None and _as_bytes(note).startswith(RECORD_PREFIX):
        record = _as_bytes(note)[len(RECORD_PREFIX):].rstrip(b"\x00").decode("ascii", errors="replace")
    return parameters or None, record


def _as_bytes(value) -> bytes:
    # PIL gives UNDEFINED values as bytes, but BYTE-typed ones (other writers) as int tuples.
    if isinstance(value, (tuple, list)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin-1", errors="replace")
    return bytes(value)
