"""What every LoRA-like file becomes once read, and how its module names meet a loaded model.

A file is read (by `lora_kohya`, `lora_peft`, `lycoris`) into an `AdapterFile`: one `LayerPatch`
per adapted layer, keyed by the file's own module name (`lora_unet_down_blocks_0_..._to_q` for
kohya/LyCORIS, `unet.down_blocks.0....to_q` for PEFT). `resolve()` maps those names onto the
modules of loaded Components; `load_lora_file()` picks the reader from the keys.

Module names as the tools write them:
  kohya sd-scripts (networks/lora.py): `lora_unet_` + the UNet module path with "." -> "_"
    (diffusers paths for SD 1.x/2.x; SDXL trains on the original LDM UNet, so its paths are LDM
    ones: `input_blocks_4_1_transformer_blocks_0_attn1_to_q`); text encoders `lora_te_` (SD 1/2)
    or `lora_te1_` / `lora_te2_` (SDXL) + `text_model_encoder_layers_0_self_attn_q_proj`.
  PEFT/diffusers: `unet.` / `text_encoder.` / `text_encoder_2.` + the module path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from stablekit.errors import StablekitError

TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
# Layer kinds: LoRA/LoCon (kohya, PEFT), LoHa and LoKr (LyCORIS).
KINDS = ("lora", "loha", "lokr")


@dataclass
class LayerPatch:
    """One adapted layer, tensors exactly as the file holds them.

    kind: "lora" (tensors "up" [out, r(,1,1)], "down" [r, in(,k,k)], optional "mid" [r, r, k, k]),
    "loha" ("w1a", "w1b", "w2a", "w2b", optional "t1", "t2") or "lokr" ("w1" or "w1a"+"w1b",
    "w2" or "w2a"+"w2b", optional "t2"). alpha: the file's alpha tensor (None: scale 1 for
    kohya/LyCORIS, or `alpha_value` from PEFT metadata). dora: DoRA magnitude, `dora_kind`
    "lycoris" (`dora_scale`, LyCORIS/ComfyUI) or "peft" (`lora_magnitude_vector`).
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: torch.Tensor | None = None
    alpha_value: float | None = None  # PEFT: lora_alpha from the adapter metadata
    rslora: bool = False  # PEFT use_rslora: scale alpha / sqrt(r)
    dora: torch.Tensor | None = None
    dora_kind: str | None = None

    @property
    def rank(self) -> int:
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["w1b"].shape[0])
        for name in ("w1b", "w2b"):
            if name in t:
                return int(t[name].shape[0])
        return 0  # LoKr with two full factors: no rank (scale 1)

    @property
    def alpha_float(self) -> float | None:
        if self.alpha is not None:
            return float(self.alpha.float().item())
        return self.alpha_value

    def scale(self) -> float:
        """The factor the layer's product is multiplied by (before the user's strength).

        kohya/LyCORIS: alpha / rank (alpha absent or 0 means rank, i.e. 1); LoKr with both
        factors full: 1 (LyCORIS and ComfyUI ignore alpha then). PEFT: lora_alpha / r, or
        lora_alpha / sqrt(r) with use_rslora.
        """
        rank = self.rank
        alpha = self.alpha_float
        if rank == 0 or alpha is None or alpha == 0:
            return 1.0
        return alpha / (rank ** 0.5 if self.rslora else rank)


@dataclass
class AdapterFile:
    """A LoRA-like file as read: patches by the file's module names, metadata, format."""

    path: Path | None
    format: str  # "kohya" (incl. LyCORIS kinds) or "peft"
    patches: dict[str, LayerPatch]
    metadata: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)  # keys no reader understood

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "adapter"

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.patches.values():
            kind = p.kind + ("+dora" if p.dora is not None else "")
            counts[kind] = counts.get(kind, 0) + 1
        return counts


@dataclass
class MatchReport:
    """How an adapter file's layers met a model: matched targets and what did not match."""

    matched: dict[tuple[str, str], LayerPatch]  # (component, module path) -> patch
    unmatched: list[str]  # file module names with no module in the model
    shape_mismatch: list[str]  # "name: file (out, in) vs model (out, in)"
    unknown_keys: list[str]

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.shape_mismatch or self.unknown_keys)

    def summary(self) -> str:
        total = len(self.matched) + len(self.unmatched) + len(self.shape_mismatch)
        parts = [f"{len(self.matched)} of {total} layers match the model"]
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} have no such module (e.g. {', '.join(self.unmatched[:3])})")
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} have other shapes (e.g. {'; '.join(self.shape_mismatch[:2])})")
        if self.unknown_keys:
            parts.append(f"{len(self.unknown_keys)} keys of no known LoRA kind (e.g. {', '.join(self.unknown_keys[:3])})")
        return "; ".join(parts)


