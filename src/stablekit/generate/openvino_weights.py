"""The torch UNet's weights beside OpenVINO's copy: mapped from the cache entry instead of kept in RAM.

The OpenVINO backend (generate/openvino_unet.py) keeps the torch UNet for the calls OpenVINO does not
take (ControlNet, FreeU, DeepCache, ...), so without this the process holds the weights twice: at full
SD 1.5 size 3.4 GB of torch fp32 beside OpenVINO's compiled copy (docs/reports/speed.md, Session 13:
peak RSS 2.45x diffusers'). The converted model in the cache entry (`unet.bin`, f32, uncompressed) holds
every weight byte for byte under the parameter's own name (`self.unet.<name>`, written by
`openvino.convert_model`), so once the entry is on disk each torch tensor is pointed at a private,
copy-on-write map of that file: the tensors keep their identity (the module, its traces and LoRA
code see the same Parameter objects), nothing is resident until read, and an in-place change (a LoRA
fused by adapters/apply.py) copies only the pages it writes, never touching the file.

Only tensors whose name, shape, dtype and bytes match are mapped (the bytes compared by reading the
file, not through the map, so the comparison leaves nothing resident); anything else stays as it was.
The IR packs constants without alignment, and oneDNN sums in another order for unaligned weights
(formats/weights.py measured 1e-7..1e-6), so before the first torch fallback `restore` copies the
mapped tensors into fresh memory: the fallback then runs on exactly the bytes, in exactly the memory
layout, it would have had without the release.

`page_out` does the same for OpenVINO's side: the CPU plugin keeps its read-only map of the entry
after compiling, though it computes from repacked copies, so those pages are handed back to the kernel.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

_OV_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
             "i64": torch.int64, "i32": torch.int32}
PREFIX = "self.unet."  # convert_model's name for a constant taken from the traced module's `unet.<name>`
MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (clean file pages are dropped, read back if touched)


def ir_constants(xml: Path) -> dict[str, tuple[int, int, str, tuple[int, ...]]]:
    """name -> (byte offset, size, element type, shape) of each named constant in an IR's .bin file."""
    found = {}
    for layer in ET.parse(xml).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None or data.get("offset") is None:
            continue
        shape = tuple(int(s) for s in data.get("shape", "").replace(" ", "").split(",") if s)
        found[layer.get("name")] = (int(data.get("offset")), int(data.get("size")), data.get("element_type"), shape)
    return found


def release(unet: torch.nn.Module, entry: Path) -> list[torch.Tensor]:
    """Point `unet`'s parameters and buffers at a private map of `entry`/unet.bin wherever the file holds
    their exact bytes; returns the tensors mapped (empty when the file or its index cannot be read)."""
    xml, binary = entry / "unet.xml", entry / "unet.bin"
    try:
        constants = ir_constants(xml)
        f = open(binary, "rb")
    except (OSError, ET.ParseError):
        return []
    mapped = []
    with f, torch.inference_mode(False):  # ordinary tensors, even when generate() runs in inference mode
        try:
            whole = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        except (OSError, ValueError):
            return []
        for name, t in (*unet.named_parameters(), *unet.named_buffers()):
            where = constants.get(PREFIX + name)
            if where is None or t.device.type != "cpu" or not t.is_contiguous():
                continue
            offset, size, kind, shape = where
            if (_OV_TYPES.get(kind) != t.dtype or shape != tuple(t.shape) or size != t.numel() * t.element_size()
                    or size == 0 or offset % t.element_size() or offset + size > len(whole)):
                continue
            f.seek(offset)
            ours = t.detach().cpu().reshape(-1).view(torch.uint8).numpy()
            if not np.array_equal(np.frombuffer(f.read(size), np.uint8), ours):
                continue
            t.data = torch.frombuffer(whole, dtype=t.dtype, count=t.numel(), offset=offset).view(t.shape)
            mapped.append(t)
    if mapped:  # free the old storages (a converted model just dropped may still hold them in a cycle),
        import gc  # and give them back: glibc keeps most of them otherwise (heap, not mmap)

        from stablekit.formats.weight_cache import trim_heap

        gc.collect()
        trim_heap()
    return mapped


def restore(tensors: list[torch.Tensor]) -> None:
    """Copy mapped tensors into fresh (aligned) memory: from here on they are ordinary tensors again."""
    with torch.inference_mode(False):
        for t in tensors:
            t.data = t.data.clone()
    tensors.clear()


def entry_mappings(entry: Path, maps: str) -> list[tuple[int, int]]:
    """(start, end) of the read-only mappings of files inside `entry` in a /proc/<pid>/maps text:
    OpenVINO's maps of unet.bin or of its compiled blob (the torch tensors' own map is writable)."""
    root = str(Path(entry).resolve()) + os.sep
    found = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "w" not in parts[1] and parts[5].startswith(root):
            lo, hi = parts[0].split("-")
            found.append((int(lo, 16), int(hi, 16)))
    return found


def page_out(entry: Path) -> int:
    """After OpenVINO compiled the model in `entry`: ask the kernel to reclaim the pages of OpenVINO's
    own map of the entry's weights. The CPU plugin keeps that map while it computes from repacked
    copies, so every weight byte it read while compiling stayed counted twice in the process (SD 1.5:
    3.3 GB of file pages beside 3.4 GB repacked; measured, docs/reports/speed.md Session 14). Only
    a hint: clean file pages, read back from the file if anything touches them. Bytes asked for;
    0 where the kernel has no MADV_PAGEOUT (Linux < 5.4, other systems)."""
    try:
        with open("/proc/self/maps") as f:
            ranges = entry_mappings(entry, f.read())
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for lo, hi in ranges:
        if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            done += hi - lo
    return done
