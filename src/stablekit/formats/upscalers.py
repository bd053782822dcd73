"""ESRGAN-family upscaler files: which layout a file is in, its shape, and its weights in one layout.

`read_upscaler(path)` reads a `.pth`/`.pt` (torch.load with weights_only=True: tensors only, never
code) or `.safetensors` file and returns an `UpscalerSpec`: the architecture, its sizes inferred
from tensor shapes, and the state dict renamed to the module names of generate/upscale_models.py.

Layouts read (key names as the projects write them; spandrel 0.4.2's ESRGAN and Compact loaders
read the same files, and the tests check our output against theirs):
  RRDBNet, BasicSR / Real-ESRGAN (basicsr/archs/rrdbnet_arch.py): conv_first, body.N.rdbK.convJ,
    conv_body, conv_up1..n, conv_hr, conv_last; usually nested under `params_ema` (or `params`).
    Real-ESRGAN x2plus / x1 models pixel-unshuffle their input (conv_first takes 12 / 48
    channels: 3 * 2**2 / 3 * 4**2) and always upsample 4x inside.
  RRDBNet, original ESRGAN (xinntao/ESRGAN, old arch; also most community "4x-..." models):
    model.0 (conv_first), model.1.sub.N.RDBK.convJ.0, model.1.sub.<nb> (conv_body), then per 2x
    upsample [nn.Upsample, conv, LeakyReLU] (model.3, model.6, ...), conv_hr, LeakyReLU, conv_last.
  RRDBNet, BSRGAN / RealSR / ESRGAN new arch: conv_first, RRDB_trunk.N.RDBK.convJ, trunk_conv,
    upconv1..n, HRconv, conv_last.
  SRVGGNetCompact (Real-ESRGAN realesr-general-x4v3, realesr-animevideov3): body.0 conv,
    body.1 PReLU, ... body.<last> conv to out * scale**2 channels, then pixel shuffle.
ESRGAN+ (extra conv1x1 paths) and other architectures (SwinIR, HAT, DAT, ...) are refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from stablekit.errors import StablekitError

SUFFIXES = (".pth", ".pt", ".safetensors")
# where trainers nest the weights (BasicSR writes params_ema and params; others their own names),
# tried in this order as spandrel does
NESTING = ("params_ema", "params-ema", "params", "model_state_dict", "state_dict", "model", "net")
READS = ("ESRGAN (old and new arch), BSRGAN/RealSR, Real-ESRGAN RRDBNet x4/x2/x1 and SRVGGNetCompact "
         "(realesr-general, animevideo) models")


@dataclass
class UpscalerSpec:
    """An upscaler file understood: arch "RRDBNet" or "Compact", layout (the file's key layout),
    channels in/out, features, blocks (RRDBs or Compact convs), growth (RRDB growth channels),
    upsamples (2x steps inside RRDBNet), shuffle (pixel-unshuffle factor of the input, 1: none),
    scale (output size / input size), state (weights under generate/upscale_models.py's names)."""

    arch: str
    layout: str
    in_channels: int
    out_channels: int
    features: int
    blocks: int
    scale: int
    state: dict
    growth: int = 0
    upsamples: int = 0
    shuffle: int = 1

    def describe(self) -> str:
        if self.arch == "Compact":
            return f"SRVGGNetCompact {self.scale}x ({self.blocks} convs, {self.features} features)"
        return f"RRDBNet {self.scale}x ({self.blocks} blocks, {self.features} features, {self.layout} layout)"


def read_upscaler(path) -> UpscalerSpec:
    """The UpscalerSpec of an ESRGAN-family file; anything else is a one-line StablekitError."""
    path = Path(path)
    state = _tensors(path)
    if any(".conv1x1." in k for k in state):
        raise StablekitError(f"{path} is an ESRGAN+ model (RRDB blocks with conv1x1 paths), which stablekit does "
                             f"not run; use a plain ESRGAN or Real-ESRGAN model ({READS})")
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return _rrdb(path, _from_old_esrgan(state), "ESRGAN")
    if "conv_first.weight" in state and "RRDB_trunk.0.RDB1.conv1.weight" in state:
        return _rrdb(path, _from_bsrgan(state), "BSRGAN")
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdb(path, state, "Real-ESRGAN")
    if "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].dim() == 1:
        return _compact(path, state)
    example = next(iter(state), "nothing")
    raise StablekitError(f"{path} is not an upscaler stablekit reads (its keys start with {example!r}); it reads "
                         f"{READS}")


def _tensors(path: Path) -> dict:
    """The file's tensors by name, unnested and without a common `module.` prefix."""
    if not path.is_file():
        raise StablekitError(f"upscaler model {path} not found; give an existing .pth or .safetensors file")
    if path.suffix.lower() not in SUFFIXES:
        raise StablekitError(f"upscaler model {path} is not a {'/'.join(SUFFIXES)} file; give an ESRGAN-family model")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # weights_only: a pickle that holds code or arbitrary objects is refused, never run
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user mistake
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise StablekitError(f"cannot read upscaler model {path} as tensors only ({reason}); use a plain state-dict "
                             ".pth or a .safetensors file from a source you trust") from None
    for key in NESTING:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise StablekitError(f"{path} holds no state dict of tensors; give an ESRGAN-family model file")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "netG."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _from_old_esrgan(state: dict) -> dict:
    """Original ESRGAN (model.N) keys -> BasicSR names. The flattened Sequential is conv_first,
    the shortcut (model.1.sub: RRDBs then conv_body), [Upsample, conv_upK, act] per 2x step,
    conv_hr, act, conv_last; so conv_upK sits at model.{3K} and the last two convs after them."""
    out, rest = {}, {}
    rrdb = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
    for key, value in state.items():
        m = rrdb.match(key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        else:
            rest[key] = value
    blocks = _count(out, "body")
    for kind in ("weight", "bias"):
        _move(rest, f"model.1.sub.{blocks}.{kind}", out, f"conv_body.{kind}")
        _move(rest, f"model.0.{kind}", out, f"conv_first.{kind}")
    indices = sorted({int(k.split(".")[1]) for k in rest if re.match(r"model\.\d+\.(weight|bias)$", k)} - {1})
    if len(indices) < 2:
        raise StablekitError(f"the ESRGAN model has no output convolutions after its RRDB blocks (layers {indices}); "
                             "the file is incomplete")
    *ups, hr, last = indices
    for name, index in [*((f"conv_up{i + 1}", u) for i, u in enumerate(ups)), ("conv_hr", hr), ("conv_last", last)]:
        for kind in ("weight", "bias"):
            _move(rest, f"model.{index}.{kind}", out, f"{name}.{kind}")
    return {**out, **rest}  # keys left over stay as they are: loading names them as unexpected


def _from_bsrgan(state: dict) -> dict:
    """BSRGAN / RealSR / ESRGAN new-arch keys -> BasicSR names."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2.", key)
        key = re.sub(r"^trunk_conv\.", "conv_body.", key)
        key = re.sub(r"^upconv(\d+)\.", r"conv_up\1.", key)
        key = re.sub(r"^HRconv\.", "conv_hr.", key)
        out[key] = value
    return out


def _rrdb(path: Path, state: dict, layout: str) -> UpscalerSpec:
    """RRDBNet sizes from the shapes: features and input channels from conv_first, growth from the
    first dense conv, blocks from body.N, upsamples from conv_upK; a pixel-unshuffled input
    (Real-ESRGAN x2/x1) shows as 4x or 16x the output channels."""
    try:
        features, in_channels = state["conv_first.weight"].shape[:2]
        out_channels = state["conv_last.weight"].shape[0]
        growth = state["body.0.rdb1.conv1.weight"].shape[0]
    except KeyError as exc:
        raise StablekitError(f"{path} looks like an RRDBNet ({layout} layout) but has no {exc.args[0]!r}; the file is "
                             "incomplete") from None
    upsamples = len({k.split(".")[0] for k in state if re.match(r"conv_up\d+\.", k)})
    shuffle = 1
    for factor in (2, 4):
        if in_channels == out_channels * factor ** 2:
            shuffle = factor
    scale = 2 ** upsamples // shuffle
    if scale < 1:
        raise StablekitError(f"{path}: {in_channels} input channels mean a {shuffle}x pixel-unshuffle, more than its "
                             f"{2 ** upsamples}x upsampling; not an upscaler stablekit can run")
    return UpscalerSpec("RRDBNet", layout, in_channels // shuffle ** 2, out_channels, features, _count(state, "body"),
                        scale, state, growth=growth, upsamples=upsamples, shuffle=shuffle)


def _compact(path: Path, state: dict) -> UpscalerSpec:
    """SRVGGNetCompact sizes: body is conv, PReLU, (conv, PReLU) * n, conv; the last conv makes
    out * scale**2 channels (out taken equal to in, as Real-ESRGAN's models are)."""
    last = _count(state, "body") - 1
    features, in_channels = state["body.0.weight"].shape[:2]
    shuffled = state[f"body.{last}.weight"].shape[0]
    scale = math.isqrt(shuffled // in_channels)
    if last < 2 or last % 2 or scale * scale * in_channels != shuffled:
        raise StablekitError(f"{path} looks like an SRVGGNetCompact but its last layer body.{last} ({shuffled} "
                             f"channels) does not fit one; the file is not a Real-ESRGAN Compact model")
    return UpscalerSpec("Compact", "Compact", in_channels, in_channels, features, (last - 2) // 2, scale, state)


def _count(state: dict, prefix: str) -> int:
    """1 + the highest index N of `prefix.N.` keys (0 without any)."""
    found = [int(k.split(".")[1]) for k in state if k.startswith(prefix + ".") and k.split(".")[1].isdigit()]
    return max(found) + 1 if found else 0


def _move(source: dict, key: str, target: dict, name: str) -> None:
    if key in source:
        target[name] = source.pop(key)
