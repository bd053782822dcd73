"""ControlNet weights: the diffusers layout and the single-file layouts A1111 and ComfyUI users have.

Layouts read (SD 1.x, 2.x, SDXL):
  diffusers folder     config.json + diffusion_pytorch_model[.fp16].safetensors (`controlnet_cond_embedding.*`)
  diffusers keys in one file (e.g. a downloaded diffusion_pytorch_model.safetensors)
  LDM keys             `input_hint_block.*`, `zero_convs.*`, `middle_block_out.*` and the UNet encoder's
                       `input_blocks.*`, `middle_block.*`, `time_embed.*` (`label_emb.*` for SDXL), either
                       bare (ControlNet 1.1 releases) or under `control_model.` (1.0 releases, which may
                       also carry a whole SD model beside it; only `control_model.*` is read)
Refused with one line: "diff" ControlNets (a `difference` key: weights stored as differences to a
base UNet) and Control-LoRAs (`lora_controlnet`).

The config comes, in order, from the file's stablekit record (written by `save_controlnet`, so any
width loads back), the folder's config.json, the UNet config of the model it will be used with,
or the shipped config of the architecture detected from the keys (SDXL: `label_emb`; SD 2.x: linear
`proj_in`, 1024-wide context; else SD 1.x). Nothing reaches a hub. LDM -> diffusers uses diffusers'
own `convert_controlnet_checkpoint` (plus SDXL's `label_emb`, which it does not map); the reverse
names are `ldm._unet_name` for the encoder copy and the table below for the ControlNet-only parts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.weights import cast, open_weights, parse_dtype, write_safetensors

LDM_PREFIX = "control_model."
META_KEY = "stablekit_controlnet"
WEIGHTS_NAME = "diffusion_pytorch_model"
# UNet config entries a ControlNet copies (as diffusers' ControlNetModel.from_unet does).
_FROM_UNET = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
              "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
              "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
              "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
              "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type",
              "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
              "addition_time_embed_dim", "addition_embed_type_num_heads")


def controlnet_config(unet_config: dict, conditioning_channels: int = 3) -> dict:
    """The diffusers ControlNetModel config for a UNet config (the encoder copied, hint block default)."""
    config = {k: unet_config[k] for k in _FROM_UNET if k in unet_config}
    config.update(conditioning_channels=conditioning_channels, _class_name="ControlNetModel")
    return json.loads(json.dumps(config, default=list))


# --------------------------------------------------------------------------- names
def _hint_blocks(config: dict) -> int:
    """Inner conv count of the hint encoder: two per level after the first (SD's 4 levels: 6)."""
    return 2 * (len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)


def ldm_name(key: str, config: dict) -> str:
    """LDM key (without `control_model.`) of a diffusers ControlNet tensor."""
    from stablekit.formats.ldm import _unet_name

    if m := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)$", key):
        index = {"conv_in": 0, "conv_out": 2 * _hint_blocks(config) + 2}.get(m[1])
        return f"input_hint_block.{index if index is not None else 2 * int(m[2]) + 2}.{m[3]}"
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(weight|bias)$", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.match(r"controlnet_mid_block\.(weight|bias)$", key):
        return f"middle_block_out.0.{m[1]}"
    return _unet_name(key, config)


