"""The architectures stablekit knows, their shipped diffusers configs, and building modules from configs.

`formats/configs/<arch>/` holds the hub configs (no weights) of the reference models:
sd1 = runwayml SD 1.5, sd2 = stabilityai SD 2.1-base (512, epsilon), sd2-v = SD 2.1 (768,
v-prediction), sdxl = SDXL base 1.0. A "configs" dict here is what a diffusers folder holds as
JSON: {"unet": ..., "vae": ..., "text_encoder": ..., "text_encoder_2": ... or None,
"scheduler": ...}; single files written by stablekit carry the same dict in their metadata.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from stablekit.errors import StablekitError

ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")
CONFIG_ROOT = Path(__file__).parent / "configs"
# Sub-folder and file of each component's config inside a diffusers folder.
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
# Tokenizer pad tokens: OpenAI CLIP pads with <|endoftext|>, OpenCLIP (SD 2.x, SDXL's second
# encoder) with "!" (id 0).
PAD_TOKENS = {"sd1": ("<|endoftext|>", None), "sd2": ("!", None), "sd2-v": ("!", None),
              "sdxl": ("<|endoftext|>", "!")}


def check_arch(arch: str) -> str:
    """`arch` if it is one of the reference architectures (whose configs ship), else a one-line error."""
    if arch not in ARCHS:
        raise StablekitError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")
    return arch



def read_configs(folder: Path) -> dict:
    """The component configs of a diffusers folder (text_encoder_2 None when absent).

    text_encoder_2 counts only if model_index.json lists it, so a stale sub-folder left by an
    earlier save does not turn a model into SDXL.
    """
    configs = {}
    index = {}
    if (Path(folder) / "model_index.json").is_file():
        try:
            index = json.loads((Path(folder) / "model_index.json").read_text())
        except (OSError, ValueError) as exc:
            raise StablekitError(f"cannot read {Path(folder) / 'model_index.json'}: {exc}") from None
    for name, rel in CONFIG_FILES.items():
        path = Path(folder) / rel
        listed = (index.get(name) or [None])[0] is not None if index else True
        if not path.is_file() or (name == "text_encoder_2" and not listed):
            if name == "text_encoder_2":
                configs[name] = None
                continue
            raise StablekitError(f"{path} is missing; a diffusers model folder needs {rel}")
        try:
            configs[name] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StablekitError(f"cannot read {path}: {exc}") from None
    return configs


def shipped_configs(arch: str) -> dict:
    """The configs of one of the reference architectures, from the package."""
    return read_configs(CONFIG_ROOT / check_arch(arch))


def tokenizers_for(arch: str, configs: dict | None = None):
    """(tokenizer, tokenizer_2 or None) for an architecture, built offline."""
    from stablekit.formats.tokenizer import clip_tokenizer

    pad1, pad2 = PAD_TOKENS.get(arch, ("<|endoftext|>", "!"))
    has_second = configs["text_encoder_2"] is not None if configs else pad2 is not None
    return clip_tokenizer(pad1), (clip_tokenizer(pad2 or "!") if has_second else None)


def build_modules(configs: dict, empty: bool = False) -> dict:
    """diffusers/transformers modules from configs: {"unet", "vae", "text_encoder", "text_encoder_2"}.

    empty=True builds on the meta device (no memory, no init time); fill them with
    `load_state_dict(sd, assign=True)`.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    modules = {}
    with contextlib.ExitStack() as stack:
        if empty:
            # Parameters on the meta device, and no random init (on meta it is slow and pointless).
            from diffusers.models.modeling_utils import no_init_weights as diffusers_no_init
            from transformers.initialization import no_init_weights as transformers_no_init

            stack.enter_context(init_empty_weights())
            stack.enter_context(diffusers_no_init())
            stack.enter_context(transformers_no_init())
        modules["unet"] = UNet2DConditionModel.from_config(configs["unet"])
        modules["vae"] = AutoencoderKL.from_config(configs["vae"]) if configs.get("vae") else None
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_dict(_clip_dict(configs["text_encoder"])))
        te2 = configs.get("text_encoder_2")
        modules["text_encoder_2"] = (
            CLIPTextModelWithProjection(CLIPTextConfig.from_dict(_clip_dict(te2))) if te2 else None
        )
    return modules


def _clip_dict(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def module_configs(components) -> dict:
    """The configs dict of loaded Components (JSON-serialisable)."""
    configs = {
        "unet": dict(components.unet.config),
        "vae": dict(components.vae.config) if components.vae is not None else None,
        "text_encoder": _te_config(components.text_encoder),
        "text_encoder_2": _te_config(components.text_encoder_2) if components.text_encoder_2 is not None else None,
        "scheduler": dict(components.scheduler_config),
    }
    return stable_json(configs)


def stable_json(data):
    """`data` as plain JSON values, the same for the same model in every process.

    diffusers records `_use_default_values` as a list made from a set, so its order follows
    Python's per-process string hash seed; sorted here so that a conversion gives the same bytes
    every time (A1111's "Model hash" of a converted file must not change from run to run).
    """
    data = json.loads(json.dumps(data, default=_jsonable))
    return _sort_default_lists(data)


def _sort_default_lists(value):
    if isinstance(value, dict):
        return {k: sorted(v) if k == "_use_default_values" and isinstance(v, list) else _sort_default_lists(v)
                for k, v in value.items()}
    return value


def _te_config(model) -> dict:
    d = model.config.to_dict()
    d["architectures"] = [type(model).__name__]
    for k in ("dtype", "torch_dtype", "transformers_version", "_name_or_path"):
        d.pop(k, None)
    return d


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"not JSON-serialisable: {value!r}")
