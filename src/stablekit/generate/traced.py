"""UNet calls through a TorchScript trace: the same kernels without diffusers' Python per module.

A small UNet (the embedded shapes model: 4 M parameters, 16x16 latents) is bound by Python, not
arithmetic: most of a call is nn.Module dispatch, diffusers' per-attention `inspect.signature`,
shape checks and dtype lookups around a few hundred small kernels. `torch.jit.trace` records the
kernels of one call and replays them from C++, so the result is the same computation (bit-exact:
the same ATen ops in the same order; tests/test_speed_traced.py), with the Python gone.

How it is used: `install(unet)` replaces the UNet's `forward` (on the instance, so hooks on the
module and `unet(...)` keep working). A call with only (sample, timestep [batch], text states)
runs the trace recorded for its shapes and dtypes, tracing on the first call of each; any other
call (ControlNet residuals, SDXL's added conditions, cross_attention_kwargs, a scalar timestep,
grad mode on) runs diffusers' forward unchanged. The trace shares the module's parameters, so
weights patched in place (LoRA, adapters/apply.py) are seen; it is not frozen for that reason.
A trace that fails is remembered for its key and that shape runs eagerly. A trace also stops being
used when the module changes around it (an attention processor replaced, a hook or a `forward`
added on any submodule: guidance or DeepCache-style code): then calls run eagerly again. FreeU's
values (diffusers' `enable_freeu` sets plain numbers on the up blocks) are part of a trace's key, so
FreeU on and off each get their own trace.

Tracing costs about 20 eager calls of the embedded UNet (measured, docs/reports/speed.md), so each
trace is saved under the stablekit cache folder (`traces/`), keyed by the UNet's config, attention
processors, input shapes and the torch / diffusers versions, and loaded by later runs (about 2 calls'
time) with its parameters re-bound to the live module's. Calls run with TorchScript's optimizing
executor off: it only added two slow profiling calls here, and the trace alone is the speed-up.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch

_EAGER_ONLY = ("class_labels", "timestep_cond", "attention_mask", "cross_attention_kwargs", "added_cond_kwargs",
               "down_block_additional_residuals", "mid_block_additional_residual",
               "down_intrablock_additional_residuals", "encoder_attention_mask")
# diffusers' `enable_freeu` sets these plain attributes on the up blocks, and their forward reads them
# as Python numbers, which a trace bakes in as constants: they are part of a trace's key.
_FREEU = ("s1", "s2", "b1", "b2")
SMALL_UNET = 50_000_000  # parameters: below this a UNet call is overhead-bound on CPU (docs/reports/speed.md)


class _Call(torch.nn.Module):
    """The traced function: diffusers' own forward with positional tensors in, one tensor out."""

    def __init__(self, unet, forward):
        super().__init__()
        self.unet = unet
        self._forward = forward

    def forward(self, sample, timestep, encoder_hidden_states):
        return self._forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class TracedForward:
    """The replacement `forward` of one UNet: traces per input signature, falls back to `eager`."""

    def __init__(self, unet):
        self.unet = unet
        self.eager = type(unet).forward.__get__(unet)  # diffusers' forward, bound, whatever the instance has
        self.traces: dict = {}  # key -> ScriptModule, or None where tracing failed
        self.trace_seconds = 0.0  # spent tracing (or loading saved traces)
        self.reference: list | None = None  # the module as it was at the first call (_snapshot)
        self.cache_dir: Path | None = None  # where traces are saved and found (None: not saved)

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        key = self._key(sample, timestep, encoder_hidden_states, args, kwargs)
        if key is not None:
            key = key + (self._freeu(),)
        fn = None
        if key is not None and self._unchanged():
            fn = self.traces.get(key, False)
            if fn is False:
                fn = self.traces[key] = self._get(key, sample, timestep, encoder_hidden_states)
        if fn is None:
            return self.eager(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        with torch.jit.optimized_execution(False):
            out = fn(sample, timestep, encoder_hidden_states)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def extra_trace(self, key, module: torch.nn.Module, inputs: tuple):
        """A trace of another function of this UNet (`module` holds it as `.unet`; DeepCache's full and
        shallow calls), cached like the UNet's own; None where tracing failed."""
        found = self.traces.get(key, False)
        if found is False:
            t0 = time.perf_counter()
            path = self._cache_path(key)
            found = _load(path, self.unet) if path is not None and path.exists() else None
            if found is None:
                found = _trace_module(module, inputs)
                if found is not None and path is not None:
                    _save(found, path)
            self.traces[key] = found
            self.trace_seconds += time.perf_counter() - t0
        return found

    def close(self) -> None:
        """Called when uninstalled (OpenVINOForward gives the torch weights back their own memory)."""

    def _freeu(self) -> tuple:
        """diffusers-math FreeU's values per up block (all None when off), read from the instance dicts."""
        ups = self.unet.__dict__["_modules"].get("up_blocks")
        if ups is None:
            return ()
        return tuple(tuple(b.__dict__.get(k) for k in _FREEU) for b in ups.__dict__["_modules"].values())

    def _snapshot(self) -> list:
        """What a trace depends on besides shapes: per submodule, its attributes dict, processor and children."""
        return [(m.__dict__, m.__dict__.get("processor"), tuple(m._modules.items())) for m in self.unet.modules()]

    def _unchanged(self) -> bool:
        """False once the module changed since the first call: a processor replaced, a hook or a `forward`
        added, a child module swapped; the traces then no longer describe its computation. Reads
        instance dicts only (Module.__getattr__ on a missing name costs 100x more: 41 us vs 3.9 ms a
        check, measured on the embedded UNet; the first version cost 7% of an image)."""
        if self.reference is None:
            self.reference = self._snapshot()
        top = self.unet.__dict__  # its own hooks run around this forward; "forward" there is this object
        for d, processor, children in self.reference:
            if d is not top and (d["_forward_hooks"] or d["_forward_pre_hooks"] or "forward" in d
                                 or d.get("processor") is not processor):
                return False
            modules = d["_modules"]
            for name, child in children:
                if modules.get(name) is not child:
                    return False
        return True

    @staticmethod
    def _key(sample, timestep, states, args, kwargs):
        """The trace a call can use, or None for calls the trace does not cover."""
        if args or any(kwargs.get(name) is not None for name in _EAGER_ONLY) or set(kwargs) - set(_EAGER_ONLY):
            return None
        if not (isinstance(timestep, torch.Tensor) and isinstance(states, torch.Tensor)):
            return None
        if timestep.ndim != 1 or timestep.shape[0] != sample.shape[0]:
            return None  # diffusers' own pipelines pass a 0-d timestep; the trace was recorded on [batch]
        if torch.is_grad_enabled():
            return None  # training, guidance by gradients: autograd through diffusers' forward (sampling is no_grad)
        layout = sample.is_contiguous(memory_format=torch.channels_last) and not sample.is_contiguous()
        return (tuple(sample.shape), sample.dtype, sample.device, layout, timestep.dtype, tuple(states.shape),
                states.dtype)

    def _get(self, key, sample, timestep, states):
        """The trace for `key`: loaded from the cache folder, else recorded (and saved there)."""
        t0 = time.perf_counter()
        path = self._cache_path(key)
        traced = _load(path, self.unet) if path is not None and path.exists() else None
        if traced is None:
            traced = self._trace(sample, timestep, states)
            if traced is not None and path is not None:
                _save(traced, path)
        self.trace_seconds += time.perf_counter() - t0
        return traced

    def _cache_path(self, key) -> Path | None:
        if self.cache_dir is None:
            return None
        import diffusers

        desc = json.dumps([{k: v for k, v in self.unet.config.items() if not k.startswith("_")}, self._fingerprint_names(),
                           [str(k) for k in key], torch.__version__, diffusers.__version__], sort_keys=True, default=str)
        return self.cache_dir / f"unet-{hashlib.sha256(desc.encode()).hexdigest()[:24]}.pt"

    def _fingerprint_names(self) -> list[str]:
        return sorted({type(m.processor).__name__ for m in self.unet.modules() if hasattr(m, "processor")})

    def _trace(self, sample, timestep, states):
        return _trace_module(_Call(self.unet, self.eager), (sample, timestep, states))


def _trace_module(module: torch.nn.Module, inputs: tuple):
    """torch.jit.trace of `module` on copies of `inputs`; None (and a note) when it fails."""
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python branches on shapes: keyed on shapes
            return torch.jit.trace(module.eval(), tuple(t.clone() for t in inputs), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - any failure means: run this shape eagerly
        from stablekit.generate.notes import note

        note(f"UNet trace failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
             "running it eagerly")
        return None


def _save(traced, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still shipped in 2.13
            torch.jit.save(traced, str(tmp))
        tmp.replace(path)
    except (OSError, RuntimeError):
        pass  # a read-only cache only costs tracing again next time


def _load(path: Path, unet):
    """A saved trace with the live module's parameters and buffers bound in (so LoRA patches are seen)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.load(str(path), map_location="cpu")
        live = dict(unet.named_parameters())
        live.update(unet.named_buffers())
        for name, tensor in live.items():
            *parents, leaf = f"unet.{name}".split(".")
            owner = traced
            for part in parents:
                owner = getattr(owner, part)
            setattr(owner, leaf, tensor)
        return traced
    except Exception:  # noqa: BLE001 - a stale or damaged file: trace again
        return None


def install(unet, cache_dir: Path | None = None) -> TracedForward:
    """Route `unet`'s calls through per-shape traces (idempotent); returns the TracedForward.
    cache_dir: where traces are saved and reused between runs (None: this process only)."""
    current = unet.__dict__.get("forward")
    if isinstance(current, TracedForward):
        return current
    traced = TracedForward(unet)
    traced.cache_dir = Path(cache_dir) if cache_dir is not None else None
    unet.forward = traced
    return traced


def uninstall(unet) -> None:
    """Back to diffusers' forward (e.g. before training the module)."""
    current = unet.__dict__.get("forward")
    if isinstance(current, TracedForward):
        current.close()
        del unet.forward


def installed(unet) -> TracedForward | None:
    found = unet.__dict__.get("forward")
    return found if isinstance(found, TracedForward) else None


def worth_tracing(unet) -> bool:
    """Whether the default path traces this UNet: small ones, where Python dominates a call."""
    return sum(p.numel() for p in unet.parameters()) < SMALL_UNET