def _ldm_to_diffusers(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = {k: v for k, v in convert_controlnet_checkpoint(state, config).items() if v is not None}
    # diffusers' converter numbers the hint blocks as if there were always 4 levels (VAE factor 8);
    # a net with another number of levels (e.g. VAE factor 4) gets its hint blocks by our own names.
    converted = {k: v for k, v in converted.items() if not k.startswith("controlnet_cond_embedding.")}
    hint_keys = ["conv_in", "conv_out"] + [f"blocks.{i}" for i in range(_hint_blocks(config))]
    for name in hint_keys:
        for part in ("weight", "bias"):
            key = f"controlnet_cond_embedding.{name}.{part}"
            converted[key] = state[ldm_name(key, config)]
    if config.get("addition_embed_type") == "text_time":  # SDXL; diffusers' converter skips it
        for i, j in ((1, 0), (2, 2)):
            for part in ("weight", "bias"):
                if f"label_emb.0.{j}.{part}" in state:
                    converted[f"add_embedding.linear_{i}.{part}"] = state[f"label_emb.0.{j}.{part}"]
    return converted


# --------------------------------------------------------------------------- reading
def _layout(weights) -> str:
    keys = weights.keys()
    if "difference" in weights or f"{LDM_PREFIX}difference" in weights:
        raise StablekitError(f"{weights.path}: a diff ControlNet (stored as differences to a base UNet, key "
                             "'difference'); not supported, use the full version of this ControlNet")
    if "lora_controlnet" in weights:
        raise StablekitError(f"{weights.path}: a Control-LoRA (key 'lora_controlnet'); not supported, "
                             "use a full ControlNet")
    if "controlnet_cond_embedding.conv_in.weight" in weights:
        return "diffusers"
    if f"{LDM_PREFIX}zero_convs.0.0.weight" in weights:
        return "ldm-prefixed"
    if "zero_convs.0.0.weight" in weights:
        return "ldm"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise StablekitError(f"{weights.path}: not a ControlNet (no controlnet_cond_embedding.* or zero_convs.* keys; "
                         f"first keys: {sample}); give a ControlNet in the diffusers or A1111/ComfyUI layout")


_DETECT_KEYS = {"add_embedding.linear_1.weight": "label_emb.0.0.weight",
                "down_blocks.0.attentions.0.proj_in.weight": "input_blocks.1.1.proj_in.weight",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight":
                    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"}


def _detect_unet_config(shapes: dict[str, tuple]) -> tuple[str, dict]:
    from stablekit.formats.archs import shipped_configs

    if "label_emb.0.0.weight" in shapes:
        arch = "sdxl"
    else:
        proj = shapes.get("input_blocks.1.1.proj_in.weight", ())
        context = shapes.get("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (0, 768))[1]
        arch = "sd2" if len(proj) == 2 or context == 1024 else "sd1"
    return arch, shipped_configs(arch)["unet"]


def _resolve_config(weights, layout: str, shapes: dict, unet_config: dict | None, folder_config: dict | None):
    raw = weights.metadata.get(META_KEY)
    if raw:
        try:
            return "the recorded", json.loads(raw)
        except ValueError as exc:
            raise StablekitError(f"{weights.path}: the '{META_KEY}' metadata is damaged ({exc})") from None
    if folder_config is not None:
        return "its config.json", folder_config
    hint = "input_hint_block.0.weight" if layout != "diffusers" else "controlnet_cond_embedding.conv_in.weight"
    channels = shapes[hint][1] if hint in shapes else 3
    if unet_config is not None:
        return "the model's", controlnet_config(unet_config, channels)
    if layout == "diffusers":  # the few keys detection looks at, under their LDM names
        shapes = {ldm: shapes[key] for key, ldm in _DETECT_KEYS.items() if key in shapes}
    arch, config = _detect_unet_config(shapes)
    return f"an {arch}", controlnet_config(config, channels)


def load_controlnet(path, unet_config: dict | None = None, dtype=torch.float32, allow_pickle: bool = False):
    """A diffusers `ControlNetModel` from a folder or single file in any layout above, eval mode.

    unet_config: the config of the UNet it will drive (e.g. `dict(components.unet.config)`); used
    when the file carries no config, and a net of another architecture is then refused by shape.
    dtype: torch dtype or "fp32"/"fp16"/"bf16" (None keeps the file's).
    """
    from stablekit.formats.diffusers_folder import weight_files
    from stablekit.formats.ldm import check_file_against

    path, dtype = Path(path), parse_dtype(dtype)
    if not path.exists():
        raise StablekitError(f"{path} does not exist; give a ControlNet .safetensors file or diffusers folder")
    folder_config = None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StablekitError(f"{path} is a folder without config.json; give a diffusers ControlNet folder "
                                 "or a single file")
        try:
            folder_config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise StablekitError(f"cannot read {path / 'config.json'}: {exc}") from None
        path = weight_files(path, "unet", allow_pickle)[0]
    weights = open_weights(path, allow_pickle=allow_pickle)
    layout = _layout(weights)
    prefix = LDM_PREFIX if layout == "ldm-prefixed" else ""
    names = {k[len(prefix):]: k for k in weights.keys() if k.startswith(prefix)}
    shapes = {k: weights.shape(f) for k, f in names.items()}
    source, config = _resolve_config(weights, layout, shapes, unet_config, folder_config)
    net = _empty_net(config)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = expected if layout == "diffusers" else {ldm_name(k, config): s for k, s in expected.items()}
    check_file_against(weights.path, shapes, want, f"ControlNet matching {source} config")
    state = {k: weights.get(names[k], dtype) for k in want}
    if layout != "diffusers":
        state = _ldm_to_diffusers(state, config)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def _empty_net(config: dict):
    """A ControlNetModel on the meta device (no memory, no init), filled by assignment."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    from diffusers.models.modeling_utils import no_init_weights

    with init_empty_weights(), no_init_weights():
        return ControlNetModel.from_config(config)


# --------------------------------------------------------------------------- writing
def save_controlnet(net, path, to: str | None = None, dtype=None) -> Path:
    """Save a ControlNetModel as a diffusers folder (`to="diffusers"`, what `ControlNetModel.
    from_pretrained` reads) or one LDM-layout .safetensors file (`to="single-file"`, bare keys as
    the ControlNet 1.1 releases, read by A1111's extension and ComfyUI). Default: a path ending in
    .safetensors is a single file. Both carry the config, so any width loads back; same input,
    same bytes."""
    from stablekit.formats.archs import stable_json

    path, dtype = Path(path), parse_dtype(dtype)
    to = to or ("single-file" if path.suffix.lower() == ".safetensors" else "diffusers")
    if to not in ("diffusers", "single-file"):
        raise StablekitError(f"unknown save format {to!r}; use diffusers or single-file")
    if (to == "single-file") != (path.suffix.lower() == ".safetensors"):
        raise StablekitError(f"{path}: a single file needs a .safetensors name, a diffusers folder a name "
                             "without a suffix")
    config = stable_json(dict(net.config))
    config["_class_name"] = "ControlNetModel"
    state = net.state_dict()
    if to == "single-file":
        state = {ldm_name(k, config): v for k, v in state.items()}
    items = [(k, (lambda t=v: cast(t, dtype)), tuple(v.shape),
              dtype if dtype is not None and v.is_floating_point() else v.dtype) for k, v in state.items()]
    if to == "single-file":
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, items, {"format": "pt", META_KEY: json.dumps(config, sort_keys=True)})
        return path
    if path.exists() and not path.is_dir():
        raise StablekitError(f"{path} is a file; a diffusers ControlNet is a folder")
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / f"{WEIGHTS_NAME}.safetensors", items, {"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
