"""Exact-path speedups chosen per machine: weights dtype, memory layout, attention kernel, compile.

`stablekit.load()` asks `choose(...)` for an `Acceleration` before reading any weights (so they are
read straight into the chosen dtype) and `apply(...)` once the modules exist. "Exact path" means
the same model computed the same way up to rounding: nothing here skips or approximates work.

- dtype "auto": bfloat16 on a CPU whose oneDNN has bf16 kernels, but only where a probe measured it
  faster than float32 on this model's shapes. The probe times the UNet's first down block (built
  from the config with random weights, batch 1, at most 16x16) in fp32 and bf16, contiguous and
  channels_last, once per machine + torch version + thread count + block shape, and caches the
  verdict in $STABLEKIT_CACHE_DIR or ~/.cache/stablekit/precision.json. A tiny UNet is bound by
  per-operator overhead and bf16 adds casts, so it stays fp32; a full-size UNet is bound by
  matmul/conv throughput, where bf16 runs at about 2.5x the fp32 peak on AVX-512 BF16.
  Override: dtype="fp32"/"bf16"/"fp16" or STABLEKIT_DTYPE: an explicit dtype is the reference
  computation in that dtype (contiguous layout, as diffusers), so fp32 stays bit-exact with diffusers.
  Non-CPU devices: auto is fp32 for now (no probe there; untested here).
- channels_last (auto only) for the UNet when the probe measured it faster, and always for the VAE (oneDNN convolutions prefer
  NHWC; contiguous NCHW makes them reorder on every call).
- attention: torch's scaled_dot_product_attention (diffusers AttnProcessor2_0) on every attention
  module, set explicitly so a model that was saved with another processor still gets the fused kernel.
- trace (default for small UNets on the CPU): the UNet's calls replay a TorchScript trace per input
  shape (generate/traced.py): bit-exact, without diffusers' per-module Python, which is most of a
  call of a small, overhead-bound UNet; traces are cached between runs. STABLEKIT_TRACE=0 turns it off.
- compile: torch.compile of the UNet (and VAE decoder), opt-in (dtype= and compile= of
  stablekit.load, --compile on the CLI): on this CPU it pays only after a long first compile.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stablekit.errors import StablekitError

DTYPE_REQUESTS = ("auto", "fp32", "fp16", "bf16")
BF16_MARGIN = 1.10  # bf16 must be this much faster than fp32 to be chosen: it costs some fidelity
PROBE_SIZE = 16  # latent side of the probe: small enough to take about a second on a full-size model
PROBE_VERSION = 2  # bump when the probe changes, so old verdicts are measured again


@dataclass
class Acceleration:
    """What `apply` does to a loaded model, and why (recorded in Pipeline.acceleration)."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    attention: str = "sdpa"
    compile: bool = False
    reason: str = "fp32 requested"
    vae_channels_last: bool = False  # the VAE's own layout (auto: always; see apply)
    compile_seconds: float = 0.0
    trace: bool | None = None  # TorchScript-traced UNet calls; None: decided in apply (small UNets on the CPU)
    backend: str = "torch"  # "openvino": UNet calls compiled by OpenVINO (generate/openvino_unet.py)
    openvino_precision: str | None = None  # its inference precision hint, f32 or bf16

    def describe(self) -> str:
        from stablekit.formats.weights import DTYPE_NAMES

        layout = f"UNet {'channels_last' if self.channels_last else 'contiguous'}, VAE " + (
            "channels_last" if self.vae_channels_last else "contiguous")
        compiled = ", torch.compile" if self.compile else ", traced UNet" if self.trace else ""
        if self.backend == "openvino":
            compiled = f", OpenVINO UNet {self.openvino_precision}" + (" (torch fallback traced)" if self.trace else "")
        return f"{DTYPE_NAMES.get(self.dtype, self.dtype)}, {layout}, {self.attention} attention{compiled} ({self.reason})"


