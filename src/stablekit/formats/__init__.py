"""Every on-disk model layout stablekit reads and writes; all key mapping lives here.

Loads a diffusers folder or a single LDM-layout file (SD 1.x, 2.x, SDXL base; `.safetensors`,
or `.ckpt`/`.pt` pickles when allowed) into `Components`, and saves Components as either.
Nothing here reaches a model hub: the configs of the reference architectures ship in
`formats/configs/<arch>/` and the CLIP tokenizer is built offline.
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.formats.tokenizer import clip_tokenizer
from stablekit.formats.weights import parse_dtype

__all__ = ["load_model", "save_model", "inspect_model", "clip_tokenizer"]

SAVE_FORMATS = ("diffusers", "single-file")


def load_model(path, arch: str | None = None, dtype=torch.float32, allow_pickle: bool = False,
               prediction_type: str | None = None) -> Components:
    """Load a model from a local diffusers folder or single file, straight into `dtype`.

    dtype: torch dtype or "fp32"/"fp16"/"bf16"; None keeps each tensor's dtype from the file.
    arch: force "sd1", "sd2", "sd2-v" or "sdxl" instead of the file's stablekit record or key
    detection. prediction_type: force "epsilon" or "v_prediction". allow_pickle: read
    .ckpt/.pt/.bin with torch.load(weights_only=True) instead of refusing them. The result's
    name is the file stem or folder name, hash the A1111 short hash (for folders: of the UNet
    weights file), source the path.
    """
    from stablekit.formats.diffusers_folder import is_diffusers_folder, load_folder
    from stablekit.formats.single_file import load_single_file

    path = Path(path)
    dtype = parse_dtype(dtype)
    if not path.exists():
        raise StablekitError(f"{path} does not exist")
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise StablekitError(f"{path} is a folder without model_index.json; give a diffusers model folder or a .safetensors file")
        return load_folder(path, arch, dtype, allow_pickle, prediction_type)
    return load_single_file(path, arch, dtype, allow_pickle, prediction_type)


def save_model(components: Components, path, to: str | None = None, dtype=None) -> Path:
    """Save as a diffusers folder or a single LDM-layout .safetensors file; returns the path.

    to: "diffusers" or "single-file"; by default a path ending in .safetensors is a single file
    and anything else a folder. dtype: cast floating tensors on the way out (None keeps them);
    the Components themselves are not changed.
    """
    from stablekit.formats.diffusers_folder import save_folder
    from stablekit.formats.single_file import save_single_file

    path = Path(path)
    if to is None:
        to = "single-file" if path.suffix.lower() == ".safetensors" else "diffusers"
    if to not in SAVE_FORMATS:
        raise StablekitError(f"unknown save format {to!r}; use diffusers or single-file")
    if to == "diffusers" and path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin"):
        raise StablekitError(f"{path}: a diffusers model is a folder; give a name without a file suffix")
    dtype = parse_dtype(dtype)
    (save_single_file if to == "single-file" else save_folder)(components, path, dtype)
    return path


def inspect_model(path, allow_pickle: bool = False) -> dict:
    """Architecture, prediction type, dtype, parameters per component and A1111 hashes of a model.

    Reads headers and key names (plus one tensor for the SD 2.x v-prediction test) without
    building models. Keys: path, format, architecture, prediction_type, dtype, dtypes,
    parameters, total_parameters, tensors, size_bytes, hash (A1111 "Model hash", 10 hex),
    sha256, and for single files legacy_hash (A1111's old 8-hex hash) and stablekit_metadata.
    """
    from stablekit.formats.inspect import inspect_path

    return inspect_path(path, allow_pickle)
