"""diffusers / PEFT LoRA files (`pytorch_lora_weights.safetensors`), alpha kept in the metadata.

Keys, as diffusers' `save_lora_weights` writes them: `unet.` / `text_encoder.` / `text_encoder_2.`
+ the module path + `.lora_A.weight` [r, in(,k,k)] / `.lora_B.weight` [out, r(,1,1)], and for
DoRA `.lora_magnitude_vector` [out] (PEFT's convention: W' = m * V / ||V|| per output row, with
V = W + scaling * B A). The LoRA scale is lora_alpha / r (lora_alpha / sqrt(r) with use_rslora).
diffusers keeps alpha only in the safetensors metadata key `lora_adapter_metadata`: a JSON dict
of each component's LoraConfig with the component prefixed (`"unet.r"`, `"unet.lora_alpha"`,
`"unet.alpha_pattern"`, ...). Without it alpha is lost (diffusers then assumes alpha = r), which is
why stablekit always writes it. PEFT's alpha_pattern / rank_pattern keys are module name
patterns matched at the end of a module path.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.lora_keys import TEXT_COMPONENTS, AdapterFile, LayerPatch, adaptable_modules, components_of

METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_SUFFIX = re.compile(r"^(.*)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.default)?(?:\.weight)?$")
_UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.")


def is_peft_keys(keys) -> bool:
    return any(".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A", ".lora_B")) for k in keys)


def patches_from_peft_state(state: dict, label: str) -> dict[str, LayerPatch]:
    """PEFT LoRA tensors {"<module>.lora_A.weight": ...} -> {module path: LayerPatch} (alpha unset).

    Accepts the `base_model.model.` prefix and `.default` adapter names PEFT may leave in keys.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _SUFFIX.match(key.removeprefix("base_model.model."))
        if not m:
            raise StablekitError(f"{label}: key {key!r} is not a PEFT LoRA tensor (.lora_A/.lora_B/.lora_magnitude_vector)")
        parts.setdefault(m[1], {})[m[2]] = tensor
    patches = {}
    for module, p in parts.items():
        if "lora_A" not in p or "lora_B" not in p:
            raise StablekitError(f"{label}: {module} has {'lora_A' if 'lora_A' in p else 'lora_B'} without its pair")
        dora = p.get("lora_magnitude_vector")
        patches[module] = LayerPatch(kind="lora", tensors={"up": p["lora_B"], "down": p["lora_A"]}, dora=dora,
                                     dora_kind="peft" if dora is not None else None)
    return patches


def _pattern_value(module: str, patterns: dict, default):
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read_peft_lora(path, weights=None) -> AdapterFile:
    """Read a diffusers/PEFT LoRA file; each layer's alpha comes from `lora_adapter_metadata`."""
    from stablekit.formats.weights import open_weights

    path = Path(path)
    weights = weights or open_weights(path)
    try:
        config = json.loads(weights.metadata.get(METADATA_KEY, "{}"))
    except ValueError:
        raise StablekitError(f"{path}: metadata {METADATA_KEY} is not JSON; the file is damaged") from None
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key in weights.keys():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS:
            if key.startswith(_UNET_ROOTS):  # a bare UNet adapter (`save_lora_adapter`)
                component, rest = "unet", key
            else:
                unknown.append(key)
                continue
        by_component.setdefault(component, {})[rest] = weights.get(key)
    patches = {}
    for component, state in by_component.items():
        cfg = {k.removeprefix(component + "."): v for k, v in config.items() if k.startswith(component + ".")}
        for module, patch in patches_from_peft_state(state, f"{path} ({component})").items():
            if "lora_alpha" in cfg:
                patch.alpha_value = float(_pattern_value(module, cfg.get("alpha_pattern"), cfg["lora_alpha"]))
            patch.rslora = bool(cfg.get("use_rslora", False))
            patches[f"{component}.{module}"] = patch
    return AdapterFile(path=path, format="peft", patches=patches, metadata=dict(weights.metadata),
                       unknown_keys=sorted(unknown))


