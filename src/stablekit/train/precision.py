"""Training precision: which mixed precision a run uses, and the frozen base kept in bf16.

`mixed_precision = "auto"` (the default) asks generation's per-machine probe
(generate/acceleration.py: the UNet's first block timed in fp32 and bf16, cached per machine) and
trains in bf16 only where that probe chose bf16: a full-size UNet on a CPU with native bf16
kernels. A tiny UNet (the embedded shapes model) is bound by per-operator overhead and stays fp32,
and so does every run off the CPU (no probe there yet) or with STABLEKIT_DTYPE=fp32.

Autocast alone does not make a large CPU run faster: measured on the SD 1.5 UNet at 256 px, batch
1, one forward and backward took 16-18 s with fp32 weights under bf16 autocast, the same as fp32,
because every call casts the 860 M fp32 weights again. diffusers' example scripts therefore cast the
weights that do not train to bf16 (`weight_dtype`); with the frozen UNet in bf16 the same step took
6.3-7 s against 12.7-13.7 s in fp32 (scratch measurement, CPU shared; benchmarks/bench_train_peers.py
has the end-to-end figures). `cast_frozen` does that for the UNet's layers that hold no trainable
parameter (all of them for textual inversion and ControlNet, the base layers under LoRA, none for a
full fine-tune), so trained weights and optimizer state stay fp32. A cast layer takes inputs of
any float dtype (it casts them to bf16) and, outside autocast, returns its caller's dtype, so
validation grids and evaluation during training run unchanged on the same modules.
"""
from __future__ import annotations

import torch

MIXED_PRECISION = ("auto", "no", "bf16")
_FROZEN = "_stablekit_frozen_dtype"  # set on a layer once cast_frozen has hooked it


def resolve(requested: str, device: str, unet_config: dict | None) -> tuple[str, str]:
    """("no" | "bf16", why) for a run's `mixed_precision` setting."""
    if requested != "auto":
        return requested, "requested"
    if unet_config is None:
        return "no", "auto: no UNet (fp32)"
    from stablekit.devices import resolve_device
    from stablekit.generate.acceleration import choose

    acc = choose(None, resolve_device(device), unet_config)
    if acc.dtype == torch.bfloat16:
        return "bf16", f"{acc.reason}; frozen UNet layers in bf16"
    return "no", acc.reason


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast to `dtype` the weights of every layer of `module` none of whose own parameters train;
    returns how many parameters (elements) were cast. Each cast layer gets hooks that cast its float
    inputs to `dtype` and, outside autocast, its output back to the input's dtype."""
    count = 0
    for layer in module.modules():
        own = list(layer.parameters(recurse=False))
        if not own or any(p.requires_grad for p in own) or getattr(layer, _FROZEN, None) == dtype:
            continue
        for p in own:
            if p.dtype != dtype:  # a layer read into `dtype` (load_dtypes) only gets the hooks
                p.data = p.data.to(dtype)
                count += p.numel()
        for name, buf in layer.named_buffers(recurse=False):
            if buf.is_floating_point():
                setattr(layer, name, buf.to(dtype))
        layer.register_forward_pre_hook(_inputs_to(dtype), with_kwargs=True)
        layer.register_forward_hook(_output_back, with_kwargs=True)
        setattr(layer, _FROZEN, dtype)
    return count


def load_dtypes(method: str, s, requested: str, device: str) -> dict[str, torch.dtype]:
    """{component: dtype} to read into other than fp32 when a run of `method` (settings `s`) loads
    s.model: the frozen UNet, VAE and (where none of it trains) text encoders in bf16 when the run
    will train in bf16 and the method never trains or exports them; {} otherwise."""
    lora = method == "lora" or (method == "dreambooth" and getattr(s, "lora", False))
    if not (lora or method == "textual-inversion"):
        return {}  # the UNet trains (fine-tune, DreamBooth), is copied into a trained net (ControlNet), ...
    from stablekit import default_model_path
    from stablekit.generate.acceleration import unet_config_of

    if resolve(requested, device, unet_config_of(s.model or default_model_path(), None, False))[0] != "bf16":
        return {}
    out = {"unet": torch.bfloat16, "vae": torch.bfloat16}
    if lora and not getattr(s, "train_text_encoder", False) and not getattr(s, "identifier_lr", 0):
        out.update(text_encoder=torch.bfloat16, text_encoder_2=torch.bfloat16)
    return out


def freeze_loaded(components) -> None:
    """Right after a load with `load_dtypes`: hook the UNet read into bf16 (cast_frozen) before
    anything runs it (DreamBooth's class images are generated before training starts)."""
    unet = components.unet
    if next(unet.parameters()).dtype == torch.bfloat16:
        unet.requires_grad_(False)
        cast_frozen(unet)


def _inputs_to(dtype: torch.dtype):
    def hook(layer, args, kwargs):
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        layer._stablekit_caller_dtype = floats[0].dtype if floats else None
        cast = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return cast, kwargs
    return hook


def _output_back(layer, args, kwargs, output):
    caller = getattr(layer, "_stablekit_caller_dtype", None)
    if caller is None or torch.is_autocast_enabled(output.device.type if isinstance(output, torch.Tensor) else "cpu"):
        return None  # under autocast the next operator casts what it needs, as with any autocast output
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.to(caller)
    return None
