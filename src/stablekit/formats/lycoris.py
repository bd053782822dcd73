"""Per-layer tensor names of kohya LoRA/LoCon and LyCORIS LoHa / LoKr, with DoRA.

Every kohya-style file (sd-scripts networks/lora.py, LyCORIS) stores a layer as
`<module name>.<suffix>`. The suffixes, as LyCORIS (lycoris/modules/{locon,loha,lokr}.py) and
kohya write them and ComfyUI / A1111 read them:

  LoRA / LoCon  lora_up.weight [out, r(,1,1)], lora_down.weight [r, in(,k,k)],
                lora_mid.weight [r, r, k, k] (LoCon "Tucker" convolutions)
  LoHa          hada_w1_a [out, r], hada_w1_b [r, in*k*k], hada_w2_a, hada_w2_b, hada_t1, hada_t2
                (Tucker cores [r, r, k, k]): W = (w1a w1b) * (w2a w2b)   (Hadamard product)
  LoKr          lokr_w1 or lokr_w1_a/lokr_w1_b, lokr_w2 or lokr_w2_a/lokr_w2_b, lokr_t2:
                W = kron(w1, w2)
  all           alpha (scalar), dora_scale (DoRA magnitude: [1, in, ...] by default, [out, 1, ...]
                when LyCORIS ran with wd_on_out)

This module maps a layer's tensors to and from `LayerPatch`; the arithmetic is in
`stablekit.adapters.math`. Import then export gives the same tensors, bit for bit.
"""
from __future__ import annotations

import torch

from stablekit.formats.lora_keys import LayerPatch

# file suffix -> (kind, LayerPatch tensor name); kind None for suffixes every kind may carry
SUFFIXES = {
    "lora_up.weight": ("lora", "up"), "lora_down.weight": ("lora", "down"), "lora_mid.weight": ("lora", "mid"),
    "hada_w1_a": ("loha", "w1a"), "hada_w1_b": ("loha", "w1b"), "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1a"), "lokr_w1_b": ("lokr", "w1b"),
    "lokr_w2": ("lokr", "w2"), "lokr_w2_a": ("lokr", "w2a"), "lokr_w2_b": ("lokr", "w2b"),
    "lokr_t2": ("lokr", "t2"),
}
COMMON = ("alpha", "dora_scale")
_FILE_NAME = {(kind, name): suffix for suffix, (kind, name) in SUFFIXES.items()}
# What each kind needs to be complete.
_REQUIRED = {"lora": [("up",), ("down",)], "loha": [("w1a",), ("w1b",), ("w2a",), ("w2b",)],
             "lokr": [("w1", "w1a"), ("w2", "w2a")]}
_PAIRS = {"w1a": "w1b", "w2a": "w2b"}


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, suffix) of a kohya-style key, or None if the suffix is unknown."""
    for suffix in (*SUFFIXES, *COMMON):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def patch_from_group(name: str, group: dict[str, torch.Tensor]) -> LayerPatch:
    """A LayerPatch from one layer's tensors {suffix: tensor}; ValueError naming what is wrong."""
    kinds = {SUFFIXES[s][0] for s in group if s in SUFFIXES}
    if len(kinds) != 1:
        found = ", ".join(sorted(group))
        raise ValueError(f"{name}: {'mixes ' + ' and '.join(sorted(kinds)) if kinds else 'has no weights'} ({found})")
    kind = kinds.pop()
    tensors = {SUFFIXES[s][1]: t for s, t in group.items() if s in SUFFIXES}
    for options in _REQUIRED[kind]:
        if not any(o in tensors for o in options):
            raise ValueError(f"{name}: {kind} layer without {_FILE_NAME[(kind, options[0])]}")
    for a, b in _PAIRS.items():
        if (a in tensors) != (b in tensors):
            raise ValueError(f"{name}: {_FILE_NAME[(kind, a)]} and {_FILE_NAME[(kind, b)]} must come together")
    dora = group.get("dora_scale")
    return LayerPatch(kind=kind, tensors=tensors, alpha=group.get("alpha"), dora=dora,
                      dora_kind="lycoris" if dora is not None else None)


def group_from_patch(patch: LayerPatch) -> dict[str, torch.Tensor]:
    """The inverse of patch_from_group: {suffix: tensor} as kohya / LyCORIS write a layer."""
    group = {_FILE_NAME[(patch.kind, name)]: t for name, t in patch.tensors.items()}
    if patch.alpha is not None:
        group["alpha"] = patch.alpha
    elif patch.alpha_value is not None:
        group["alpha"] = torch.tensor(float(patch.alpha_value))
    if patch.dora is not None:
        if patch.dora_kind != "lycoris":
            raise ValueError("a PEFT DoRA magnitude (lora_magnitude_vector) has no kohya/LyCORIS form; "
                             "save it in the PEFT format")
        group["dora_scale"] = patch.dora
    return group
