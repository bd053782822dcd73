"""Which torch device generation runs on: one resolver for the CLI flag, `stablekit.load` and the Pipeline.

"auto" picks CUDA when a CUDA device is usable, else Apple's MPS, else the CPU. Whatever the
device, noise is drawn on the CPU (stablekit.generate.noise), so a seed gives the same starting
noise everywhere; only the float arithmetic of the model differs between devices.
"""
from __future__ import annotations

import re

import torch

from stablekit.errors import StablekitError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_SPEC = re.compile(r"^(auto|cpu|mps|meta|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: "str | torch.device | None" = "auto") -> torch.device:
    """A device name ("auto", "cpu", "cuda", "cuda:N", "mps") or torch.device -> torch.device.

    None and "auto" choose CUDA > MPS > CPU. Asking for a device this machine does not have is a
    one-line StablekitError saying what is available. "meta" is accepted (shape-only runs, tests).
    """
    if spec is None:
        spec = "auto"
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise StablekitError(f"device must be a name like 'cpu' or 'cuda:0' or a torch.device (got {spec!r}); "
                             f"use one of {', '.join(DEVICE_CHOICES)}")
    match = _SPEC.match(spec.strip().lower())
    if match is None:
        raise StablekitError(f"unknown device {spec!r}; use one of {', '.join(DEVICE_CHOICES)}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise StablekitError(f"device {spec!r}: this machine (torch {torch.__version__}) has no usable CUDA "
                                 "device; install a CUDA build of torch, or use --device cpu")
        if index is not None and int(index) >= count:
            raise StablekitError(f"device {spec!r}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", int(index or 0))
    if kind == "mps" and not _mps_available():
        raise StablekitError(f"device {spec!r}: Apple MPS is not available on this machine; use --device cpu")
    if index is not None and kind != "cuda":
        raise StablekitError(f"device {spec!r}: only CUDA devices take an index; use {kind!r}")
    return torch.device(kind)
