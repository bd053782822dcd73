"""Atomic training checkpoints: a kill at any moment leaves the last complete one readable.

Layout: <run>/checkpoints/step-000500.pt, written to a temporary name, fsynced, then renamed
(rename is atomic on POSIX). Loading uses weights_only=True: our own checkpoints hold only
tensors and plain Python containers, so nothing is unpickled that could run code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_NAME = re.compile(r"^step-(\d+)\.pt$")


def save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    path = checkpoint_dir(run_dir) / f"step-{step:06d}.pt"
    save_atomic(state, path)
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".toml").unlink(missing_ok=True)  # the resolved config written beside it
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
