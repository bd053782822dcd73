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
full fine-tune), so trained weights and optimizer state stay fp32. The VAE and text encoders keep
fp32: their outputs are cached on disk and reused across runs, so they must not depend on a run's
precision. A cast layer takes inputs of any float dtype (it casts them to bf16) and, outside
autocast, returns its caller's dtype, so validation grids and evaluation during training run
unchanged on the same modules.
"""
from __future__ import annotations

import torch

MIXED_PRECISION = ("auto", "no", "bf16")


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
        if not own or any(p.requires_grad for p in own) or own[0].dtype == dtype:
            continue
        for p in own:
            p.data = p.data.to(dtype)
            count += p.numel()
        for name, buf in layer.named_buffers(recurse=False):
            if buf.is_floating_point():
                setattr(layer, name, buf.to(dtype))
        layer.register_forward_pre_hook(_inputs_to(dtype), with_kwargs=True)
        layer.register_forward_hook(_output_back, with_kwargs=True)
    return count


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