def adapter_config(patches: dict[str, LayerPatch]) -> dict:
    """A LoraConfig dict (r, lora_alpha, patterns, target_modules, use_dora) for one component's patches."""
    ranks = {m: p.rank for m, p in patches.items()}
    alphas = {m: p.alpha_float if p.alpha_float is not None else float(p.rank) for m, p in patches.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": alpha, "target_modules": sorted(patches),
        "rank_pattern": {m: v for m, v in ranks.items() if v != r},
        "alpha_pattern": {m: v for m, v in alphas.items() if v != alpha},
        "use_dora": any(p.dora is not None for p in patches.values()),
        "use_rslora": any(p.rslora for p in patches.values()),
        "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True,
    }


def write_peft_lora(path, adapter: AdapterFile, metadata: dict[str, str] | None = None) -> None:
    """Write an AdapterFile whose patches are keyed "<component>.<module path>" in the diffusers layout.

    The `lora_adapter_metadata` JSON is rebuilt from the patches (so alpha is always kept);
    other metadata strings are carried over.
    """
    from stablekit.formats.weights import write_safetensors

    tensors, per_component = {}, {}
    for name, patch in adapter.patches.items():
        component, _, module = name.partition(".")
        if patch.kind != "lora" or "mid" in patch.tensors:
            raise StablekitError(f"{name}: a {patch.kind}{' (Tucker)' if 'mid' in patch.tensors else ''} layer has no "
                                 "PEFT LoRA form; keep it in the kohya/LyCORIS format")
        if patch.dora is not None and patch.dora_kind != "peft":
            raise StablekitError(f"{name}: a LyCORIS dora_scale has no PEFT form; keep it in the kohya/LyCORIS format")
        tensors[f"{name}.lora_A.weight"] = patch.tensors["down"]
        tensors[f"{name}.lora_B.weight"] = patch.tensors["up"]
        if patch.dora is not None:
            tensors[f"{name}.lora_magnitude_vector"] = patch.dora
        per_component.setdefault(component, {})[module] = patch
    meta = {k: v for k, v in (adapter.metadata if metadata is None else metadata).items() if k != METADATA_KEY}
    meta.setdefault("format", "pt")
    config = {}
    for component, patches in per_component.items():
        config.update({f"{component}.{k}": v for k, v in adapter_config(patches).items()})
    meta[METADATA_KEY] = json.dumps(config, indent=2, sort_keys=True)
    write_safetensors(path, [(k, (lambda t=t: t), tuple(t.shape), t.dtype) for k, t in tensors.items()], meta)


def save_peft_lora(path, unet_lora: dict, text_lora=None, *, alpha: float, rank: int,
                   metadata: dict[str, str] | None = None) -> None:
    """Save PEFT LoRA state dicts (as peft.get_peft_model_state_dict gives them) as a diffusers file.

    text_lora: the text encoder's dict, or [te1, te2] for SDXL. Every layer gets lora_alpha = alpha;
    rank is checked against the tensors.
    """
    texts = [] if text_lora is None else (list(text_lora) if isinstance(text_lora, (list, tuple)) else [text_lora])
    patches = {}
    for component, state in [("unet", unet_lora), *zip(TEXT_COMPONENTS, texts)]:
        for module, patch in patches_from_peft_state(state or {}, f"{component} LoRA").items():
            if patch.rank != rank:
                raise StablekitError(f"{component}.{module}: rank {patch.rank} in the tensors, {rank} given")
            patch.alpha_value = float(alpha)
            patches[f"{component}.{module}"] = patch
    write_peft_lora(path, AdapterFile(path=Path(path), format="peft", patches=patches), metadata or {})


def peft_name_table(components) -> dict[str, tuple[str, str]]:
    """"<component>.<module path>" -> (component, module path), with and without `text_model.`."""
    table = {}
    for component, module in components_of(components).items():
        for path in adaptable_modules(module):
            table[f"{component}.{path}"] = (component, path)
            if component in TEXT_COMPONENTS:
                other = path.removeprefix("text_model.") if path.startswith("text_model.") else "text_model." + path
                table.setdefault(f"{component}.{other}", (component, path))
    return table