def adaptable_modules(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Linear and Conv2d layers of a module by path: the layers a LoRA can patch."""
    return {name: m for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def components_of(components) -> dict[str, torch.nn.Module]:
    mods = {"unet": components.unet, "text_encoder": components.text_encoder}
    if getattr(components, "text_encoder_2", None) is not None:
        mods["text_encoder_2"] = components.text_encoder_2
    return mods


def patch_out_in(patch: LayerPatch) -> tuple[int, int]:
    """(out features, in features x kernel) the patch produces, for shape checks."""
    import math

    t = patch.tensors
    if patch.kind == "lora":
        return int(t["up"].shape[0]), int(math.prod(t["down"].shape[1:]) if "mid" not in t
                                           else t["down"].shape[1] * math.prod(t["mid"].shape[2:]))
    if patch.kind == "loha":
        if "t1" in t:
            return int(t["w1a"].shape[0]), int(t["w1b"].shape[1] * math.prod(t["t1"].shape[2:]))
        return int(t["w1a"].shape[0]), int(t["w1b"].shape[1])
    w1 = (t["w1"].shape if "w1" in t else (t["w1a"].shape[0], t["w1b"].shape[1]))
    if "w2" in t:
        w2 = (t["w2"].shape[0], int(math.prod(t["w2"].shape[1:])))
    elif "t2" in t:
        w2 = (t["w2a"].shape[0], t["w2b"].shape[1] * math.prod(t["t2"].shape[2:]))
    else:
        w2 = (t["w2a"].shape[0], t["w2b"].shape[1])
    return int(w1[0] * w2[0]), int(w1[1] * w2[1])


def weight_out_in(weight: torch.Tensor) -> tuple[int, int]:
    import math

    return int(weight.shape[0]), int(math.prod(weight.shape[1:]))


def resolve(adapter: AdapterFile, components) -> MatchReport:
    """Map an adapter file's module names onto the modules of loaded Components."""
    if adapter.format == "peft":
        from stablekit.formats.lora_peft import peft_name_table
        table = peft_name_table(components)
    else:
        from stablekit.formats.lora_kohya import kohya_name_table
        table = kohya_name_table(components)
    mods = components_of(components)
    matched, unmatched, mismatch = {}, [], []
    for name, patch in adapter.patches.items():
        target = table.get(name)
        if target is None:
            unmatched.append(name)
            continue
        weight = mods[target[0]].get_submodule(target[1]).weight
        if patch_out_in(patch) != weight_out_in(weight):
            mismatch.append(f"{name} {patch_out_in(patch)} vs {weight_out_in(weight)}")
            continue
        matched[target] = patch
    return MatchReport(matched, sorted(unmatched), mismatch, list(adapter.unknown_keys))


def guess_arch(adapter: AdapterFile) -> str:
    """"sd1", "sd2", "sdxl" or "unknown" from names, widths and metadata of an adapter file.

    SDXL: te1/te2 prefixes, text_encoder_2, or LDM-style UNet names (kohya trains SDXL on the LDM
    UNet). Otherwise the cross-attention key/value input width: 768 (SD 1.x), 1024 (SD 2.x),
    2048 (SDXL); then kohya's `ss_base_model_version` / `ss_v2` metadata.
    """
    names = list(adapter.patches)
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in names):
        return "sdxl"
    if any(n.startswith("lora_unet_input_blocks_") or n.startswith("lora_unet_output_blocks_") for n in names):
        return "sdxl"
    widths = {patch_out_in(p)[1] for n, p in adapter.patches.items()
              if ("attn2_to_k" in n or "attn2.to_k" in n)}
    by_width = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
    for w in widths:
        if w in by_width:
            return by_width[w]
    version = adapter.metadata.get("ss_base_model_version", "")
    if version in ("sd1", "sd2", "sd2-v"):  # stablekit arch names, as some writers store them
        return version.removesuffix("-v")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or adapter.metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    return "unknown"


def load_lora_file(path) -> AdapterFile:
    """Read a LoRA / LoCon / LoHa / LoKr / DoRA file (kohya, LyCORIS or PEFT/diffusers layout)."""
    from stablekit.formats.lora_kohya import is_kohya_keys, read_kohya_lora
    from stablekit.formats.lora_peft import is_peft_keys, read_peft_lora
    from stablekit.formats.weights import open_weights

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise StablekitError(f"{path}: LoRA files are read from .safetensors only; convert it (pickles can run code)")
    weights = open_weights(path)
    keys = weights.keys()
    if not keys:
        raise StablekitError(f"{path} holds no tensors; it is not a LoRA file")
    if is_kohya_keys(keys):
        return read_kohya_lora(path, weights)
    if is_peft_keys(keys):
        return read_peft_lora(path, weights)
    raise StablekitError(
        f"{path}: not a LoRA file (no lora_unet_/lora_te_ or .lora_A./.lora_B. keys; first keys: "
        f"{', '.join(sorted(keys)[:3])}); give a kohya, LyCORIS or diffusers/PEFT LoRA")


def addnet_hash(path) -> str:
    """The sha256 of a safetensors file's tensor data (after the header): A1111's "Lora hashes"
    value is its first 12 hex digits (kohya's `sshs_model_hash` / A1111 `addnet_hash_safetensors`)."""
    import hashlib
    import struct

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def component_of_name(name: str) -> str:
    """The model component a file's layer name belongs to ("unet", "text_encoder", "text_encoder_2")."""
    if name.startswith(("lora_te2_", "text_encoder_2.")):
        return "text_encoder_2"
    if name.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
        return "text_encoder"
    return "unet"


def inspect_lora(path) -> dict:
    """What a LoRA-like file holds, without a model: format, kinds, arch guess, ranks, alphas,
    layers per component, A1111 hash and metadata (JSON-serialisable)."""
    from collections import Counter

    adapter = load_lora_file(path)
    ranks = Counter(p.rank for p in adapter.patches.values())
    alphas = Counter(p.alpha_float for p in adapter.patches.values())
    return {
        "path": str(path), "format": adapter.format, "kinds": adapter.kinds(), "arch": guess_arch(adapter),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "alphas": {("none" if k is None else f"{k:g}"): v for k, v in alphas.items()},
        "layers": dict(Counter(component_of_name(n) for n in adapter.patches)),
        "unknown_keys": adapter.unknown_keys, "hash": addnet_hash(path)[:12], "metadata": adapter.metadata,
    }
