"""UNet calls through OpenVINO: the traced UNet (generate/traced.py) converted and compiled for the CPU.

`stablekit.load(..., backend="openvino")` / `stablekit generate --backend openvino`. The UNet's
TorchScript trace for a call's input signature (the same trace the default path replays) is handed
to `openvino.convert_model` with those shapes fixed, and compiled for the CPU with one inference
thread per torch thread and a precision hint: "f32", or "bf16" where OpenVINO reports bf16 kernels
on this CPU (`OPTIMIZATION_CAPABILITIES`; dtype "auto" picks bf16 there, f32 elsewhere). The torch
modules stay fp32, so every call OpenVINO cannot take runs the exact fp32 reference computation.

Cache: `<stablekit cache>/openvino/<key>/` holds the converted model (IR, weights uncompressed) and
OpenVINO's compiled blob (`CACHE_DIR`), keyed by the input signature, the precision, the sha256 of
the UNet's weights, the UNet config, its attention processors and the openvino / torch / diffusers /
stablekit versions: a second process loads it without tracing or converting. The newest 4 entries
are kept (STABLEKIT_OPENVINO_CACHE_ENTRIES), least recently used removed first.

Weights: the sha256 is taken at the first call; every later call compares each parameter's storage
pointer and in-place version counter (0.4 ms of CPU on the embedded UNet, about 1% of its call), which catches LoRA fused in place
(adapters/apply.py copies into the parameters), `load_state_dict` and swapped tensors. On a change
the weights are hashed again and the model rebuilt for them (from the cache when it has them).
Not caught: writes through `param.data` (torch gives `.data` its own version counter).

Memory (generate/openvino_weights.py): once the cache entry holds the converted model, the torch
UNet's weights are mapped copy-on-write from its unet.bin instead of kept in RAM (copied back before
the first torch fallback, so that runs on the same bytes as before), and OpenVINO's own map of the
entry is paged out after compiling (it computes from repacked copies). SD 1.5 at 256 px: peak RSS
11.8 -> 8.1 GiB, 4.9-5.2 GiB once running (docs/reports/speed.md, Session 14).

Calls that run on the torch path (the traced or eager forward, as without this backend), each with
a one-time note: ControlNet / T2I-adapter residuals, SDXL's added conditions (and any other extra
argument), FreeU (its numbers are baked into a graph), hooks or replaced attention processors on
the UNet (FreeU_V2, PAG, ToMe), DeepCache (its own traced full and shallow calls), grad mode, a
non-CPU tensor, and a conversion that failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.generate.traced import TracedForward

PIN = "openvino==2026.4.1"
INSTALL = f"pip install {PIN} (or pip install 'stablekit[openvino]')"
BACKENDS = ("torch", "openvino")
PRECISIONS = ("f32", "bf16")
_NOTED: set[str] = set()  # fallback reasons already noted in this process


def import_openvino():
    """The openvino module, imported only when the backend is asked for; a one-line error without it."""
    try:
        import openvino
    except ImportError as exc:
        raise StablekitError(f"backend 'openvino' needs the openvino package ({exc}); {INSTALL}") from None
    return openvino


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise StablekitError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AVX-512 BF16 / AMX); without them a bf16
    hint is ignored and the model runs f32."""
    ov = import_openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose_precision(dtype) -> str:
    """OpenVINO's inference precision for a stablekit dtype request: auto -> bf16 where the CPU has
    bf16 kernels, else f32; fp32 -> f32; bf16 -> bf16 (runs f32 on a CPU without bf16, with a note)."""
    from stablekit.generate.acceleration import requested_dtype

    want = requested_dtype(dtype)
    if want == "auto":
        return "bf16" if bf16_capable() else "f32"
    if want == torch.float32:
        return "f32"
    if want == torch.bfloat16:
        if not bf16_capable():
            _note_once("bf16-cpu", "OpenVINO has no bf16 kernels on this CPU; its bf16 hint runs f32")
        return "bf16"
    raise StablekitError(f"backend 'openvino' runs f32 or bf16 on the CPU (got dtype {dtype!r}); use dtype auto, "
                         "fp32 or bf16, or backend torch")


