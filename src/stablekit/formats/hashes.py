"""The model hashes AUTOMATIC1111's web UI prints, computed the same way.

Hashing a 4 GB checkpoint takes ~14 s here, so full-file digests are cached per (path, size,
mtime) in `<cache dir>/hashes.json` as A1111 does in its cache.json; the cache dir is
$STABLEKIT_CACHE_DIR, else ~/.cache/stablekit. A cache that cannot be read or written is ignored.

"Model hash" in A1111 infotext (since v1.0) is the first 10 hex digits of the sha256 of the whole
file ("sha256 short", modules/hashes.py). The legacy 8-hex hash (before v1.0,
modules/sd_models.py `model_hash`) is the sha256 of the 64 KiB at offset 1 MiB; files shorter
than that hash whatever is there (possibly nothing).
"""
from __future__ import annotations

import hashlib
import json
import os
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


def cache_dir() -> Path:
    return Path(os.environ.get("STABLEKIT_CACHE_DIR") or Path.home() / ".cache" / "stablekit")


def cached_sha256(path) -> str:
    """sha256_file, remembered per (absolute path, size, mtime) so a file is hashed once."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    cache_file = cache_dir() / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    if not isinstance(cache, dict):
        cache = {}
    cache[key] = {"stamp": stamp, "sha256": digest}
    try:  # write-then-rename: concurrent writers can lose an entry, never corrupt the file
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"hashes.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass
    return digest


def a1111_short_hash(path) -> str:
    """A1111's "Model hash": first 10 hex digits of the file's sha256."""
    return cached_sha256(path)[:10]


def a1111_legacy_hash(path) -> str:
    """A1111's pre-1.0 model hash: sha256 of 0x10000 bytes at offset 0x100000, first 8 hex digits."""
    try:
        with open(Path(path), "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
