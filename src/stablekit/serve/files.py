"""The only way the server touches a file a client names: inside a root folder, or refused.

safe_path refuses absolute paths, drive letters, NUL bytes, ".." components (also written with
backslashes) and anything whose resolved path leaves the root (a symlink pointing out of it).
Uploads are read with a size cap and saved under a cleaned name.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from fastapi import HTTPException

_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")
MAX_NAME, MAX_PATH = 255, 1024  # what Linux file systems take (NAME_MAX); longer is refused before any syscall


def safe_path(root: Path, relative: str) -> Path:
    """`root / relative`, resolved, guaranteed inside `root`. Raises HTTPException 400 for absolute or
    malformed paths and 403 for traversal or symlinks that leave the root. The file need not exist."""
    if not isinstance(relative, str) or relative.strip() == "":
        raise HTTPException(400, "a file name is needed")
    if "\x00" in relative:
        raise HTTPException(400, "file names cannot contain NUL bytes")
    text = relative.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise HTTPException(400, f"absolute paths are not allowed ({relative!r}); give a name relative to the folder")
    if ".." in PurePosixPath(text).parts:
        raise HTTPException(403, f"path {relative!r} leaves the folder")
    if len(text) > MAX_PATH or any(len(part) > MAX_NAME for part in text.split("/")):
        raise HTTPException(400, f"path {relative[:60]!r}... is too long (at most {MAX_NAME} characters a name)")
    base = Path(root).resolve()
    try:
        target = (base / text).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, or a name the file system refuses
        raise HTTPException(400, f"path {relative[:80]!r} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None
    if target != base and base not in target.parents:
        raise HTTPException(403, f"path {relative!r} leaves the folder")
    return target


def existing_file(root: Path, relative: str) -> Path:
    """safe_path that must be an existing regular file (404 otherwise)."""
    path = safe_path(root, relative)
    try:
        found = path.is_file()
    except OSError:
        found = False
    if not found:
        raise HTTPException(404, f"no file {relative!r}")
    return path


def safe_name(name: str | None, default: str = "upload.png") -> str:
    """A file name with no folders and only plain characters (uploads keep their own name, cleaned)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name.strip()
    base = _UNSAFE_NAME.sub("_", base).lstrip(".")
    return base[:120] or default


async def read_upload(upload, max_mb: int) -> bytes:
    """The bytes of an UploadFile, refusing (413) more than `max_mb` MiB without reading it all."""
    limit = max_mb * 1024 * 1024
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {max_mb} MB (the server's --max-upload-mb)")
    return data


def save_upload(data: bytes, folder: Path, name: str, overwrite: bool = True) -> Path:
    """Write uploaded bytes as folder/name (name already cleaned); without overwrite, a free
    "name (1).ext" as ComfyUI does. Returns the path written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = safe_path(folder, name)
    if not overwrite:
        stem, suffix, n = path.stem, path.suffix, 1
        while path.exists():
            path = path.with_name(f"{stem} ({n}){suffix}")
            n += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