def cache_file() -> Path:
    """Where probe verdicts are kept: $STABLEKIT_CACHE_DIR, else $XDG_CACHE_HOME/stablekit, else ~/.cache/stablekit."""
    root = os.environ.get("STABLEKIT_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stablekit"
    return Path(root) / "precision.json"


def requested_dtype(dtype) -> str | torch.dtype:
    """"auto" or a torch dtype, from the argument, else STABLEKIT_DTYPE, else "auto"."""
    from stablekit.formats.weights import parse_dtype

    if dtype is None:
        dtype = os.environ.get("STABLEKIT_DTYPE") or "auto"
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return "auto"
    return parse_dtype(dtype)


def choose(dtype, device: torch.device, unet_config: dict | None, compile: bool = False) -> Acceleration:
    """The Acceleration for a model about to be loaded. dtype: "auto", None (STABLEKIT_DTYPE or
    auto), a name or a torch dtype; unet_config: the UNet's diffusers config (None: no probe)."""
    want = requested_dtype(dtype)
    if want != "auto":  # an explicit dtype is the reference computation in that dtype (diffusers' layout)
        return Acceleration(want, False, "sdpa", compile, "requested")
    if device.type != "cpu":
        return Acceleration(torch.float32, False, "sdpa", compile, "auto: fp32 off the CPU (no probe there yet)")
    if unet_config is None:
        return Acceleration(torch.float32, False, "sdpa", compile, "auto: fp32 (UNet config not readable before loading)")
    verdict = probe_verdict(unet_config)
    best = verdict["best"]
    dtype_ = torch.bfloat16 if best["dtype"] == "bf16" else torch.float32
    return Acceleration(dtype_, best["channels_last"], "sdpa", compile, f"auto: {verdict['why']}",
                        vae_channels_last=True)


# ----------------------------------------------------------------------------- the probe
def bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 / AMX); without them bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_key(unet_config: dict) -> str:
    c = unet_config
    block = c["down_block_types"][0]
    h = min(int(c.get("sample_size") or 64), PROBE_SIZE)
    cross = c.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    return (f"v{PROBE_VERSION}|{_cpu_name()}|torch {torch.__version__}|threads {torch.get_num_threads()}|"
            f"{block} {c['block_out_channels'][0]}ch {h}px cross {cross}")


def probe_verdict(unet_config: dict) -> dict:
    """The cached verdict for this machine and block shape; measured (about 1-3 s) when missing."""
    key = probe_key(unet_config)
    path = cache_file()
    cache = _read_cache(path)
    if key in cache:
        return cache[key]
    verdict = measure(unet_config)
    cache[key] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs measuring again next time
    return verdict


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def measure(unet_config: dict, repeats: int = 5) -> dict:
    """Time the UNet's first down block in fp32/bf16 x contiguous/channels_last; pick the fastest.

    The variants take turns, `repeats` rounds, best time each: on a shared machine the load moves
    between calls, and one pass per variant once measured bf16 at 1.96x fp32 on the embedded
    model's block where the whole image ran slower in bf16 (docs/reports/speed.md)."""
    import copy

    block, args, kwargs = _probe_block(unet_config)
    variants = [("fp32", False), ("fp32", True)]
    if bf16_supported():
        variants += [("bf16", False), ("bf16", True)]
    runs = {}
    with torch.inference_mode():
        for name, cl in variants:
            dtype = torch.bfloat16 if name == "bf16" else torch.float32
            fmt = torch.channels_last if cl else torch.contiguous_format
            m = copy.deepcopy(block).to(dtype=dtype, memory_format=fmt)
            a = [t.to(dtype=dtype, memory_format=fmt) if t.ndim == 4 else t.to(dtype) for t in args]
            k = {n: t.to(dtype) for n, t in kwargs.items()}
            m(*a, **k)  # warm-up: oneDNN primitive creation
            runs[f"{name}{'-cl' if cl else ''}"] = (m, a, k)
        times = dict.fromkeys(runs, float("inf"))
        for _ in range(repeats):
            for key, (m, a, k) in runs.items():
                t0 = time.perf_counter()
                m(*a, **k)
                times[key] = min(times[key], time.perf_counter() - t0)
    cl = {d: times.get(f"{d}-cl", 1e9) < times.get(d, 1e9) for d in ("fp32", "bf16") if d in times}
    fp32 = min(times["fp32"], times["fp32-cl"])
    best = {"dtype": "fp32", "channels_last": cl["fp32"]}
    why = "bf16 kernels not supported by this CPU" if not bf16_supported() else ""
    if "bf16" in times:
        bf16 = min(times["bf16"], times["bf16-cl"])
        if fp32 / bf16 >= BF16_MARGIN:
            best = {"dtype": "bf16", "channels_last": cl["bf16"]}
            why = f"bf16 measured {fp32 / bf16:.2f}x fp32 on this model's first block"
        else:
            why = f"bf16 measured only {fp32 / bf16:.2f}x fp32 on this model's first block"
    return {"best": best, "channels_last": cl, "seconds": times, "why": why}


def _probe_block(c: dict):
    """The UNet's first down block with random weights, and inputs of its size (batch 1, <= PROBE_SIZE)."""
    from diffusers import UNet2DConditionModel

    small = dict(c)
    # one block, nothing else: the probe is the first block at the first width
    small.update(down_block_types=[c["down_block_types"][0]], up_block_types=[c["up_block_types"][-1]],
                 block_out_channels=[c["block_out_channels"][0]], mid_block_type=None)
    for key in ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "cross_attention_dim",
                "layers_per_block", "only_cross_attention"):
        if isinstance(small.get(key), (list, tuple)):
            small[key] = [small[key][0]]
    small = {k: v for k, v in small.items() if not k.startswith("_")}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(small).eval()
    block = unet.down_blocks[0]
    h = min(int(c.get("sample_size") or 64), PROBE_SIZE)
    ch = c["block_out_channels"][0]
    temb = unet.time_embedding.linear_2.out_features
    cross = c.get("cross_attention_dim") or 768
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    x = torch.randn(1, ch, h, h, device="cpu")  # the probe is for the CPU only
    kwargs = {"encoder_hidden_states": torch.randn(1, 77, cross, device="cpu")} if getattr(block, "has_cross_attention", False) else {}
    return block, [x, torch.randn(1, temb, device="cpu")], kwargs


