"""What a model file or folder holds, from headers and key names, without building models."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.formats.hashes import a1111_legacy_hash, cached_sha256
from stablekit.formats.side_file import EXTRA_FILE
from stablekit.formats.weights import DTYPE_NAMES, open_weights

# LDM prefixes counted per component (anything else, e.g. model_ema.*, is "other").
_LDM_PARTS = [
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
]


def inspect_path(path, allow_pickle: bool = False) -> dict:
    from stablekit.formats.diffusers_folder import is_diffusers_folder

    path = Path(path)
    if not path.exists():
        raise StablekitError(f"{path} does not exist")
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise StablekitError(f"{path} is a folder without model_index.json, not a diffusers model")
        return _inspect_folder(path, allow_pickle)
    return _inspect_file(path, allow_pickle)


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


def _inspect_file(path: Path, allow_pickle: bool) -> dict:
    from stablekit.formats.detect import detect_arch
    from stablekit.formats.single_file import read_record

    weights = open_weights(path, allow_pickle=allow_pickle)
    info = {"path": str(path), "format": "single-file", "file_type": weights.kind}
    record = read_record(weights)
    if record is not None:
        info.update(architecture=record["arch"], layout=record["layout"],
                    prediction_type=record["configs"]["scheduler"].get("prediction_type", "epsilon"),
                    stablekit_metadata=True)
    else:
        try:
            arch, prediction = detect_arch(weights)
            info.update(architecture=arch, prediction_type=prediction
                        or ("v_prediction" if arch == "sd2-v" else "epsilon"))
        except StablekitError as exc:
            info.update(architecture="unknown", problem=str(exc))
        info["stablekit_metadata"] = False
    info.update(_summary([(k, weights.shape(k), weights.dtype(k)) for k in weights.keys()], _ldm_part))
    digest = cached_sha256(path)
    info.update(size_bytes=path.stat().st_size, hash=digest[:10], sha256=digest, legacy_hash=a1111_legacy_hash(path))
    return info


def _inspect_folder(path: Path, allow_pickle: bool) -> dict:
    from stablekit.formats.archs import read_configs
    from stablekit.formats.diffusers_folder import folder_arch, weight_files

    configs = read_configs(path)
    info = {"path": str(path), "format": "diffusers", "architecture": folder_arch(path, configs),
            "prediction_type": configs["scheduler"].get("prediction_type", "epsilon")}
    tensors, size = [], 0
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if configs.get(component) is None:
            continue
        for file in weight_files(path / component, component, allow_pickle):
            weights = open_weights(file, allow_pickle=allow_pickle)
            size += file.stat().st_size
            tensors += [(component, weights.shape(k), weights.dtype(k)) for k in weights.keys()]
    side = path / EXTRA_FILE
    if side.is_file():  # LDM-only tensors, counted where the single file counts them
        weights = open_weights(side)
        size += side.stat().st_size
        tensors += [(_ldm_part(k), weights.shape(k), weights.dtype(k)) for k in weights.keys()]
    info.update(_summary(tensors, lambda component: component))
    unet_file = weight_files(path / "unet", "unet", allow_pickle)[0]
    digest = cached_sha256(unet_file)
    info.update(size_bytes=size, hash=digest[:10], sha256=digest, hash_of=str(unet_file.relative_to(path)))
    return info
