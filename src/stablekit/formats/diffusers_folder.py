"""diffusers model folders: model_index.json plus one sub-folder per component.

Read: each component's config.json and weights (`diffusion_pytorch_model[.fp16].safetensors` or
`model[.fp16].safetensors`, also sharded via `*.safetensors.index.json`; `.bin` pickles only with
allow_pickle). Text encoder weights with or without transformers' old `text_model.` prefix load.
Written: the layout `DiffusionPipeline.from_pretrained` reads, text encoders with the `text_model.`
prefix (readable by every transformers version), CLIP tokenizers as vocab.json + merges.txt, and the
stablekit arch (and generation defaults, formats/model_defaults.py) in model_index.json under
"_stablekit" (diffusers ignores keys starting with "_"),
and what only an LDM single file can hold in `stablekit_extra.safetensors` (see side_file.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.formats.archs import CONFIG_FILES, check_arch, module_configs, read_configs, tokenizers_for
from stablekit.formats.assemble import ComponentDtypes, empty_modules, fill, make_components, set_prediction_type
from stablekit.formats.ldm import layout_for
from stablekit.formats.model_defaults import read_defaults
from stablekit.formats.side_file import load_extra, save_extra
from stablekit.formats.weights import cast, open_weights, write_safetensors
from stablekit.formats.tokenizer import save_clip_tokenizer

WEIGHT_BASE = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
               "text_encoder": "model", "text_encoder_2": "model"}
TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def source_kind(path: Path) -> str:
    """"diffusers" or "single-file" for a model path; the one-line error load, inspect and convert
    all give for a path that is neither."""
    if not path.exists():
        raise StablekitError(f"{path} does not exist; give a .safetensors file or a diffusers model folder")
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise StablekitError(f"{path} is a folder without model_index.json; give a diffusers model folder "
                                 "or a .safetensors file")
        return "diffusers"
    return "single-file"


def folder_arch(path: Path, configs: dict) -> str:
    """The stablekit arch of a folder: as recorded by stablekit, else from the configs."""
    index = _read_index(path)
    recorded = (index.get("_stablekit") or {}).get("arch")
    if recorded:
        return recorded
    if configs.get("text_encoder_2"):
        return "sdxl"
    if configs["text_encoder"].get("hidden_act") == "gelu":  # OpenCLIP (SD 2.x); OpenAI CLIP uses quick_gelu
        return "sd2-v" if configs["scheduler"].get("prediction_type") == "v_prediction" else "sd2"
    return "sd1"


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise StablekitError(f"cannot read {path / 'model_index.json'}: {exc}") from None


def weight_files(sub: Path, component: str, allow_pickle: bool) -> list[Path]:
    """The weight file(s) of one component folder, preferring safetensors, full precision, unsharded."""
    base = WEIGHT_BASE[component]
    names = [base, f"{base}.fp16"]
    for suffix, pickle_base in ((".safetensors", base), (".bin", "pytorch_model" if base == "model" else base)):
        for name in (names if suffix == ".safetensors" else [pickle_base, f"{pickle_base}.fp16"]):
            single = sub / f"{name}{suffix}"
            if single.is_file():
                return [single]
            index = sub / f"{name}{suffix}.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError) as exc:
                    raise StablekitError(f"cannot read shard index {index}: {exc}") from None
                return [sub / s for s in shards]
    raise StablekitError(f"{sub}: no weights found (expected {base}.safetensors)")


def resolve_folder(path: Path, arch: str | None, prediction_type: str | None) -> tuple[str, dict]:
    """(arch, configs) of a folder: the arch argument, else stablekit's record, else the configs."""
    configs = read_configs(path)
    found = folder_arch(path, configs)
    if arch is not None and arch != found:
        check_arch(arch)  # as for single files: a reference arch, or the one the model records
    return arch or found, set_prediction_type(configs, prediction_type)


def check_folder(path: Path, expected: dict[str, dict[str, tuple]], allow_pickle: bool) -> dict:
    """{component: {model key: (weight file, file key)}} once every component's weight files hold
    every tensor the module needs in the right shape; else a one-line StablekitError."""
    located = {}
    for component, shapes in expected.items():
        files = [open_weights(f, allow_pickle=allow_pickle) for f in weight_files(path / component, component, allow_pickle)]
        located[component] = _locate(path / component, files, shapes)
    return located


