"""Every on-disk model layout stablekit reads and writes; all key mapping lives here.

Loads a diffusers folder or a single LDM-layout file (SD 1.x, 2.x, SDXL base; `.safetensors`,
or `.ckpt`/`.pt` pickles when allowed) into `Components`, and saves Components as either.
Nothing here reaches a model hub: the configs of the reference architectures ship in
`formats/configs/<arch>/` and the CLIP tokenizer is built offline.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.formats.assemble import ComponentDtypes
from stablekit.formats.tokenizer import clip_tokenizer
from stablekit.formats.weights import parse_dtype

__all__ = ["load_model", "save_model", "inspect_model", "clip_tokenizer"]

SAVE_FORMATS = ("diffusers", "single-file")


def load_model(path, arch: str | None = None, dtype=torch.float32, allow_pickle: bool = False,
               prediction_type: str | None = None, component_dtypes: dict | None = None) -> Components:
    """Load a model from a local diffusers folder or single file, straight into `dtype`.

    dtype: torch dtype or "fp32"/"fp16"/"bf16"; None keeps each tensor's dtype from the file.
    component_dtypes: {"unet" | "vae" | "text_encoder" | "text_encoder_2": dtype} read into another
    dtype than `dtype` (training reads its frozen UNet into bf16 and keeps the rest fp32); each
    tensor is still cast as it is read, so no copy in `dtype` is ever made.
    arch: force "sd1", "sd2", "sd2-v" or "sdxl" instead of the file's stablekit record or key
    detection. prediction_type: force "epsilon" or "v_prediction". allow_pickle: read
    .ckpt/.pt/.bin with torch.load(weights_only=True) instead of refusing them. The result's
    name is the file stem or folder name, hash the A1111 short hash (for folders: of the UNet
    weights file), source the path.
    """
    from stablekit.formats.diffusers_folder import load_folder, source_kind
    from stablekit.formats.single_file import load_single_file

    path = Path(path)
    dtype = parse_dtype(dtype)
    dtypes = ComponentDtypes(dtype, {k: parse_dtype(v) for k, v in (component_dtypes or {}).items()})
    load = load_folder if source_kind(path) == "diffusers" else load_single_file
    return load(path, arch, dtypes, allow_pickle, prediction_type)


def check_save_target(path, to: str | None = None) -> tuple[Path, str]:
    """(path, format) that `save_model(components, path, to)` would write, or the one-line error it
    would give; cheap, so callers (convert) check the target before spending time on a load.

    to: "diffusers" or "single-file"; None: a path ending in .safetensors is a single file and
    anything else a folder.
    """
    from stablekit.formats.diffusers_folder import is_diffusers_folder

    path = Path(path)
    suffix = path.suffix.lower()
    if to is None:
        to = "single-file" if suffix == ".safetensors" else "diffusers"
    if to not in SAVE_FORMATS:
        raise StablekitError(f"unknown save format {to!r}; use diffusers or single-file")
    if to == "diffusers":
        if suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
            raise StablekitError(f"{path}: a diffusers model is a folder; give a name without a file suffix")
        if path.exists() and not path.is_dir():
            raise StablekitError(f"{path} is a file; a diffusers model is a folder (give a name without .safetensors)")
        if path.is_dir() and any(path.iterdir()) and not is_diffusers_folder(path):
            raise StablekitError(f"{path} exists and is not a diffusers model folder; give a new or empty folder")
    else:
        if suffix != ".safetensors":
            raise StablekitError(f"{path}: single files are written as .safetensors only; use a .safetensors name")
        if path.is_dir():
            raise StablekitError(f"{path} is a folder; give a file name ending in .safetensors")
    parent = path.parent if to == "single-file" else path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise StablekitError(f"cannot write {path}: {parent} is not a writable folder; choose another place")
    return path, to


def save_model(components: Components, path, to: str | None = None, dtype=None) -> Path:
    """Save as a diffusers folder or a single LDM-layout .safetensors file; returns the path.

    to: "diffusers" or "single-file"; by default a path ending in .safetensors is a single file and
    anything else a folder (see `check_save_target`). dtype: cast floating tensors on the way out
    (None keeps them); the Components themselves are not changed.
    """
    from stablekit.formats.diffusers_folder import save_folder
    from stablekit.formats.single_file import save_single_file

    path, to = check_save_target(path, to)
    dtype = parse_dtype(dtype)
    (save_single_file if to == "single-file" else save_folder)(components, path, dtype)
    return path


def inspect_model(path, allow_pickle: bool = False, arch: str | None = None,
                  prediction_type: str | None = None) -> dict:
    """Architecture, prediction type, dtype, parameters per component and A1111 hashes of a model.

    Reads headers and key names (plus one tensor for the SD 2.x v-prediction test) and runs the
    same detection and checks as `load_model` with the same arguments, without reading weights.
    A path load_model cannot even open (missing, corrupt, a refused pickle) raises the same
    StablekitError; a file it opens but would refuse (a LoRA, missing or mis-shaped tensors) is
    reported with loadable False and problem = load_model's message. Keys: path, format,
    architecture ("unknown" if not detected), prediction_type, loadable, problem, dtype, dtypes,
    parameters, total_parameters, tensors, size_bytes, hash (A1111 "Model hash", 10 hex), sha256,
    and for single files legacy_hash (A1111's old 8-hex hash) and stablekit_metadata.
    """
    from stablekit.formats.inspect import inspect_path

    return inspect_path(path, allow_pickle, arch, prediction_type)
