"""What a model file or folder holds, from headers and key names, without reading the weights.

The checks are load_model's own (modules are built on the meta device only for their expected
shapes), so inspect and convert accept and refuse the same inputs with the same messages.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.formats.hashes import a1111_legacy_hash, cached_sha256
from stablekit.formats.side_file import EXTRA_FILE
from stablekit.formats.side_file import read_record as read_extra_record
from stablekit.formats.weights import DTYPE_NAMES, open_weights

# LDM prefixes counted per component (anything else, e.g. model_ema.*, is "other").
_LDM_PARTS = [
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
]


def inspect_path(path, allow_pickle: bool = False, arch: str | None = None,
                 prediction_type: str | None = None) -> dict:
    """See `stablekit.formats.inspect_model`. Runs the checks `load_model` runs, in the same
    functions, on headers only: what inspect calls loadable, convert loads; what it refuses
    (`problem`), convert refuses with the same message."""
    from stablekit.formats.diffusers_folder import source_kind

    path = Path(path)
    if source_kind(path) == "diffusers":
        return _inspect_folder(path, allow_pickle, arch, prediction_type)
    return _inspect_file(path, allow_pickle, arch, prediction_type)


def _checked(info: dict, check) -> dict:
    """Run the loader's checks; a refusal is reported (loadable False, problem = its message)."""
    try:
        check()
        info["loadable"] = True
    except StablekitError as exc:
        info.setdefault("architecture", "unknown")
        info.update(loadable=False, problem=str(exc))
    return info


def _summary(tensors: list[tuple[str, tuple, object]], part_of) -> dict:
    params = Counter()
    by_dtype = Counter()
    for key, shape, dtype in tensors:
        n = 1
        for d in shape:
            n *= d
        params[part_of(key)] += n
        if dtype.is_floating_point:
            by_dtype[DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))] += n
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return {
        "dtype": dominant,
        "dtypes": dict(by_dtype),
        "parameters": {k: params[k] for k in ("unet", "vae", "text_encoder", "text_encoder_2", "other") if params[k]},
        "total_parameters": sum(params.values()),
        "tensors": len(tensors),
    }


def _ldm_part(key: str) -> str:
    for prefix, part in _LDM_PARTS:
        if key.startswith(prefix):
            return part
    return "other"


def _inspect_file(path: Path, allow_pickle: bool, arch: str | None, prediction_type: str | None) -> dict:
    from stablekit.formats.single_file import check_single_file, read_record, resolve

    weights = open_weights(path, allow_pickle=allow_pickle)
    info = {"path": str(path), "format": "single-file", "file_type": weights.kind}
    info["stablekit_metadata"] = read_record(weights) is not None

    def check():
        found, layout, configs = resolve(weights, arch, prediction_type)
        info.update(architecture=found, layout=layout,
                    prediction_type=configs["scheduler"].get("prediction_type", "epsilon"))
        check_single_file(weights, found, layout, configs)

    _checked(info, check)
    info.update(_summary([(k, weights.shape(k), weights.dtype(k)) for k in weights.keys()], _ldm_part))
    digest = cached_sha256(path)
    info.update(size_bytes=path.stat().st_size, hash=digest[:10], sha256=digest, legacy_hash=a1111_legacy_hash(path))
    return info


def _inspect_folder(path: Path, allow_pickle: bool, arch: str | None, prediction_type: str | None) -> dict:
    from stablekit.formats.assemble import empty_modules
    from stablekit.formats.diffusers_folder import check_folder, resolve_folder, weight_files

    found, configs = resolve_folder(path, arch, prediction_type)
    info = {"path": str(path), "format": "diffusers", "architecture": found,
            "prediction_type": configs["scheduler"].get("prediction_type", "epsilon")}
    def check():
        check_folder(path, empty_modules(configs)[1], allow_pickle)
        if (path / EXTRA_FILE).is_file():  # load_folder reads the side file's record too
            read_extra_record(open_weights(path / EXTRA_FILE))

    _checked(info, check)
    tensors, size = [], 0
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if configs.get(component) is None:
            continue
        try:
            files = weight_files(path / component, component, allow_pickle)
        except StablekitError:  # already reported as the problem
            continue
        for file in files:
            weights = open_weights(file, allow_pickle=allow_pickle)
            size += file.stat().st_size
            tensors += [(component, weights.shape(k), weights.dtype(k)) for k in weights.keys()]
    side = path / EXTRA_FILE
    if side.is_file():  # LDM-only tensors, counted where the single file counts them
        weights = open_weights(side)
        size += side.stat().st_size
        tensors += [(_ldm_part(k), weights.shape(k), weights.dtype(k)) for k in weights.keys()]
    info.update(_summary(tensors, lambda component: component))
    info["size_bytes"] = size
    if info["loadable"]:
        unet_file = weight_files(path / "unet", "unet", allow_pickle)[0]
        digest = cached_sha256(unet_file)
        info.update(hash=digest[:10], sha256=digest, hash_of=str(unet_file.relative_to(path)))
    return info
