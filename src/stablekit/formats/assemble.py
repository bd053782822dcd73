"""Filling empty (meta-device) modules with loaded tensors and wrapping them as Components."""
from __future__ import annotations

import torch

from stablekit.components import PREDICTION_TYPES, Components
from stablekit.formats.archs import build_modules


def empty_modules(configs: dict) -> tuple[dict, dict[str, dict[str, tuple]]]:
    """Meta-device modules for `configs` and the shape of every tensor they expect."""
    modules = {k: v for k, v in build_modules(configs, empty=True).items() if v is not None}
    expected = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in modules.items()}
    return modules, expected


class ComponentDtypes:
    """The dtype each component is read into: `default`, or its entry in `per_component`."""

    def __init__(self, default: torch.dtype | None, per_component: dict[str, torch.dtype | None] | None = None):
        self.default, self.per_component = default, dict(per_component or {})

    @classmethod
    def of(cls, dtype) -> "ComponentDtypes":
        """`dtype` itself if it is one, else every component in `dtype`."""
        return dtype if isinstance(dtype, cls) else cls(dtype)

    def __call__(self, component: str) -> torch.dtype | None:
        return self.per_component.get(component, self.default)


def fill(modules: dict, state_dicts: dict[str, dict[str, torch.Tensor]], dtype) -> dict:
    """Load state dicts into meta modules by assignment (no second copy), eval mode. dtype: what
    the tensors were read as (a dtype, None, or ComponentDtypes), recorded in transformers configs."""
    dtypes = ComponentDtypes.of(dtype)
    for name, module in modules.items():
        dtype = dtypes(name)
        module.load_state_dict(state_dicts[name], strict=True, assign=True)
        still_empty = [n for n, p in module.named_parameters() if p.is_meta]
        if still_empty:
            raise RuntimeError(f"{name}: parameters left unloaded: {still_empty[:5]}")
        if dtype is not None and hasattr(module.config, "dtype") and not isinstance(module.config, dict):
            module.config.dtype = dtype  # transformers configs record the weights' dtype
        module.eval()
    return modules


def set_prediction_type(configs: dict, prediction_type: str | None) -> dict:
    from stablekit.errors import StablekitError

    if prediction_type is not None:
        if prediction_type not in PREDICTION_TYPES:
            raise StablekitError(f"unknown prediction type {prediction_type!r}; use epsilon or v_prediction")
        configs["scheduler"] = dict(configs["scheduler"], prediction_type=prediction_type)
    return configs


def make_components(arch: str, modules: dict, configs: dict, tokenizers, name: str, hash_file: str, source: str,
                    extra: dict) -> Components:
    return Components(
        arch=arch,
        unet=modules["unet"],
        vae=modules.get("vae"),
        text_encoder=modules["text_encoder"],
        tokenizer=tokenizers[0],
        scheduler_config=dict(configs["scheduler"]),
        text_encoder_2=modules.get("text_encoder_2"),
        tokenizer_2=tokenizers[1],
        name=name,
        hash_file=hash_file,
        source=source,
        extra=extra,
    )
