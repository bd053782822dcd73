"""The original LDM single-file layout (CompVis/Stability checkpoints as A1111, ComfyUI, Civitai use).

Keys: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), and the text encoder(s):
SD 1.x `cond_stage_model.transformer.text_model.*` (OpenAI CLIP, transformers names), SD 2.x
`cond_stage_model.model.*` (OpenCLIP: fused `in_proj` q/k/v, `text_projection` as x @ W),
SDXL `conditioner.embedders.0.transformer.text_model.*` + `conditioner.embedders.1.model.*`.

Loading uses diffusers' own converters (`diffusers.loaders.single_file_utils.convert_ldm_*`),
run on stand-in tensors (`_Trace`) that record, for every diffusers tensor, which file tensor it
comes from and which view ops (indexing, transpose) produce it. The recorded plan then moves
the real data one tensor at a time. Saving inverts the same plan: each diffusers tensor is
copied into the view of the LDM tensor it was read from, so the export cannot drift from the
import. `ldm_name` gives the LDM name and shape of a diffusers tensor; it is only used to list
the keys to export and to word error messages, and every use is checked against the traced plan.
"""
from __future__ import annotations

import re
from collections import defaultdict
from types import SimpleNamespace

import torch

from stablekit.errors import StablekitError
from stablekit.formats.assemble import ComponentDtypes

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# Text encoder sub-layouts per layout family: component -> (kind, prefix).
TEXT_LAYOUTS = {
    "sd1": {"text_encoder": ("clip", "cond_stage_model.transformer.")},
    "sd2": {"text_encoder": ("openclip", "cond_stage_model.model.")},
    "sdxl": {
        "text_encoder": ("clip", "conditioner.embedders.0.transformer."),
        "text_encoder_2": ("openclip", "conditioner.embedders.1.model."),
    },
}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def layout_for(arch: str, configs: dict) -> str:
    """LDM layout family of a model: "sdxl" (two text encoders), "sd2" (OpenCLIP) or "sd1"."""
    if configs.get("text_encoder_2"):
        return "sdxl"
    return "sd2" if arch in ("sd2", "sd2-v") else "sd1"


def component_prefixes(layout: str) -> dict[str, str]:
    prefixes = {"unet": UNET, "vae": VAE}
    prefixes.update({name: prefix for name, (_, prefix) in TEXT_LAYOUTS[layout].items()})
    return prefixes


# --------------------------------------------------------------------------- diffusers -> LDM names
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                   ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]


def _rename(rest: str, table) -> str:
    for new, old in table:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_name(key: str, config: dict) -> str:
    n = config["layers_per_block"] + 1  # LDM numbers resnets, attentions and samplers together
    simple = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
              "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
              "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in simple.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        sub = f"0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"input_blocks.{1 + b * n + i}.{sub}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        sub = f"0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"output_blocks.{b * n + i}.{sub}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        b = int(m[1])
        has_attention = config["up_block_types"][b].startswith("CrossAttn")
        return f"output_blocks.{b * n + n - 1}.{2 if has_attention else 1}.conv.{m[2]}"
    raise KeyError(key)


def _vae_name(key: str, shape: tuple, config: dict) -> tuple[str, tuple]:
    levels = len(config["up_block_types"])
    if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
        return f"{m[1]}.norm_out.{m[2]}", shape
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], [('conv_shortcut', 'nin_shortcut')])}", shape
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", shape
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        rest = _rename(m[3], [("conv_shortcut", "nin_shortcut")])
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{rest}", shape
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}", shape
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], [('conv_shortcut', 'nin_shortcut')])}", shape
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key):
        conv = m[2] != "group_norm" and m[3] == "weight"  # LDM's attention uses 1x1 convolutions
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}", (*shape, 1, 1) if conv else shape
    return key, shape  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def _openclip_name(key: str, shape: tuple) -> tuple[str, tuple]:
    key = key.removeprefix("text_model.")
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    if key in fixed:
        return fixed[key], shape
    if key == "text_projection.weight":
        return "text_projection", shape[::-1]  # OpenCLIP computes x @ W, a Linear x @ W.T
    m = re.match(r"encoder\.layers\.(\d+)\.(.*)", key)
    if not m:
        raise KeyError(key)
    layer, rest = m[1], m[2]
    if q := re.match(r"self_attn\.[qkv]_proj\.(weight|bias)", rest):
        return f"transformer.resblocks.{layer}.attn.in_proj_{q[1]}", (3 * shape[0], *shape[1:])
    return f"transformer.resblocks.{layer}.{_rename(rest, _OPENCLIP_LAYER)}", shape


