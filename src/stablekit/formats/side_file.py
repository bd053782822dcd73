"""What a diffusers folder cannot hold, kept inside it: `stablekit_extra.safetensors`.

Released LDM single files carry tensors the diffusers modules have no place for: CLIP's
`position_ids`, the twelve noise-schedule buffers (`betas`, `alphas_cumprod`, ...), SD 2's last
OpenCLIP block (SD 2 conditions on the penultimate layer, so diffusers' text encoder is one layer
short), its `text_projection` and `logit_scale`, EMA counters. Loading keeps them in
`Components.extra` (with old-style key names and the file's own metadata, e.g. SDXL's
`modelspec.*`); a single-file save writes them back. A diffusers folder has no slot for them, so
they go into this side file in the folder's root, and single file -> folder -> single file gives
the same keys, values and dtypes. Without it ComfyUI warns `clip missing: text_projection,
logit_scale` on an SD 2 file made from such a folder.

diffusers' `from_pretrained` reads only the component sub-folders named in model_index.json, so
it ignores the file; a save that has nothing to keep deletes a stale one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.weights import cast, open_weights, write_safetensors

EXTRA_FILE = "stablekit_extra.safetensors"
META_KEY = "stablekit_extra"
FORMAT = 1


def save_extra(extra: dict, folder: Path, dtype: torch.dtype | None) -> Path | None:
    """Write the LDM-only parts of `Components.extra` beside the folder's components (or delete a
    stale side file when there are none). Floating tensors are cast to `dtype` like the weights."""
    path = Path(folder) / EXTRA_FILE
    tensors = extra.get("ldm_extra") or {}
    record = {"format": FORMAT, "layout": extra.get("layout"), "renamed": extra.get("ldm_renamed") or {},
              "file_metadata": extra.get("file_metadata") or {}}
    if not (tensors or record["renamed"] or record["file_metadata"]):
        path.unlink(missing_ok=True)
        return None
    items = []
    for key, tensor in tensors.items():
        out = tensor.dtype if dtype is None or not tensor.is_floating_point() else dtype
        items.append((key, (lambda t=tensor, d=out: cast(t, d)), tuple(tensor.shape), out))
    write_safetensors(path, items, {"format": "pt", META_KEY: json.dumps(record, sort_keys=True)})
    return path


def read_record(weights) -> dict:
    """The side file's record (layout, renamed keys, file metadata); one-line error if damaged."""
    try:
        record = json.loads(weights.metadata.get(META_KEY, ""))
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format') if isinstance(record, dict) else record!r}")
    except ValueError as exc:
        raise StablekitError(f"{weights.path}: the '{META_KEY}' metadata is damaged ({exc}); delete the file "
                             "(only a single-file export needs it)") from None
    return record


def load_extra(folder: Path, layout: str, dtype: torch.dtype | None) -> dict:
    """The `Components.extra` entries kept in a folder's side file ({} without one).

    A side file written for another layout (the folder's components were replaced by hand) is
    ignored with a warning: its tensors would not belong to the model.
    """
    path = Path(folder) / EXTRA_FILE
    if not path.is_file():
        return {}
    weights = open_weights(path)
    record = read_record(weights)
    if record.get("layout") not in (None, layout):
        warnings.warn(f"{path} was written for a {record['layout']} model, this folder holds {layout}; ignored",
                      stacklevel=3)
        return {}
    return {
        "layout": layout,
        "ldm_extra": {k: weights.get(k, dtype) for k in weights.keys()},
        "ldm_renamed": dict(record.get("renamed") or {}),
        "file_metadata": dict(record.get("file_metadata") or {}),
    }