def load_folder(path, arch=None, dtype=torch.float32, allow_pickle=False, prediction_type=None) -> Components:
    path = Path(path)
    arch, configs = resolve_folder(path, arch, prediction_type)
    modules, expected = empty_modules(configs)
    located = check_folder(path, expected, allow_pickle)
    dtypes = ComponentDtypes.of(dtype)
    dtype = dtypes.default  # the side file's tensors (load_extra)
    state_dicts = {component: {k: wf.get(key, dtypes(component)) for k, (wf, key) in where.items()}
                   for component, where in located.items()}
    fill(modules, state_dicts, dtypes)
    tokenizers = _load_tokenizers(path, arch, configs)
    unet_file = weight_files(path / "unet", "unet", allow_pickle)[0]
    extra = {"format": "diffusers", **load_extra(path, layout_for(arch, configs), dtype),
             "defaults": read_defaults(_read_index(path).get("_stablekit"), str(path))}
    return make_components(arch, modules, configs, tokenizers, name=path.name, hash_file=str(unet_file),
                           source=str(path), extra=extra)


def _locate(sub: Path, files, shapes: dict[str, tuple]) -> dict[str, tuple]:
    from stablekit.formats.ldm import check_file_against

    where = {}
    for wf in files:
        for key in wf.keys():
            where[key] = wf
    wants_prefix = any(k.startswith("text_model.") for k in shapes)
    rename = {}  # expected key -> file key (transformers < 5.6 wrote CLIPTextModel with "text_model.")
    for key in where:
        model_key = key if wants_prefix or not key.startswith("text_model.") else key.removeprefix("text_model.")
        rename[model_key] = key
    file_shapes = {m: where[f].shape(f) for m, f in rename.items()}
    check_file_against(sub, file_shapes, shapes, f"diffusers {sub.name}")
    return {k: (where[rename[k]], rename[k]) for k in shapes}


def _load_tokenizers(path: Path, arch: str, configs: dict):
    """CLIP tokenizers with the folder's pad tokens, built offline; the folder's own tokenizer
    files are read (slower) only when its text encoder has tokens beyond CLIP's 49,408."""
    from stablekit.formats.tokenizer import clip_tokenizer

    out = []
    for built, (component, folder) in zip(tokenizers_for(arch, configs), TOKENIZERS.items()):
        if built is not None and (path / folder).is_dir():
            if configs[component].get("vocab_size", 49408) != 49408:
                from transformers import CLIPTokenizer

                built = CLIPTokenizer.from_pretrained(str(path / folder), local_files_only=True)
            else:
                pad = _pad_token(path / folder)
                if pad and pad != built.pad_token:
                    built = clip_tokenizer(pad)
        out.append(built)
    return out


def _pad_token(folder: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            pad = json.loads((folder / name).read_text()).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if isinstance(pad, str):
            return pad
    return None


def save_folder(components: Components, path, dtype: torch.dtype | None = None) -> None:
    path = Path(path)  # checked by formats.check_save_target
    configs = module_configs(components)
    path.mkdir(parents=True, exist_ok=True)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(components, component)
        if module is None:
            continue
        sub = path / component
        sub.mkdir(exist_ok=True)
        state = module.state_dict()
        if component == "text_encoder" and not any(k.startswith("text_model.") for k in state):
            state = {"text_model." + k: v for k, v in state.items()}
        items = [(k, (lambda t=v: cast(t, dtype)), tuple(v.shape), _out_dtype(v, dtype)) for k, v in state.items()]
        write_safetensors(sub / f"{WEIGHT_BASE[component]}.safetensors", items, {"format": "pt"})
        config = dict(configs[component])
        if component.startswith("text_encoder"):
            config["dtype"] = str(dtype or module.dtype).removeprefix("torch.")
        else:
            config["_class_name"] = type(module).__name__
        _write_json(path / CONFIG_FILES[component], config)
    scheduler = dict(configs["scheduler"])
    scheduler.setdefault("_class_name", "PNDMScheduler")
    _write_json(path / CONFIG_FILES["scheduler"], scheduler)
    for component, folder in TOKENIZERS.items():
        tokenizer = components.tokenizer if component == "text_encoder" else components.tokenizer_2
        if tokenizer is not None:
            save_clip_tokenizer(tokenizer, path / folder)
    save_extra(components.extra, path, dtype)
    _write_json(path / "model_index.json", _model_index(components, scheduler["_class_name"]))


def _out_dtype(tensor: torch.Tensor, dtype):
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def _model_index(components: Components, scheduler_class: str) -> dict:
    index = {
        "_class_name": "StableDiffusionXLPipeline" if components.is_sdxl else "StableDiffusionPipeline",
        "_stablekit": {"arch": components.arch, **({"defaults": components.extra["defaults"]}
                                                     if components.extra.get("defaults") else {})},
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    if components.vae is not None:
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if components.is_sdxl:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