def ldm_name(component: str, key: str, shape: tuple, layout: str, configs: dict) -> tuple[str, tuple]:
    """LDM key and shape of the file tensor that holds diffusers tensor `key` (of `shape`)."""
    shape = tuple(shape)
    if component == "unet":
        return UNET + _unet_name(key, configs["unet"]), shape
    if component == "vae":
        name, shape = _vae_name(key, shape, configs["vae"])
        return VAE + name, shape
    kind, prefix = TEXT_LAYOUTS[layout][component]
    if kind == "clip":
        return prefix + "text_model." + key.removeprefix("text_model."), shape
    name, shape = _openclip_name(key, shape)
    return prefix + name, shape


def expected_ldm(expected: dict[str, dict[str, tuple]], layout: str, configs: dict) -> dict[str, tuple]:
    """{LDM key: shape} for expected diffusers shapes per component."""
    out = {}
    for component, shapes in expected.items():
        for key, shape in shapes.items():
            name, ldm_shape = ldm_name(component, key, shape, layout, configs)
            out[name] = ldm_shape
    return out


# --------------------------------------------------------------------------- tracing the converters
class _Trace:
    """Stands in for a tensor while a diffusers converter runs: remembers the file key it came
    from and the view ops applied, and carries a meta tensor so shapes stay right."""

    def __init__(self, key: str, meta: torch.Tensor, ops: tuple = ()):
        self.key, self.meta, self.ops = key, meta, ops

    shape = property(lambda self: self.meta.shape)
    ndim = property(lambda self: self.meta.ndim)
    T = property(lambda self: _Trace(self.key, self.meta.T, self.ops + (("T", None),)))

    def __getitem__(self, index):
        return _Trace(self.key, self.meta[index], self.ops + (("index", index),))

    def contiguous(self):
        return self

    clone = detach = contiguous


def apply_ops(tensor: torch.Tensor, ops: tuple) -> torch.Tensor:
    """Replay recorded view ops; on an output tensor this gives the view to copy into."""
    for op, arg in ops:
        tensor = tensor.T if op == "T" else tensor[arg]
    return tensor


def trace_plan(shapes: dict[str, tuple], layout: str, configs: dict) -> dict[str, dict[str, _Trace]]:
    """{component: {diffusers key: _Trace}} from running diffusers' converters on stand-ins.

    shapes: {LDM key: shape} of the file (only the keys under each component's prefix are used).
    """
    from diffusers.loaders import single_file_utils as sfu

    def stand_ins(prefix):
        return {k: _Trace(k, torch.empty(s, device="meta")) for k, s in shapes.items() if k.startswith(prefix)}

    plan = {}
    plan["unet"] = sfu.convert_ldm_unet_checkpoint(stand_ins(UNET), dict(configs["unet"]))
    if configs.get("vae"):
        plan["vae"] = sfu.convert_ldm_vae_checkpoint(stand_ins(VAE), dict(configs["vae"]))
    for component, (kind, prefix) in TEXT_LAYOUTS[layout].items():
        if kind == "clip":
            converted = sfu.convert_ldm_clip_checkpoint(stand_ins(prefix))
        else:
            model = SimpleNamespace(config=SimpleNamespace(hidden_size=configs[component]["hidden_size"]))
            converted = sfu.convert_open_clip_checkpoint(model, stand_ins(prefix), prefix=prefix)
        if component == "text_encoder":
            # transformers >= 5.6 CLIPTextModel has no `text_model.` level (diffusers strips it too);
            # CLIPTextModelWithProjection (text_encoder_2) keeps it.
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        plan[component] = converted
    return {c: {k: v for k, v in p.items() if isinstance(v, _Trace)} for c, p in plan.items()}


