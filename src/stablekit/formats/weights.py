"""Reading and writing tensor files: safetensors (lazy, header first) and refused-by-default pickles.

A `WeightFile` gives keys, shapes and dtypes without reading tensor data, and reads one tensor at a
time, cast to the requested dtype as it is read, so a model never needs a second full copy in
memory. `write_safetensors` streams tensors to disk one at a time in the safetensors format
(https://github.com/huggingface/safetensors#format): 8-byte little-endian header length, JSON
header (dtype, shape, data_offsets per tensor, optional "__metadata__" of strings), raw data.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
import weakref
from pathlib import Path
from typing import Callable, Iterable

import torch

from stablekit.errors import StablekitError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER = 100 * 1024 * 1024  # what the safetensors library accepts

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
_DTYPE_ALIASES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def parse_dtype(dtype) -> torch.dtype | None:
    """torch.dtype from a torch.dtype or a name ("fp16", "bf16", "float32", ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_ALIASES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise StablekitError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


def cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Floating tensors to `dtype`; integer tensors (position ids) are left alone."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


class WeightFile:
    """Tensors of one file by name: shapes and dtypes from the header, data on demand.

    A tensor read in its own dtype comes from safetensors' memory map (zero-copy; float data at an
    offset not 64-byte aligned is copied into aligned memory, see _open_safetensors). A tensor cast to
    another dtype is read with plain file reads, a few MiB at a time, cast as it is read: read
    through the map, every fp32 page touched stayed mapped (and counted in the process's resident
    memory) for as long as the file was open, so loading SD 1.5 into bf16 peaked at the bf16 model
    plus the whole fp32 file (6.6 GiB vs diffusers' 4.7 GiB, docs/reports/speed.md).
    """

    def __init__(self, path: Path, entries: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str], reader: Callable[[str], torch.Tensor], kind: str):
        self.path = path
        self.entries = entries
        self.metadata = metadata
        self._reader = reader
        self.kind = kind  # "safetensors" or "pickle"
        self._cast_reader: Callable | None = None  # safetensors: (key, dtype) -> tensor read without the map
        self._caches: dict = {}  # dtype -> CastCache or None (formats/weight_cache.py)

    def keys(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self.entries[key][1]

    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        try:
            if self._cast_reader is not None and needs_cast(self.entries[key][1], dtype):
                cache = self._cast_cache(dtype)
                cached = cache.get(key, self.entries[key][0]) if cache is not None else None
                if cached is not None:
                    return cached  # cast by an earlier load, mapped from the cache
                out = self._cast_reader(key, dtype)  # not through the map: no file page stays resident
                if cache is not None:
                    cache.put(key, out)
                return out
            return cast(self._reader(key), dtype)
        except StablekitError:
            raise
        except Exception as exc:  # the data behind a valid header can still be damaged
            raise StablekitError(f"{self.path}: cannot read tensor {key!r} ({exc}); the file is damaged") from None


    def _cast_cache(self, dtype: torch.dtype):
        if dtype not in self._caches:
            from stablekit.formats.weight_cache import MIN_FILE_BYTES, CastCache, cache_root, limit_bytes

            root = cache_root()
            big = self.kind == "safetensors" and self.path.stat().st_size >= MIN_FILE_BYTES
            # an entry larger than the whole cache would be written only to be deleted
            size = sum(math.prod(shape) * dtype.itemsize for shape, stored in self.entries.values()
                       if stored.is_floating_point)
            try:
                fits = root is not None and big and size <= limit_bytes()
                self._caches[dtype] = CastCache(self.path, dtype, root) if fits else None
            except OSError:
                self._caches[dtype] = None
        return self._caches[dtype]


def needs_cast(stored: torch.dtype, dtype: torch.dtype | None) -> bool:
    """Whether `cast(tensor of dtype stored, dtype)` makes a new tensor."""
    return dtype is not None and stored.is_floating_point and stored != dtype


def open_weights(path, allow_pickle: bool = False) -> WeightFile:
    """Open a .safetensors file lazily, or a pickle (.ckpt/.pt/.pth/.bin) if allow_pickle.

    Pickles can run code when loaded, so they are refused unless asked for, and then read with
    `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
    """
    path = Path(path)
    if not path.exists():
        raise StablekitError(f"{path} does not exist")
    if path.is_dir():
        raise StablekitError(f"{path} is a folder, not a weights file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _open_pickle(path, allow_pickle)
    return _open_safetensors(path)


def read_safetensors_header(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensor entries, __metadata__) of a safetensors file, validated against the file size."""
    size = path.stat().st_size
    bad = f"{path} is not a valid safetensors file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise StablekitError(f"{bad} (only {size} bytes); the file is empty or truncated")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise StablekitError(f"{bad} (header length {n} for a {size}-byte file); it is corrupt or not safetensors")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StablekitError(f"{bad} (header is not JSON: {exc}); it is corrupt or not safetensors") from None
    except OSError as exc:
        raise StablekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise StablekitError(f"{bad} (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    end = 0
    for key, entry in header.items():
        try:
            start, stop = entry["data_offsets"]
            dtype = _ST_DTYPES[entry["dtype"]]
            numel = math.prod(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise StablekitError(f"{bad} (entry {key!r} is malformed: {entry!r})") from None
        if stop - start != numel * dtype.itemsize or stop > data_size or start < 0:
            raise StablekitError(
                f"{bad}: tensor {key!r} needs bytes {start}..{stop} but the data is {data_size} bytes; "
                "the file is truncated or corrupt")
        end = max(end, stop)
    return header, metadata


def _open_safetensors(path: Path) -> WeightFile:
    from safetensors import SafetensorError, safe_open

    header, metadata = read_safetensors_header(path)
    entries = {k: (tuple(v["shape"]), _ST_DTYPES[v["dtype"]]) for k, v in header.items()}
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as exc:
        raise StablekitError(f"{path} is not a valid safetensors file ({exc}); it is corrupt or truncated") from None
    cast_reader = _CastReader(path, header)

    def read(key: str) -> torch.Tensor:
        # Float data at a file offset that is not 64-byte aligned is read into fresh (aligned) memory:
        # oneDNN/MKL sum in another order for unaligned weights, so a zero-copy view gave results
        # 1e-7..1e-6 away from the same weights held in ordinary tensors, and whether a tensor was
        # aligned depended on the header's length (measured: fp32 txt2img from a file vs the same
        # model built in memory differed, or not, by library version). Chunked: no page stays resident.
        if cast_reader.aligned(key):
            return handle.get_tensor(key)
        return cast_reader(key, _ST_DTYPES[header[key]["dtype"]])

    weights = WeightFile(path, entries, dict(metadata), read, "safetensors")
    weights._cast_reader = cast_reader
    from stablekit.formats.weight_cache import finish_all

    # the cast tensors written during this load become a cache entry once the file is let go
    weakref.finalize(weights, finish_all, weights._caches)
    return weights


class _CastReader:
    """Reads one safetensors tensor cast to another dtype, a few MiB at a time, from a private map of
    the file whose pages are dropped (madvise DONTNEED) as soon as they are cast: the only memory a
    read leaves behind is its output. Through safetensors' own map every fp32 page touched stayed
    resident while the file was open; a fresh fp32 temporary per tensor fragmented glibc's heap
    (every 4 MiB tensor cast to bf16 kept 4 MiB resident: measured). Against reading with pread
    through one reused buffer (the previous way, still used for misaligned data), the map saves a
    copy: SD 1.5's UNet cast to bf16 in 2.4-2.7 s vs 3.7-5.7 s, same process, taking turns."""

    CHUNK = 8 * 1024 * 1024

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header
        with open(path, "rb") as f:
            self.data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        self.map: mmap.mmap | None = None
        self.buf: torch.Tensor | None = None
        self.lock = threading.Lock()

    def aligned(self, key: str) -> bool:
        """Whether `key` can be used straight from the map: not a float, or at a 64-byte-aligned offset."""
        entry = self.header[key]
        stored = _ST_DTYPES[entry["dtype"]]
        return not stored.is_floating_point or (self.data_start + entry["data_offsets"][0]) % 64 == 0

    def __call__(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        entry = self.header[key]
        start, stop = entry["data_offsets"]
        stored = _ST_DTYPES[entry["dtype"]]
        out = torch.empty(entry["shape"], dtype=dtype)
        flat = out.view(-1)
        step = self.CHUNK // stored.itemsize * stored.itemsize
        base = self.data_start + start
        with self.lock:
            if base % stored.itemsize or not hasattr(mmap, "MADV_DONTNEED"):  # misaligned, or no madvise (Windows)
                self._pread(flat, base, stop - start, stored, step)
                return out
            if self.map is None:
                with open(self.path, "rb") as f:  # private and never written: dropped pages read back as they were
                    self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            page = mmap.PAGESIZE
            for at in range(0, stop - start, step):
                n = min(step, stop - start - at)
                src = torch.frombuffer(self.map, dtype=stored, count=n // stored.itemsize, offset=base + at)
                first = at // stored.itemsize
                flat[first:first + n // stored.itemsize].copy_(src)
                del src
                lo = (base + at) // page * page
                hi = min(len(self.map), -(-(base + at + n) // page) * page)
                self.map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return out

    def _pread(self, flat: torch.Tensor, base: int, nbytes: int, stored: torch.dtype, step: int) -> None:
        """Misaligned data (an old writer without safetensors' 8-byte header padding): pread into one buffer."""
        if self.buf is None:
            self.buf = torch.empty(self.CHUNK, dtype=torch.uint8)
        view = memoryview(self.buf.numpy())
        with open(self.path, "rb", buffering=0) as f:
            for at in range(0, nbytes, step):
                n = min(step, nbytes - at)
                done = 0
                while done < n:
                    got = os.preadv(f.fileno(), [view[done:n]], base + at + done)
                    if got <= 0:
                        raise OSError(f"file ended at byte {base + at + done}")
                    done += got
                first = at // stored.itemsize
                flat[first:first + n // stored.itemsize].copy_(self.buf[:n].view(stored))


def _open_pickle(path: Path, allow_pickle: bool) -> WeightFile:
    if not allow_pickle:
        raise StablekitError(
            f"{path.name} is a pickle ({path.suffix}), which can run code when loaded; refused. "
            "Pass --allow-pickle (allow_pickle=True) to load it with torch.load(weights_only=True), "
            "or convert it to .safetensors once")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # old (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusal or a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StablekitError(f"cannot load pickle {path}: {first}") from None
    state = obj
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning/LDM checkpoints nest the weights
    if not isinstance(state, dict):
        raise StablekitError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    entries = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    return WeightFile(path, entries, {}, tensors.__getitem__, "pickle")


def write_safetensors(path, items: Iterable[tuple[str, Callable[[], torch.Tensor], tuple, torch.dtype]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors to `path` one at a time (atomically: a temporary file, then rename).

    items: (key, make_tensor, shape, dtype); make_tensor is called once, just before its bytes are
    written, so at most one converted tensor exists at a time. Keys and metadata are written in
    sorted order and nothing depends on the time, so equal inputs give equal bytes.
    """
    path = Path(path)
    items = sorted(items, key=lambda item: item[0])
    header: dict = {}
    offset = 0
    for key, _, shape, dtype in items:
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        # Sorted, so the same tensors and metadata always give the same bytes.
        header = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}, **header}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for key, make, shape, dtype in items:
                tensor = make()
                if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                    raise RuntimeError(f"{key}: produced {tuple(tensor.shape)} {tensor.dtype}, announced {shape} {dtype}")
                flat = tensor.detach().cpu().contiguous().reshape(-1)  # a GPU model saves too
                if flat.numel():
                    f.write(flat.view(torch.uint8).numpy().data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