def _note_once(reason: str, message: str) -> None:
    if reason not in _NOTED:
        _NOTED.add(reason)
        from stablekit.generate.notes import note

        note(message)


def cache_root() -> Path:
    from stablekit.generate.acceleration import cache_file

    return cache_file().parent / "openvino"


class OpenVINOForward(TracedForward):
    """The replacement `forward` of one UNet: OpenVINO per input signature, else TracedForward's path."""

    def __init__(self, unet, precision: str = "f32", cache_dir: Path | None = None, trace_fallback: bool = True,
                 release_weights: bool = True):
        super().__init__(unet)
        if precision not in PRECISIONS:
            raise StablekitError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        self.precision = precision
        self.ov_dir = Path(cache_dir) if cache_dir is not None else None  # None: convert, never save
        self.trace_fallback = trace_fallback  # False: torch fallbacks run diffusers' forward (no trace)
        self.compiled: dict = {}  # input key -> infer request (None: failed) for the weights `digest`
        self.digest: str | None = None  # sha256 of the weights the compiled models hold
        self.versions: tuple | None = None  # (data_ptr, _version) per tensor when `digest` was taken
        self.convert_seconds = 0.0  # spent tracing, converting, compiling or loading models
        self.stats = {"openvino": 0, "torch": 0, "converted": 0, "loaded": 0, "released": 0}
        self.release_weights = release_weights  # map the torch weights from the cache entry (openvino_weights.py)
        self.mapped: list = []  # the torch tensors now mapped from an entry's unet.bin
        self.paged_out = 0  # bytes of OpenVINO's own weight maps handed back to the kernel after compiling

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        key = self._key(sample, timestep, encoder_hidden_states, args, kwargs)
        reason = self._fallback(key, sample, kwargs)
        request = None
        if reason is None:
            self._check_weights()
            request = self.compiled.get(key, False)
            if request is False:
                request = self.compiled[key] = self._request(key, sample, timestep, encoder_hidden_states)
        if request is None:
            if reason is not None:
                _note_once(reason, f"OpenVINO UNet: {reason} runs on the torch path")
            self.stats["torch"] += 1
            self._restore_weights()
            if not self.trace_fallback:
                return self.eager(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
            return super().__call__(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        self.stats["openvino"] += 1
        inputs = [t.detach().cpu().contiguous().numpy() for t in (sample, timestep, encoder_hidden_states)]
        request.infer(inputs, share_inputs=True)
        out = torch.from_numpy(request.get_output_tensor(0).data.copy())  # the request reuses its buffer
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def close(self) -> None:
        """Uninstalled: the torch module is on its own again, with its weights in ordinary memory."""
        self._restore_weights()

    def extra_trace(self, key, module, inputs):
        """DeepCache's traced full and shallow calls (generate/deepcache.py): torch, not OpenVINO."""
        _note_once("DeepCache", "OpenVINO UNet: DeepCache runs on the torch path")
        self._restore_weights()
        return super().extra_trace(key, module, inputs) if self.trace_fallback else None

    # ------------------------------------------------------------------------- what runs where
    def _fallback(self, key, sample, kwargs) -> str | None:
        """Why this call runs on torch, or None when OpenVINO takes it."""
        if key is None:
            if kwargs.get("down_block_additional_residuals") is not None or kwargs.get(
                    "mid_block_additional_residual") is not None:
                return "ControlNet"
            if kwargs.get("down_intrablock_additional_residuals") is not None:
                return "T2I-Adapter"
            if kwargs.get("added_cond_kwargs") is not None:
                return "SDXL (added conditions)"
            if torch.is_grad_enabled():
                return "grad mode (training)"
            return "a call with extra arguments"
        if sample.device.type != "cpu":
            return "a tensor off the CPU"
        if sample.dtype != torch.float32:
            return f"a {sample.dtype} UNet (load it with dtype fp32)"
        if any(v is not None for block in self._freeu() for v in block):
            return "FreeU"
        if not self._unchanged():
            if type(self.unet.__dict__.get("forward")).__name__ == "DeepCache":  # its full calls hook an up block
                return "DeepCache"
            return "a UNet with hooks or replaced attention processors (FreeU_V2, PAG, ToMe)"
        return None

    # ------------------------------------------------------------------------- weights
    def _tensors(self) -> list:
        return [t for d, _, _ in self.reference for t in (*d["_parameters"].values(), *d["_buffers"].values())
                if t is not None]

    def _versions(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in self._tensors())

    def _release_weights(self, entry: Path) -> None:
        """Once `entry` holds the converted model for the current weights: the torch weights are read
        from its unet.bin when needed instead of kept in RAM (openvino_weights.py)."""
        if not self.release_weights or self.mapped or self.versions != self._versions():
            return  # off, already mapped, or changed in place since they were hashed
        from stablekit.generate.openvino_weights import release

        self.mapped = release(self.unet, entry)
        self.versions = self._versions()  # same bytes, new storage
        self.stats["released"] = len(self.mapped)

    def _restore_weights(self) -> None:
        """Before a torch call: mapped weights back into ordinary memory (once; exact bytes)."""
        if not self.mapped:
            return
        from stablekit.generate.openvino_weights import restore

        unchanged = self.versions == self._versions()
        restore(self.mapped)
        if unchanged:
            self.versions = self._versions()

    def _check_weights(self) -> None:
        """Hash the weights at the first call, and again (dropping the compiled models) when a
        parameter's storage or in-place version changed since."""
        versions = self._versions()
        if versions == self.versions:
            return
        digest = weights_digest(self.unet)
        if self.digest is not None and digest != self.digest:
            self.compiled = {}
            _note_once("weights", "OpenVINO UNet: the weights changed (a LoRA fused in, new weights loaded); "
                                  "rebuilding the OpenVINO model for them")
        self.digest, self.versions = digest, versions

    # ------------------------------------------------------------------------- conversion and cache
    def _request(self, key, sample, timestep, states):
        """An infer request for `key` at the current weights: from the cache folder, else traced,
        converted and saved there; None (noted) when conversion fails."""
        ov = import_openvino()
        t0 = time.perf_counter()
        entry = self._entry(key)
        config = compile_config(self.precision)
        core = ov.Core()
        try:
            xml = entry / "unet.xml" if entry is not None else None
            if xml is not None and xml.exists():
                model = str(xml)
                self.stats["loaded"] += 1
                _touch(entry)
            else:
                model = self._convert(ov, key, sample, timestep, states)
                self.stats["converted"] += 1
                if entry is not None:
                    model = _save(ov, model, entry, self._describe(key)) or model
                    _evict(entry.parent, keep=entry)
            if entry is not None:
                config["CACHE_DIR"] = str(entry / "compiled")
                if model == str(entry / "unet.xml"):  # before compiling: the peak is torch's copy + OpenVINO's
                    self._release_weights(entry)
            request = core.compile_model(model, "CPU", config).create_infer_request()
            if entry is not None:
                from stablekit.generate.openvino_weights import page_out

                self.paged_out += page_out(entry)
        except Exception as exc:  # noqa: BLE001 - any failure: this signature runs on torch
            _note_once("failed", f"OpenVINO UNet: conversion failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); running on the torch path")
            request = None
        self.convert_seconds += time.perf_counter() - t0
        return request

    def _convert(self, ov, key, sample, timestep, states):
        trace = self._get(key, sample, timestep, states) if self.trace_fallback else self._trace(sample, timestep, states)
        if trace is None:
            raise RuntimeError("the UNet could not be traced")
        inputs = (sample, timestep, states)
        with torch.no_grad():
            return ov.convert_model(trace, example_input=inputs, input=[(tuple(t.shape), _ov_type(ov, t)) for t in inputs])

    def _describe(self, key) -> dict:
        import diffusers

        import stablekit

        ov = import_openvino()
        return {"signature": [str(k) for k in key], "precision": self.precision, "weights_sha256": self.digest,
                "config": {k: v for k, v in self.unet.config.items() if not k.startswith("_")},
                "processors": self._fingerprint_names(), "openvino": ov.__version__, "torch": torch.__version__,
                "diffusers": diffusers.__version__, "stablekit": stablekit.__version__}

    def _entry(self, key) -> Path | None:
        if self.ov_dir is None:
            return None
        desc = json.dumps(self._describe(key), sort_keys=True, default=str)
        return self.ov_dir / f"unet-{hashlib.sha256(desc.encode()).hexdigest()[:24]}"


def compile_config(precision: str) -> dict:
    """The CPU plugin's properties: one stream of torch's thread count, the precision asked for, and
    dynamic quantization off (it applies to compressed weights only, which this model has none of:
    set so nothing lossy can come in by a default). Pinning, hyper-threading, streams and snippets
    settings measured no faster on the embedded UNet (docs/reports/speed.md, Session 14)."""
    return {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


def _ov_type(ov, t: torch.Tensor):
    return {torch.float32: ov.Type.f32, torch.int64: ov.Type.i64, torch.int32: ov.Type.i32,
            torch.float64: ov.Type.f64}[t.dtype]


def _save(ov, model, entry: Path, describe: dict) -> str | None:
    """Write the converted model into `entry` (atomically: a folder renamed into place); its xml path,
    or None where the folder cannot be written (a read-only cache costs converting again next time)."""
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(tmp / "unet.xml"), compress_to_fp16=False)  # f32 weights: the default halves them
        (tmp / "key.json").write_text(json.dumps(describe, indent=1, sort_keys=True, default=str))
        tmp.replace(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first, or no space
        return str(entry / "unet.xml") if (entry / "unet.xml").exists() else None
    return str(entry / "unet.xml")


def _touch(entry: Path) -> None:
    try:
        os.utime(entry)
    except OSError:
        pass


def _evict(root: Path, keep: Path) -> None:
    """Keep the newest $STABLEKIT_OPENVINO_CACHE_ENTRIES entries (default 4; least recently used go
    first): each LoRA mix is an entry of its own, and an SD 1.5-size one holds 3.4 GB of f32 weights."""
    try:
        limit = max(1, int(os.environ.get("STABLEKIT_OPENVINO_CACHE_ENTRIES", "4")))
    except ValueError:
        limit = 4
    try:
        entries = sorted((e for e in root.glob("unet-*") if e.is_dir() and not e.name.endswith(".tmp")),
                         key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in entries[limit:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def weights_digest(unet) -> str:
    """sha256 over the UNet's parameter and buffer names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in (*unet.named_parameters(), *unet.named_buffers()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def install(unet, precision: str = "f32", cache_dir: Path | None = None, trace_fallback: bool = True,
            release_weights: bool = True) -> OpenVINOForward:
    """Route `unet`'s calls through OpenVINO (replacing a TracedForward); returns the OpenVINOForward.
    cache_dir: where converted models are kept (None: this process only)."""
    import_openvino()
    current = unet.__dict__.get("forward")
    if isinstance(current, OpenVINOForward) and current.precision == precision:
        return current
    if isinstance(current, TracedForward):
        current.close()
        del unet.forward
    fwd = OpenVINOForward(unet, precision, cache_dir, trace_fallback, release_weights)
    fwd.cache_dir = Path(cache_dir).parent / "traces" if cache_dir is not None else None  # torch traces, as the default path
    # The module as loaded is the reference: processors replaced later (PAG) send calls to torch. (A
    # TracedForward takes it at its first call and traces whatever processors are set then.)
    fwd.reference = fwd._snapshot()
    unet.forward = fwd
    return fwd


def installed(unet) -> OpenVINOForward | None:
    found = unet.__dict__.get("forward")
    return found if isinstance(found, OpenVINOForward) else None


__all__ = ["OpenVINOForward", "install", "installed", "choose_precision", "check_backend", "import_openvino",
           "weights_digest", "cache_root", "BACKENDS", "PRECISIONS"]