# --------------------------------------------------------------------------- checks
def _examples(items: list[str], n: int = 3) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_file_against(path, file_shapes: dict[str, tuple], want: dict[str, tuple], what: str) -> None:
    """One-line StablekitError if tensors are missing from the file or have the wrong shape."""
    missing = sorted(k for k in want if k not in file_shapes)
    wrong = sorted(k for k in want if k in file_shapes and tuple(file_shapes[k]) != tuple(want[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(want)} expected tensors are missing (e.g. {_examples(missing)})")
    if wrong:
        shown = [f"{k} is {list(file_shapes[k])}, expected {list(want[k])}" for k in wrong[:2]]
        more = f" and {len(wrong) - 2} more" if len(wrong) > 2 else ""
        problems.append(f"{len(wrong)} tensors have the wrong shape ({'; '.join(shown)}{more})")
    if problems:
        raise StablekitError(
            f"{path}: not a {what} checkpoint: {'; '.join(problems)}; "
            "pass the right arch (--arch) or check that the file is complete")


def _check_plan(plan, expected: dict[str, dict[str, tuple]]) -> None:
    # The file was checked against `ldm_name`; if the traced converter disagrees, the two
    # mappings drifted apart: a bug, not a user error.
    for component, shapes in expected.items():
        got = plan.get(component, {})
        bad = [k for k, s in shapes.items() if k not in got or tuple(got[k].shape) != tuple(s)]
        if bad:
            raise RuntimeError(f"LDM mapping disagrees with diffusers' converter for {component}: {bad[:5]}")


# --------------------------------------------------------------------------- read and write
# Early SD 1.x files lack transformers' `text_model.` level in the CLIP keys; A1111 renames them
# the same way (modules/sd_models.py, checkpoint_dict_replacements_sd1).
_OLD_CLIP = {f"cond_stage_model.transformer.{p}": f"cond_stage_model.transformer.text_model.{p}"
             for p in ("embeddings.", "encoder.", "final_layer_norm.")}


def canonical_keys(keys) -> dict[str, str]:
    """{canonical LDM key: key as written in the file}."""
    out = {}
    for key in keys:
        canonical = key
        for old, new in _OLD_CLIP.items():
            if key.startswith(old):
                canonical = new + key[len(old):]
                break
        out[canonical] = key
    return out


def check_ldm_file(weights, layout: str, configs: dict, expected: dict[str, dict[str, tuple]], what: str):
    """({canonical key: file key}, {canonical key: shape}) of a file that has every tensor the
    modules need, in the right shape; else the one-line StablekitError of `check_file_against`."""
    names = canonical_keys(weights.keys())
    file_shapes = {k: weights.shape(f) for k, f in names.items()}
    check_file_against(weights.path, file_shapes, expected_ldm(expected, layout, configs), what)
    return names, file_shapes


def read_state_dicts(weights, layout: str, configs: dict, expected: dict[str, dict[str, tuple]],
                     dtype, what: str):
    """(state dicts {component: {diffusers key: tensor}}, unmapped file keys, renamed keys).

    Each file tensor is read once per dtype its components want (`dtype`: a dtype, None, or
    ComponentDtypes), cast as it is read, and split into the diffusers tensors it feeds (fused
    q/k/v are cloned apart so nothing holds the fused tensor alive).
    renamed: {canonical key: file key} for old-style keys, so a save can write them back as found.
    """
    names, file_shapes = check_ldm_file(weights, layout, configs, expected, what)
    plan = trace_plan(file_shapes, layout, configs)
    _check_plan(plan, expected)
    uses = defaultdict(list)  # canonical file key -> [(component, diffusers key, ops)]
    for component, shapes in expected.items():
        for key in shapes:
            trace = plan[component][key]
            uses[trace.key].append((component, key, trace.ops))
    state_dicts = {component: {} for component in expected}
    dtypes = ComponentDtypes.of(dtype)
    for canonical, targets in uses.items():
        for want in dict.fromkeys(dtypes(component) for component, _, _ in targets):  # one read per dtype
            tensor = weights.get(names[canonical], want)
            for component, key, ops in targets:
                if dtypes(component) == want:
                    state_dicts[component][key] = apply_ops(tensor, ops).clone() if ops else tensor
            del tensor
    unmapped = [f for k, f in names.items() if k not in uses]
    renamed = {k: f for k, f in names.items() if k != f and k in uses}
    return state_dicts, unmapped, renamed


def write_items(modules: dict, layout: str, configs: dict, dtype: torch.dtype | None):
    """(LDM key, make_tensor, shape, dtype) for every tensor of `modules` in the LDM layout."""
    from stablekit.formats.weights import cast

    expected = {c: {k: tuple(v.shape) for k, v in m.state_dict().items()} for c, m in modules.items()}
    ldm_shapes = expected_ldm(expected, layout, configs)
    plan = trace_plan(ldm_shapes, layout, configs)
    _check_plan(plan, expected)
    sources = defaultdict(list)  # LDM key -> [(tensor, ops)]
    for component, module in modules.items():
        for key, tensor in module.state_dict().items():
            trace = plan[component][key]
            sources[trace.key].append((tensor, trace.ops))
    items = []
    for ldm_key, parts in sources.items():
        shape = ldm_shapes[ldm_key]
        out_dtype = parts[0][0].dtype if dtype is None or not parts[0][0].is_floating_point() else dtype
        if sum(t.numel() for t, _ in parts) != torch.Size(shape).numel():
            raise RuntimeError(f"LDM tensor {ldm_key} is not covered exactly by {len(parts)} parts")
        items.append((ldm_key, _assembler(parts, shape, out_dtype, cast), shape, out_dtype))
    return items


def _assembler(parts, shape, dtype, cast):
    def make():
        if len(parts) == 1 and not parts[0][1]:
            return cast(parts[0][0], dtype)
        out = torch.empty(shape, dtype=dtype)
        for tensor, ops in parts:
            apply_ops(out, ops).copy_(tensor)  # the inverse of reading: write into the same view
        return out
    return make
