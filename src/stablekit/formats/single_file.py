"""Single-file checkpoints in the LDM layout: load (safetensors, or pickles when allowed) and save.

What stablekit writes also carries, under the safetensors metadata key "stablekit", a JSON record
{"format": 1, "arch", "layout", "configs"[, "defaults"]} with the full diffusers config of every
component and the scheduler (and generation defaults, formats/model_defaults.py), so models of any width (the embedded shapes model, tiny test models) load back
exactly; files without it are matched against the four reference architectures.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.formats import ldm
from stablekit.formats.archs import ARCHS, module_configs, shipped_configs, tokenizers_for
from stablekit.formats.assemble import ComponentDtypes, empty_modules, fill, make_components, set_prediction_type
from stablekit.formats.detect import detect_arch, unet_in_channels
from stablekit.formats.hashes import a1111_legacy_hash
from stablekit.formats.model_defaults import read_defaults
from stablekit.formats.weights import cast, open_weights, write_safetensors

META_KEY = "stablekit"
META_FORMAT = 1


def read_record(weights) -> dict | None:
    """The stablekit metadata record of a file, or None."""
    raw = weights.metadata.get(META_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or not {"arch", "layout", "configs"} <= set(record):
            raise ValueError("missing fields")
    except ValueError as exc:
        raise StablekitError(f"{weights.path}: the '{META_KEY}' metadata is damaged ({exc}); "
                             "pass arch= to load it as a reference architecture") from None
    return record


def resolve(weights, arch: str | None, prediction_type: str | None) -> tuple[str, str, dict]:
    """(arch, layout, configs) for a file: its stablekit record, else detection, else `arch`."""
    record = read_record(weights)
    if record is not None and arch in (None, record["arch"]):
        arch, layout, configs = record["arch"], record["layout"], record["configs"]
    else:
        detected_prediction = None
        if arch is None:
            arch, detected_prediction = detect_arch(weights)
        elif arch not in ARCHS:
            raise StablekitError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")
        configs = shipped_configs(arch)
        channels = unet_in_channels(weights)
        if channels != configs["unet"]["in_channels"]:  # an inpainting model: its UNet takes 9 channels
            configs["unet"] = dict(configs["unet"], in_channels=channels)
        layout = ldm.layout_for(arch, configs)
        prediction_type = prediction_type or detected_prediction
    return arch, layout, set_prediction_type(configs, prediction_type)


def check_single_file(weights, arch: str, layout: str, configs: dict) -> None:
    """The shape check loading runs, without reading tensor data (for inspect)."""
    _, expected = empty_modules(configs)
    ldm.check_ldm_file(weights, layout, configs, expected, what=arch)


def load_single_file(path, arch=None, dtype=torch.float32, allow_pickle=False, prediction_type=None) -> Components:
    path = Path(path)
    weights = open_weights(path, allow_pickle=allow_pickle)
    arch, layout, configs = resolve(weights, arch, prediction_type)
    modules, expected = empty_modules(configs)
    dtypes = ComponentDtypes.of(dtype)
    dtype = dtypes.default  # the tensors no module takes (ldm_extra)
    state_dicts, unmapped, renamed = ldm.read_state_dicts(weights, layout, configs, expected, dtypes, what=arch)
    fill(modules, state_dicts, dtypes)
    del state_dicts
    extra = {
        "format": "single-file",
        "layout": layout,
        "legacy_hash": a1111_legacy_hash(path),
        # Tensors the diffusers modules have no place for (position_ids, SD 2's unused last
        # OpenCLIP layer, schedule buffers, EMA copies): kept so a save writes the same key set.
        "ldm_extra": {k: weights.get(k, dtype) for k in unmapped},
        "ldm_renamed": renamed,  # old-style key names, written back as found
        "file_metadata": {k: v for k, v in weights.metadata.items() if k != META_KEY},
        "defaults": read_defaults(read_record(weights), str(path)),
    }
    return make_components(arch, modules, configs, tokenizers_for(arch, configs), name=path.stem,
                           hash_file=str(path), source=str(path), extra=extra)


def save_single_file(components: Components, path, dtype: torch.dtype | None = None) -> None:
    path = Path(path)  # checked by formats.check_save_target
    configs = module_configs(components)
    layout = components.extra.get("layout") or ldm.layout_for(components.arch, configs)
    if layout not in ldm.TEXT_LAYOUTS:
        raise StablekitError(f"unknown LDM layout {layout!r} in Components.extra")
    modules = {name: getattr(components, name) for name in ldm.COMPONENTS if getattr(components, name) is not None}
    renamed = components.extra.get("ldm_renamed", {})
    items = [(renamed.get(key, key), *rest) for key, *rest in ldm.write_items(modules, layout, configs, dtype)]
    written = {item[0] for item in items}
    for key, tensor in components.extra.get("ldm_extra", {}).items():
        if key not in written:
            out = tensor.dtype if dtype is None or not tensor.is_floating_point() else dtype
            items.append((key, (lambda t=tensor, d=out: cast(t, d)), tuple(tensor.shape), out))
    record = {"format": META_FORMAT, "arch": components.arch, "layout": layout, "configs": configs}
    if components.extra.get("defaults"):
        record["defaults"] = components.extra["defaults"]
    metadata = dict(components.extra.get("file_metadata", {}))
    metadata.update({"format": "pt", META_KEY: json.dumps(record, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, items, metadata)
