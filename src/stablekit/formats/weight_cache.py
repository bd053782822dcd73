"""Weights cast once, kept on disk: later loads map them instead of reading and casting again.

Loading an fp32 file into bf16 has to read every fp32 byte and cast it (SD 1.5: 4.2 GB read, 2 GB
written); diffusers' fp32 load maps its file and reads nothing until the first step, so the cast
load measured 2-3x slower (docs/reports/speed.md). The first cast load of a large file therefore
also appends each cast tensor to `<cache>/weights/<id>.bin` and, when the file is closed (its
WeightFile garbage-collected, or at exit), writes the index `<id>.json` that makes the entry
usable; later loads of the same file (same real path, size and mtime) into the same dtype map the
cast bytes copy-on-write (zero-copy, read lazily by the page cache, and an in-place change such as a
fused LoRA never reaches the file). Entries hold only the tensors that were read; others are read
from the source as before. The cache is bounded (STABLEKIT_WEIGHT_CACHE_GB, default 8; least
recently used entries go first; 0 turns it off) and lives beside the precision and trace caches.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import mmap
import os
import threading
import time
import weakref
from pathlib import Path

import torch

VERSION = 1
DEFAULT_GB = 8.0
MIN_FILE_BYTES = 64 * 1024 * 1024  # smaller files load in well under a second anyway
ALIGN = 64


def cache_root() -> Path | None:
    """The folder of cast weights, or None when the cache is off."""
    if limit_bytes() <= 0:
        return None
    root = os.environ.get("STABLEKIT_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stablekit"
    return Path(root) / "weights"


def limit_bytes() -> int:
    raw = os.environ.get("STABLEKIT_WEIGHT_CACHE_GB", "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_GB
    except ValueError:
        gb = DEFAULT_GB  # a bad value must not break loading; the default is safe
    return int(gb * 1024**3)


class CastCache:
    """The cached casts of one source file into one dtype: `get` serves them, `put` records new ones."""

    def __init__(self, source: Path, dtype: torch.dtype, root: Path):
        st = source.stat()
        ident = f"v{VERSION}|{os.path.realpath(source)}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
        stem = hashlib.sha1(ident.encode()).hexdigest()[:20]
        self.root, self.dtype, self.source = root, dtype, str(source)
        self.index_path, self.data_path = root / f"{stem}.json", root / f"{stem}.bin"
        self.entries: dict[str, list[int]] = {}
        self.map: mmap.mmap | None = None
        self.written: dict[str, list[int]] = {}
        self.writer = None
        self.size = 0
        self.lock = threading.Lock()
        self._open_existing()

    def _open_existing(self) -> None:
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("version") != VERSION or self.data_path.stat().st_size != index["size"] or not index["size"]:
                return
            with open(self.data_path, "rb") as f:
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes stay in memory
            self.entries = index["entries"]
            _MAPS.append((ctypes.addressof(ctypes.c_char.from_buffer(self.map)), len(self.map), weakref.ref(self.map)))
            os.utime(self.index_path)  # recently used: evicted last
        except (OSError, ValueError, KeyError, TypeError):
            self.entries, self.map = {}, None

    def get(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        entry = self.entries.get(key)
        if entry is None or self.map is None:
            return None
        offset, numel = entry
        if numel != math.prod(shape):
            return None
        if numel == 0:
            return torch.empty(shape, dtype=self.dtype)
        return torch.frombuffer(self.map, dtype=self.dtype, count=numel, offset=offset).view(shape)

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Append a freshly cast tensor (only while no usable entry exists: one writer per entry)."""
        if self.map is not None or key in self.written:
            return
        with self.lock:
            try:
                if self.writer is None:
                    self.root.mkdir(parents=True, exist_ok=True)
                    _drop_stale(self._partial())  # left by a process that was killed while loading
                    fd = os.open(self._partial(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # another writer: skip
                    self.writer = os.fdopen(fd, "wb")
                pad = -self.size % ALIGN
                data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                self.writer.write(b"\0" * pad)
                self.writer.write(data.data)
                self.written[key] = [self.size + pad, tensor.numel()]
                self.size += pad + data.nbytes
            except OSError:  # disk full, read-only cache, a concurrent writer: loading goes on without it
                self._abandon()

    def _partial(self) -> Path:
        return self.data_path.with_name(self.data_path.name + ".partial")

    def _abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._partial().unlink(missing_ok=True)
        self.writer, self.written = None, {"": [0, 0]}  # a non-empty marker: put() stays off

    def finish(self) -> None:
        """Make what was written usable: data in place, then the index (the entry exists only once both do)."""
        with self.lock:
            if self.writer is None or not self.written:
                return
            try:
                self.writer.close()
                self.writer = None
                if self.size > limit_bytes():
                    raise OSError("larger than the cache")
                evict(self.root, limit_bytes() - self.size)
                os.replace(self._partial(), self.data_path)
                index = {"version": VERSION, "source": self.source, "dtype": str(self.dtype), "size": self.size,
                         "entries": self.written}
                tmp = self.index_path.with_name(self.index_path.name + ".partial")
                tmp.write_text(json.dumps(index))
                os.replace(tmp, self.index_path)
            except OSError:
                self._partial().unlink(missing_ok=True)
                self.data_path.unlink(missing_ok=True)


STALE_SECONDS = 3600  # a partial entry untouched this long belongs to no live load


def _drop_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > STALE_SECONDS:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def evict(root: Path, room: int) -> None:
    """Delete least recently used entries until the others take at most `room` bytes (and leftovers
    of interrupted loads: data without an index, stale partial files)."""
    for leftover in list(root.glob("*.partial")) + [b for b in root.glob("*.bin") if not b.with_suffix(".json").exists()]:
        _drop_stale(leftover)
    entries = []
    for index in root.glob("*.json"):
        data = index.with_suffix(".bin")
        try:
            entries.append((index.stat().st_mtime, data.stat().st_size if data.exists() else 0, index, data))
        except OSError:
            continue
    total = sum(e[1] for e in entries)
    for _, size, index, data in sorted(entries):
        if total <= room:
            break
        index.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        total -= size


def finish_all(caches: dict) -> None:
    for cache in list(caches.values()):
        if cache is not None:
            cache.finish()


_MAPS: list[tuple[int, int, weakref.ref]] = []  # (address, length, map) of mapped entries (weak: tensors own them)


def release(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a cached tensor that is being replaced (e.g. by a channels_last
    copy): otherwise every page it touched stays counted in the process's memory for as long as any
    other tensor of the same entry lives. Only for tensors nobody changed in place: the mapping is
    private, so dropped pages come back from the file as they were."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return  # Windows: no madvise; the pages go when the entry is unmapped
    ptr, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    _MAPS[:] = [m for m in _MAPS if m[2]() is not None]
    for base, length, ref in _MAPS:
        mapped = ref()
        if mapped is not None and base <= ptr < base + length:
            page = mmap.PAGESIZE
            start = -(-(ptr - base) // page) * page  # whole pages inside the tensor only
            stop = (ptr - base + nbytes) // page * page
            if stop > start:
                mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)
            return


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc only): loading and re-laying out weights leave
    holes that otherwise stay resident (measured 168 MiB after SD 1.5's bf16 load)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