# ----------------------------------------------------------------------------- applying
def apply(components, acc: Acceleration) -> None:
    """Memory layout, attention kernel and (opt-in) compilation on loaded modules, in place."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if acc.trace is None and components.unet is not None:
        from stablekit.generate.traced import worth_tracing

        acc.trace = (not acc.compile and os.environ.get("STABLEKIT_TRACE", "1") != "0"
                     and components.device.type == "cpu" and worth_tracing(components.unet))
        if acc.trace and acc.reason.startswith("auto"):
            # A small UNet and its VAE stay contiguous: on the embedded model the whole traced image ran
            # 1.89x diffusers contiguous vs 1.46x channels_last (same run; the probe's single block favoured
            # channels_last, but at this size the layout reorders between ops cost more than they save).
            acc.channels_last = acc.vae_channels_last = False
            acc.reason += "; small UNet: traced, contiguous"
    # The VAE decodes at full image size, where oneDNN's NHWC convolutions win clearly: SD 1.5's
    # decoder at 256 px in bf16 took 9-11 s channels_last vs 23-32 s contiguous (same process, taking
    # turns, 1 thread; docs/reports/speed.md). The probe's 16x16 UNet block cannot show that.
    for module, cl in ((components.unet, acc.channels_last), (components.vae, acc.vae_channels_last)):
        if module is None:
            continue
        if cl:
            to_channels_last(module)
        _use_sdpa(module, AttnProcessor2_0)
    if acc.trace:
        from stablekit.generate.traced import install

        install(components.unet, cache_file().parent / "traces")  # last: it fingerprints the processors set above
    if acc.compile:
        t0 = time.perf_counter()
        components.unet.compile()  # in place: the module object (and its LoRA hooks) stays the same
        components.vae.decoder.compile()
        acc.compile_seconds = time.perf_counter() - t0  # graph capture happens on the first call


def to_channels_last(module) -> None:
    """module.to(memory_format=channels_last), giving back what the contiguous weights held: pages of
    a mapped weight cache entry (formats/weight_cache.py) and freed heap (SD 1.5's VAE: about 130 MiB
    each, which otherwise stayed resident)."""
    from stablekit.formats.weight_cache import release, trim_heap

    old = [p.data for p in module.parameters() if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)]
    module.to(memory_format=torch.channels_last)
    for data in old:
        release(data)  # .to() swapped in new data; this old data is about to go
    del old
    trim_heap()


def _use_sdpa(module, processor_class) -> None:
    """Every diffusers Attention in `module` on torch's fused SDPA kernel, unless it already is or
    uses a processor of its own kind (IP-adapter, custom) that must stay."""
    from diffusers.models.attention_processor import AttnProcessor

    for sub in module.modules():
        proc = getattr(sub, "processor", None)
        if proc is not None and hasattr(sub, "set_processor") and type(proc) is AttnProcessor:
            sub.set_processor(processor_class())


def unet_config_of(path, arch: str | None, allow_pickle: bool) -> dict | None:
    """The UNet config of a model file or folder, read without its weights (None if unknown)."""
    from stablekit.formats.diffusers_folder import resolve_folder, source_kind
    from stablekit.formats.single_file import resolve
    from stablekit.formats.weights import open_weights

    path = Path(path)
    try:
        if source_kind(path) == "diffusers":
            return resolve_folder(path, arch, None)[1]["unet"]
        if path.suffix.lower() != ".safetensors":
            return None  # a pickle would be read twice; the probe is not worth it
        return resolve(open_weights(path, allow_pickle), arch, None)[2]["unet"]
    except StablekitError:
        return None  # load_model reports the problem with its own message


def check_request(dtype) -> None:
    """One-line error for a dtype that is neither auto nor a known name."""
    if dtype is not None and not isinstance(dtype, (str, torch.dtype)):
        raise StablekitError(f"dtype must be 'auto', a torch dtype such as torch.float32 or a name fp32, fp16, bf16 "
                             f"(got {dtype!r})")
    requested_dtype(dtype)


__all__ = ["Acceleration", "choose", "apply", "measure", "cache_file", "unet_config_of", "DTYPE_REQUESTS", "asdict"]
