"""kohya sd-scripts LoRA / LoCon files (also the layout of LyCORIS LoHa, LoKr and DoRA files).

Keys, as sd-scripts networks/lora.py writes them: `<lora name>.<suffix>` where lora name is
`lora_unet_` / `lora_te_` (SD 1.x/2.x) / `lora_te1_` + `lora_te2_` (SDXL) followed by the module
path with "." replaced by "_", and suffix one of `formats.lycoris.SUFFIXES` (`lora_down.weight`,
`lora_up.weight`, `alpha`, ...). UNet paths are diffusers module paths for SD 1.x/2.x and LDM paths
for SDXL (sd-scripts trains SDXL on its own copy of the original UNet); text encoder paths keep
transformers' `text_model.` prefix. The layer's scale is alpha / rank. Training settings are kept in
`ss_*` safetensors metadata (`ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`, ...).

Names are "_"-joined, so they cannot be split back into paths; `kohya_name_table` builds the
name of every Linear/Conv2d of a loaded model instead (both the diffusers and the LDM spelling of
UNet paths, since SD 1.x files from other trainers use LDM names too).
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.lora_keys import AdapterFile, LayerPatch, adaptable_modules, components_of
from stablekit.formats.lycoris import group_from_patch, patch_from_group, split_key

PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def is_kohya_keys(keys) -> bool:
    return any(k.startswith(PREFIXES) for k in keys)


def read_kohya_lora(path, weights=None) -> AdapterFile:
    """Read a kohya / LyCORIS file into an AdapterFile (patches keyed by kohya layer name)."""
    from stablekit.formats.weights import open_weights

    path = Path(path)
    weights = weights or open_weights(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key in weights.keys():
        split = split_key(key)
        if split is None or not split[0].startswith(PREFIXES):
            unknown.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = weights.get(key)
    patches = {}
    for name, group in groups.items():
        try:
            patches[name] = patch_from_group(name, group)
        except ValueError as exc:
            raise StablekitError(f"{path}: layer {exc}; the file is incomplete or of an unsupported LyCORIS kind") from None
    return AdapterFile(path=path, format="kohya", patches=patches, metadata=dict(weights.metadata),
                       unknown_keys=sorted(unknown))


def write_kohya_lora(path, adapter: AdapterFile, metadata: dict[str, str] | None = None) -> None:
    """Write an AdapterFile whose patches carry kohya names (as read_kohya_lora gives them)."""
    from stablekit.formats.weights import write_safetensors

    tensors = {}
    for name, patch in adapter.patches.items():
        try:
            group = group_from_patch(patch)
        except ValueError as exc:
            raise StablekitError(f"{name}: {exc}") from None
        tensors.update({f"{name}.{suffix}": t for suffix, t in group.items()})
    meta = dict(adapter.metadata if metadata is None else metadata)
    write_safetensors(path, [(k, (lambda t=t: t), tuple(t.shape), t.dtype) for k, t in tensors.items()], meta)


def save_kohya_lora(path, unet_lora: dict, text_lora=None, *, alpha: float, rank: int, arch: str,
                    metadata: dict[str, str] | None = None, unet_config: dict | None = None) -> None:
    """Save PEFT LoRA state dicts (keys as peft.get_peft_model_state_dict gives them) in kohya format.

    unet_lora: the UNet's dict; text_lora: the text encoder's dict, or [te1, te2] for SDXL.
    alpha and rank are written per layer (`.alpha`) and as `ss_network_alpha` / `ss_network_dim`;
    arch ("sd1", "sd2", "sd2-v", "sdxl", or another name for a UNet with diffusers paths) picks the
    UNet path spelling and `ss_base_model_version`. unet_config: the UNet config for SDXL-style
    LDM names (default: the shipped SDXL config). metadata: extra `ss_*` strings.
    """
    from stablekit.formats.lora_peft import patches_from_peft_state

    texts = [] if text_lora is None else (list(text_lora) if isinstance(text_lora, (list, tuple)) else [text_lora])
    if len(texts) > 2:
        raise StablekitError(f"text_lora: {len(texts)} text encoder dicts; give one, or two for SDXL")
    prefixes = ["lora_te1_", "lora_te2_"] if arch == "sdxl" or len(texts) == 2 else ["lora_te_"]
    patches: dict[str, LayerPatch] = {}
    for module, patch in patches_from_peft_state(unet_lora, "unet LoRA").items():
        patches["lora_unet_" + _unet_path(module, patch, arch, unet_config).replace(".", "_")] = patch
    for prefix, state in zip(prefixes, texts):
        for module, patch in patches_from_peft_state(state, "text encoder LoRA").items():
            patches[prefix + _text_path(module).replace(".", "_")] = patch
    for patch in patches.values():
        patch.alpha = torch.tensor(float(alpha), dtype=patch.tensors["down"].dtype)
        patch.alpha_value = None
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": BASE_MODEL_VERSION.get(arch, arch), "ss_v2": str(arch in ("sd2", "sd2-v"))}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    write_kohya_lora(path, AdapterFile(path=Path(path), format="kohya", patches=patches), meta)


def adapter_to_kohya(adapter: AdapterFile, components) -> AdapterFile:
    """A (PEFT) AdapterFile renamed to kohya layer names for the model it was resolved against."""
    from stablekit.formats.lora_keys import resolve

    report = resolve(adapter, components)
    if not report.ok:
        raise StablekitError(f"{adapter.label}: {report.summary()}")
    arch = "sdxl" if components.is_sdxl else components.arch
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if components.is_sdxl else "lora_te_",
                "text_encoder_2": "lora_te2_"}
    patches = {}
    for (component, module), patch in report.matched.items():
        if component == "unet":
            path = _unet_path(module, patch, arch, dict(components.unet.config))
        else:
            path = _text_path(module)
        p = LayerPatch(**{**patch.__dict__})
        if p.alpha is None and p.alpha_value is not None:
            p.alpha = torch.tensor(float(p.alpha_value))
        p.alpha_value = None
        patches[prefixes[component] + path.replace(".", "_")] = p
    return AdapterFile(path=None, format="kohya", patches=patches, metadata=dict(adapter.metadata))


def kohya_name_table(components) -> dict[str, tuple[str, str]]:
    """kohya layer name -> (component, module path) for every Linear/Conv2d of the model."""
    table: dict[str, tuple[str, str]] = {}
    mods = components_of(components)
    unet_config = dict(components.unet.config)
    for path, module in adaptable_modules(mods["unet"]).items():
        table["lora_unet_" + path.replace(".", "_")] = ("unet", path)
        ldm = _ldm_unet_path(path, tuple(module.weight.shape), unet_config)
        if ldm:
            table.setdefault("lora_unet_" + ldm.replace(".", "_"), ("unet", path))
    te_prefixes = {"text_encoder": ("lora_te1_",) if components.is_sdxl else ("lora_te_", "lora_te1_"),
                   "text_encoder_2": ("lora_te2_",)}
    for component in ("text_encoder", "text_encoder_2"):
        if component not in mods:
            continue
        for path in adaptable_modules(mods[component]):
            for prefix in te_prefixes[component]:
                table[prefix + _text_path(path).replace(".", "_")] = (component, path)
    return table


def _text_path(path: str) -> str:
    # transformers 5.6+ dropped the `text_model.` level from CLIPTextModel; kohya names keep it.
    return path if path.startswith("text_model.") or path == "text_projection" else "text_model." + path


def _ldm_unet_path(path: str, shape: tuple, unet_config: dict) -> str | None:
    from stablekit.formats.ldm import UNET, ldm_name

    try:
        name, _ = ldm_name("unet", path + ".weight", shape, "sd1", {"unet": unet_config})
    except (KeyError, IndexError):
        return None
    return name.removeprefix(UNET).removesuffix(".weight")


def _unet_path(module: str, patch: LayerPatch, arch: str, unet_config: dict | None) -> str:
    if arch != "sdxl":
        return module
    if unet_config is None:
        from stablekit.formats.archs import shipped_configs
        unet_config = shipped_configs("sdxl")["unet"]
    ldm = _ldm_unet_path(module, (), unet_config)
    if ldm is None:
        raise StablekitError(f"unet LoRA layer {module!r} has no SDXL (LDM) name; it is not an SDXL UNet layer")
    return ldm
