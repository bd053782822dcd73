"""The weight change of each adapter kind, as the tools that define them compute it.

All arithmetic runs in float32 on the layer's device and returns a tensor shaped like the weight.
  LoRA / LoCon (Hu et al. 2021; kohya sd-scripts):  dW = up @ down * alpha / r; with a Tucker core
      (LyCORIS LoCon `lora_mid`): dW = einsum(mid, up, down).
  LoHa (LyCORIS, "FedPara" Hyeon-Woo et al. 2022): dW = (w1a @ w1b) * (w2a @ w2b) * alpha / r.
  LoKr (LyCORIS, Kronecker product):               dW = kron(w1, w2) * alpha / r, where a factor
      is either full or a @ b; with both factors full the scale is 1 (LyCORIS ignores alpha then).
  DoRA (Liu et al. 2024, arXiv:2402.09353) in two conventions:
      LyCORIS/kohya `dora_scale` (what ComfyUI and A1111 apply): W_d = dora_scale * (W + dW) / ||W + dW||,
      the norm taken per input column when dora_scale is [1, in, ...] (the default) or per output row
      when it is [out, 1, ...] (LyCORIS wd_on_out); the strength s blends: W + s * (W_d - W).
      PEFT `lora_magnitude_vector` m [out]: V = W + s * dW, W' = m * V / ||V|| per output row
      (PEFT puts the adapter weight inside the scaling, so s also enters the norm).
"""
from __future__ import annotations

import torch

from stablekit.formats.lora_keys import LayerPatch


def _f(t: torch.Tensor, device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Tucker reconstruction used by LyCORIS: core [r, r, k, k], a [out, r], b [r, in] -> [out, in, k, k]."""
    return torch.einsum("i j k l, p i, j r -> p r k l", core, a.flatten(1), b.flatten(1))


def _factor(t: dict, a: str, b: str, full: str | None, core: str | None, device) -> torch.Tensor:
    if full and full in t:
        return _f(t[full], device)
    if core and core in t:
        return _tucker(_f(t[core], device), _f(t[a], device), _f(t[b], device))
    return _f(t[a], device).flatten(1) @ _f(t[b], device).flatten(1)


def layer_product(patch: LayerPatch, shape: torch.Size, device=None) -> torch.Tensor:
    """The patch's weight change before alpha/rank scaling and strength, shaped `shape`."""
    t = patch.tensors
    if patch.kind == "lora":
        if "mid" in t:
            return _tucker(_f(t["mid"], device), _f(t["up"], device), _f(t["down"], device)).reshape(shape)
        return (_f(t["up"], device).flatten(1) @ _f(t["down"], device).flatten(1)).reshape(shape)
    if patch.kind == "loha":
        w1 = _factor(t, "w1a", "w1b", None, "t1", device)
        w2 = _factor(t, "w2a", "w2b", None, "t2", device)
        return w1.reshape(shape) * w2.reshape(shape)
    if patch.kind == "lokr":
        w1 = _factor(t, "w1a", "w1b", "w1", None, device)
        w2 = _factor(t, "w2a", "w2b", "w2", "t2", device)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).reshape(shape)
    raise ValueError(f"unknown adapter kind {patch.kind!r}")


def layer_delta(patch: LayerPatch, shape: torch.Size, device=None) -> torch.Tensor:
    """dW at strength 1: the product times the file's scale (alpha / rank)."""
    return layer_product(patch, shape, device) * patch.scale()


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))


def _column_norm(w: torch.Tensor) -> torch.Tensor:
    cols = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return cols.reshape(1, w.shape[1], *[1] * (w.dim() - 2))


def patched_weight(patch: LayerPatch, weight: torch.Tensor, strength: float) -> torch.Tensor:
    """The float32 weight after applying `patch` at `strength` to `weight` (any dtype)."""
    w = weight.to(torch.float32)
    delta = layer_delta(patch, w.shape, w.device)
    if patch.dora is None:
        return w + strength * delta
    m = _f(patch.dora, w.device)
    if patch.dora_kind == "peft":
        v = w + strength * delta
        return v * (m.reshape(w.shape[0], *[1] * (w.dim() - 1)) / _row_norm(v))
    full = w + delta
    on_rows = m.shape[0] == w.shape[0] and w.shape[0] != 1 and (m.dim() < 2 or m.shape[1] == 1)
    if on_rows:
        dora = full * (m.reshape(w.shape[0], *[1] * (w.dim() - 1)) / _row_norm(full))
    else:
        dora = full * (m.reshape(1, w.shape[1], *[1] * (w.dim() - 2)) / _column_norm(full))
    return w + strength * (dora - w)
