"""Weights cast once, kept on disk: later loads map them instead of reading and casting again.

Loading an fp32 file into bf16 has to read every fp32 byte and cast it (SD 1.5: 4.2 GB read, 2 GB
written); diffusers' fp32 load maps its file and reads nothing until the first step, so the cast
load measured 2-3x slower (docs/reports/speed.md). The first cast load of a large file therefore
records which tensors it cast, and when the file is let go (its WeightFile garbage-collected, at the
end of the load) the one writer thread queues the entry `<cache>/weights/<id>.bin` + `<id>.json`
and writes it once no tensor has been cast for QUIET_SECONDS (the load is over) while the caller
goes on: writing it during the load made SD 1.5's first load 42.5 s instead of 17 s. The
writer reads and casts the *source* again rather than keeping the loaded tensors: those are the
model's parameters, and a fused LoRA changes them in place (adapters/apply.py) before the write could
end. Later loads of the same file (same real path, size and mtime) into the same dtype map the cast
bytes copy-on-write (zero-copy, read lazily by the page cache; an in-place change never reaches the
file). Entries hold only the tensors that were read; others are read from the source as before.

An entry is usable only once its data is complete, flushed and renamed into place and its index
written after it, so a kill at any moment leaves nothing a later load trusts. The writer holds an
exclusive lock on its `.partial` file: a later load takes over a partial whose writer died at once
(the lock went with the process) and leaves a live one alone (weight_cache_files.py). The process
waits for a started write at exit (the writer is a normal thread): the next run is what it is for. The cache is
bounded (STABLEKIT_WEIGHT_CACHE_GB, default 8; least recently used entries go first; 0 turns it off),
keeps MIN_FREE_BYTES of the disk free, and lives beside the precision and trace caches.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import mmap
import os
import shutil
import struct
import threading
import time
import weakref
from pathlib import Path

import torch

from stablekit.formats.weight_cache_files import claim, evict  # noqa: F401 - evict is public here too

VERSION = 1
DEFAULT_GB = 8.0
MIN_FILE_BYTES = 64 * 1024 * 1024  # smaller files load in well under a second anyway
MIN_FREE_BYTES = 2 * 1024**3  # never fill the disk for a speed-up: skip the entry instead
ALIGN = 64
CHUNK_BYTES = 8 * 1024 * 1024  # the writer's cast buffer
WRITER_NICE = 5  # the writer yields to the caller's first image (Linux: per-thread niceness)


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
    """The cached casts of one source file into one dtype: `get` serves them, `put` records the
    tensors a load cast, `finish` starts writing them (once, on a writer thread)."""

    def __init__(self, source: Path, dtype: torch.dtype, root: Path):
        st = source.stat()
        self.stat = (st.st_size, st.st_mtime_ns)
        ident = f"v{VERSION}|{os.path.realpath(source)}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
        stem = hashlib.sha1(ident.encode()).hexdigest()[:20]
        self.root, self.dtype, self.source = root, dtype, str(source)
        self.index_path, self.data_path = root / f"{stem}.json", root / f"{stem}.bin"
        self.entries: dict[str, list[int]] = {}
        self.map: mmap.mmap | None = None
        self.cast: dict[str, int] = {}  # key -> numel, in load order: what the entry will hold
        self.started = False
        self.lock = threading.Lock()
        self._open_existing()

    def _valid_index(self) -> dict | None:
        """The entry's index if the entry is complete (its data has the size the index gives)."""
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("version") == VERSION and index["size"] and self.data_path.stat().st_size == index["size"]:
                return index
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def _open_existing(self) -> None:
        index = self._valid_index()
        if index is None:
            return
        try:
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
        """Note that `key` was cast (only while no usable entry exists). No bytes are kept or
        written here: the writer casts the source again after the load."""
        global _LAST_CAST
        _LAST_CAST = time.monotonic()
        with self.lock:
            if self.map is None and not self.started:
                self.cast.setdefault(key, tensor.numel())

    def finish(self) -> None:
        """Queue the entry of what was cast for the writer thread (written in this thread when the
        interpreter is already exiting: it would not wait for a new thread then)."""
        with self.lock:
            if self.started or self.map is not None or not self.cast:
                return
            self.started = True
        if not threading.main_thread().is_alive():
            self.write()
            return
        _enqueue(self)

    def planned_size(self) -> int:
        size = 0
        for numel in self.cast.values():
            size += -size % ALIGN + numel * self.dtype.itemsize
        return size

    def write(self) -> bool:
        """Cast the recorded tensors from the source into a new entry. True if the entry was made;
        any failure (full disk, read-only cache, another writer, a changed source) leaves none."""
        size = self.planned_size()
        if size > limit_bytes():
            return False  # larger than the whole cache: it would be written only to be deleted
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            evict(self.root, limit_bytes() - size)
            if shutil.disk_usage(self.root).free - size < MIN_FREE_BYTES:
                return False
        except OSError:
            return False
        partial = self.data_path.with_name(self.data_path.name + ".partial")
        writer = claim(partial)
        if writer is None:
            return False  # a live writer in another process makes this entry
        try:
            with writer:
                if self._valid_index() is not None:
                    raise FileExistsError("another process made this entry meanwhile")
                written = self._write_data(writer)
                writer.flush()
                os.fsync(writer.fileno())  # a crash after the rename must not leave an index over missing data
                st = os.stat(self.source)
                if (st.st_size, st.st_mtime_ns) != self.stat:
                    raise OSError("the source changed while its entry was written")
                os.replace(partial, self.data_path)
                index = {"version": VERSION, "source": self.source, "dtype": str(self.dtype), "size": size,
                         "entries": written}
                tmp = self.index_path.with_name(self.index_path.name + ".tmp")
                tmp.write_text(json.dumps(index))
                os.replace(tmp, self.index_path)  # still locked: no other writer starts before the index is in
            return True
        except Exception:  # noqa: BLE001 - a cache must never break the program that loaded weights
            partial.unlink(missing_ok=True)
            if self._valid_index() is None:
                self.data_path.unlink(missing_ok=True)
            return False

    def _write_data(self, f) -> dict[str, list[int]]:
        """Cast each recorded tensor from the source, a chunk at a time through one reused buffer
        (the source pages dropped as they are cast): the writer adds a few MiB to the process, not
        a tensor's worth (SD 1.5's token embedding: 75 MB in bf16)."""
        from stablekit.formats.weights import _ST_DTYPES, _CastReader, read_safetensors_header  # (weights imports this)

        source = Path(self.source)
        header, _ = read_safetensors_header(source)
        with open(source, "rb") as src:
            data_start = 8 + struct.unpack("<Q", src.read(8))[0]
            source_map = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_COPY)  # private, never written
        buf = torch.empty(CHUNK_BYTES // self.dtype.itemsize, dtype=self.dtype)
        written, at = {}, 0
        try:
            for key, numel in self.cast.items():
                stored = _ST_DTYPES[header[key]["dtype"]]
                begin, end = header[key]["data_offsets"]
                if (end - begin) != numel * stored.itemsize:
                    raise OSError(f"{key} changed size")
                pad = -at % ALIGN
                f.write(b"\0" * pad)
                base = data_start + begin
                if base % stored.itemsize or not hasattr(mmap, "MADV_DONTNEED"):  # misaligned data, or Windows
                    f.write(_CastReader(source, header)(key, self.dtype).reshape(-1).view(torch.uint8).numpy().data)
                else:
                    for first in range(0, numel, len(buf)):
                        n = min(len(buf), numel - first)
                        offset = base + first * stored.itemsize
                        buf[:n].copy_(torch.frombuffer(source_map, dtype=stored, count=n, offset=offset))
                        f.write(buf[:n].view(torch.uint8).numpy().data)
                        lo = offset // mmap.PAGESIZE * mmap.PAGESIZE
                        source_map.madvise(mmap.MADV_DONTNEED, lo, min(len(source_map), offset + n * stored.itemsize) - lo)
                written[key] = [at + pad, numel]
                at += pad + numel * self.dtype.itemsize
        finally:
            source_map.close()
        return written


QUIET_SECONDS = 1.0  # the writer starts once no tensor has been cast for this long: the load is over
_QUEUE: list[CastCache] = []
_QUEUE_LOCK = threading.Lock()
_WRITER: threading.Thread | None = None
_LAST_CAST = 0.0  # time.monotonic() of the last cast a load recorded


def _enqueue(cache: CastCache) -> None:
    global _WRITER
    with _QUEUE_LOCK:
        _QUEUE.append(cache)
        if _WRITER is None:
            # a normal (not daemon) thread: the interpreter waits for it at exit
            _WRITER = threading.Thread(target=_write_queued, name="stablekit-weight-cache", daemon=False)
            _WRITER.start()


def _write_queued() -> None:
    """The writer thread: entries one at a time, each once the load that cast it has ended (a model's
    files are let go one by one while the next is still being cast; writing then would slow it)."""
    global _WRITER
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE))
    except (AttributeError, OSError):
        pass  # not Linux: the writer runs at the caller's priority
    while True:
        with _QUEUE_LOCK:
            if not _QUEUE:
                _WRITER = None
                return
            cache = _QUEUE.pop(0)
        while (idle := time.monotonic() - _LAST_CAST) < QUIET_SECONDS:
            time.sleep(min(0.25, QUIET_SECONDS - idle))
        cache.write()


def wait_for_writes(timeout: float | None = None) -> None:
    """Block until the entries queued in this process are written (tests, benchmarks)."""
    writer = _WRITER
    if writer is not None:
        writer.join(timeout)


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
