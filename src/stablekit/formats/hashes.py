"""The model hashes AUTOMATIC1111's web UI prints, computed the same way (and cached nowhere).

"Model hash" in A1111 infotext (since v1.0) is the first 10 hex digits of the sha256 of the whole
file ("sha256 short", modules/hashes.py). The legacy 8-hex hash (before v1.0,
modules/sd_models.py `model_hash`) is the sha256 of the 64 KiB at offset 1 MiB; files shorter
than that hash whatever is there (possibly nothing).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from stablekit.errors import StablekitError

_BLOCK = 1 << 20


def sha256_file(path) -> str:
    """Full sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def a1111_short_hash(path) -> str:
    """A1111's "Model hash": first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]


def a1111_legacy_hash(path) -> str:
    """A1111's pre-1.0 model hash: sha256 of 0x10000 bytes at offset 0x100000, first 8 hex digits."""
    try:
        with open(Path(path), "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
