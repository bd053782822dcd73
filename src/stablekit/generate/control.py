"""ControlNet units as one `Control` for the Denoiser: samplers and the UNet call stay untouched.

A unit is a ControlNet, a conditioning image (preprocessed, generation/preprocess.py), a weight, a
window of the steps and A1111's control mode, with the semantics of the A1111 extension
sd-webui-controlnet (scripts/hook.py, v1.1.455):
  - window: the unit runs while start <= p <= end, where p = A1111's `sampling_step /
    sampling_steps`: the last completed step's index (0 before the first step completes) over the
    sampler steps of this pass. (diffusers' pipelines use i/N >= start and (i+1)/N <= end instead.)
  - "Balanced": every residual times the weight (diffusers' conditioning_scale).
  - "My prompt is more important" (soft injection): residual i of 13 times weight * 0.825^(12-i),
    so the middle block gets the weight and the first skip 0.825^12 = 0.1 of it; SDXL's 10
    residuals take the first 10 of those factors, as the extension does.
  - "ControlNet is more important" (guess mode): soft injection, and the residuals reach only the
    prompt's half of the CFG batch (the negative prompt's half gets none).
Several units are summed, in order. The ControlNet runs on the same scaled latents, timestep,
text and SDXL ids as the UNet call it feeds (UNetInput), as diffusers' ControlNet pipelines do.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stablekit.errors import StablekitError
from stablekit.generate.denoiser import ControlResiduals, UNetInput
from stablekit.generate.preprocess import PREPROCESSORS, RESIZE_MODES, fit, preprocess, preprocessor_name

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
_MODE_ALIASES = {"balanced": 0, "prompt": 1, "my prompt is more important": 1, "controlnet": 2, "control": 2,
                 "guess": 2, "controlnet is more important": 2}
SOFT_BASE = 0.825  # the extension's soft-injection factor per residual


def control_mode(name: str) -> str:
    """A1111's control mode name for a name or alias (balanced, prompt, controlnet/guess)."""
    index = _MODE_ALIASES.get(str(name).strip().lower())
    if index is None:
        raise StablekitError(f"unknown control mode {name!r}; use one of: balanced, prompt, controlnet "
                             f"(A1111: {', '.join(CONTROL_MODES)})")
    return CONTROL_MODES[index]


@dataclass
class ControlUnit:
    """One ControlNet unit (A1111's field names in comments).

    net: a ControlNet file/folder path or a loaded diffusers ControlNetModel (Model);
    image: path, PIL image or 8-bit [H, W, 3] array (Image); scale (Weight, 0..2); start / end
    (Guidance Start / End, fractions of the steps); mode (Control Mode: balanced, prompt, controlnet);
    preprocessor (Module: none, canny, invert, threshold, scribble_xdog); resize_mode (Resize Mode);
    processor_res (Processor Res); threshold_a / threshold_b (Threshold A / B; None: the
    preprocessor's default).
    """

    net: object
    image: object
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "Balanced"
    preprocessor: str = "none"
    resize_mode: str = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float | None = None
    threshold_b: float | None = None

    def validate(self) -> "ControlUnit":
        """A copy with canonical names; out-of-range numbers are one-line errors."""
        for name, low, high in (("scale", 0.0, 2.0), ("start", 0.0, 1.0), ("end", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise StablekitError(f"ControlNet {name} must be between {low} and {high} (got {value!r})")
        if self.start > self.end:
            raise StablekitError(f"ControlNet start {self.start} is after its end {self.end}; give start <= end")
        if self.resize_mode not in RESIZE_MODES:
            raise StablekitError(f"unknown resize mode {self.resize_mode!r}; use one of: {', '.join(RESIZE_MODES)}")
        if not isinstance(self.processor_res, int) or self.processor_res < 64:
            raise StablekitError(f"processor_res must be a whole number >= 64 (got {self.processor_res!r})")
        name = preprocessor_name(self.preprocessor)
        a, b = PREPROCESSORS[name]
        return replace(self, scale=float(self.scale), start=float(self.start), end=float(self.end),
                       mode=control_mode(self.mode), preprocessor=name,
                       threshold_a=float(a if self.threshold_a is None else self.threshold_a),
                       threshold_b=float(b if self.threshold_b is None else self.threshold_b))


@dataclass
class PreparedUnit:
    """A validated unit with its loaded net and its control map at the generation size."""

    unit: ControlUnit
    net: object
    control_map: np.ndarray  # 8-bit RGB [H, W, 3]: what the net sees (saved on request)
    hint: Tensor  # [1, 3, H, W] in [0, 1], the net's dtype and device
    model: str  # "name [hash]" as the extension writes it
    source: str
    input_identity: dict = field(default_factory=dict)

    def infotext(self) -> str:
        """The unit as the extension serialises it (internal_controlnet/args.py `serialize`)."""
        u = self.unit
        fields = {"Module": u.preprocessor, "Model": self.model, "Weight": u.scale, "Resize Mode": u.resize_mode,
                  "Processor Res": u.processor_res, "Threshold A": u.threshold_a, "Threshold B": u.threshold_b,
                  "Guidance Start": u.start, "Guidance End": u.end, "Pixel Perfect": False, "Control Mode": u.mode}
        return ", ".join(f"{k}: {v}" for k, v in fields.items())

    def record(self) -> dict:
        """The unit in the stablekit record: settings, model, and the input image by hash."""
        u = self.unit
        return {"model": self.model, "source": self.source, "image": self.input_identity,
                "preprocessor": u.preprocessor, "scale": u.scale, "start": u.start, "end": u.end, "mode": u.mode,
                "resize_mode": u.resize_mode, "processor_res": u.processor_res,
                "threshold_a": u.threshold_a, "threshold_b": u.threshold_b}


def _load_net(net, components, cache: dict | None):
    """A ControlNetModel on the model's device and dtype, with its name, hash and source."""
    from stablekit.formats.controlnet import load_controlnet
    from stablekit.formats.hashes import a1111_legacy_hash

    if not isinstance(net, (str, Path)):
        return net, getattr(net, "name_or_path", "") or "controlnet", ""
    path = Path(net)
    key = str(path.resolve())
    if cache is not None and key in cache:
        return cache[key]
    loaded = load_controlnet(path, unet_config=dict(components.unet.config), dtype=components.dtype)
    loaded = loaded.to(components.device)
    weights = path
    if path.is_dir():
        weights = next(iter(sorted(path.glob("diffusion_pytorch_model*.safetensors")) or [path / "config.json"]))
    name = f"{path.stem if path.is_file() else path.name} [{a1111_legacy_hash(weights)}]"
    result = (loaded, name, str(path))
    if cache is not None:
        cache[key] = result
    return result


def _check_arch(net, components, name: str) -> None:
    """A ControlNet for another architecture is refused before it fails inside the UNet."""
    unet = components.unet.config
    for key in ("cross_attention_dim", "block_out_channels", "addition_embed_type"):
        mine, its = getattr(unet, key, None), net.config.get(key) if hasattr(net.config, "get") else None
        if mine is not None and its is not None and list(np.atleast_1d(mine)) != list(np.atleast_1d(its)):
            raise StablekitError(f"ControlNet {name} is for another architecture ({key} {its} vs the model's "
                                 f"{mine}); give a ControlNet made for this model's base ({components.arch})")


def prepare_units(units, components, width: int, height: int, cache: dict | None = None) -> list[PreparedUnit]:
    """Validate units, load their nets (cached by path in `cache`), preprocess and fit their images."""
    from stablekit.generate.steps import _identity

    prepared = []
    for i, unit in enumerate(units):
        if not isinstance(unit, ControlUnit):
            raise StablekitError(f"controlnets[{i}] is a {type(unit).__name__}; give ControlUnit(net, image, ...)")
        unit = unit.validate()
        net, name, source = _load_net(unit.net, components, cache)
        _check_arch(net, components, name)
        rgb, control_map = control_map_of(unit, width, height, index=i)
        param = next(net.parameters())
        hint = torch.from_numpy(control_map.astype(np.float32) / 255.0).to(param.device, param.dtype)
        prepared.append(PreparedUnit(unit, net, control_map, hint.permute(2, 0, 1)[None], name, source, _identity(rgb)))
    return prepared


def control_map_of(unit: ControlUnit, width: int, height: int, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the unit's input image as 8-bit RGB, its control map fitted to width x height). An input
    of another size than the generation is fitted by the unit's resize mode, with a note."""
    from stablekit.generate.notes import note
    from stablekit.generate.steps import _open_image

    unit = unit.validate()
    if isinstance(unit.image, np.ndarray):
        rgb = np.asarray(unit.image, dtype=np.uint8)
    else:
        rgb = np.asarray(_open_image(unit.image, "RGB", "control image", "give a PNG/JPEG/WebP file"))
    control_map = preprocess(rgb, unit.preprocessor, unit.processor_res, unit.threshold_a, unit.threshold_b)
    if control_map.shape[:2] != (height, width):
        if rgb.shape[:2] != (height, width):
            note(f"control image {index} is {rgb.shape[1]}x{rgb.shape[0]}; fitted to {width}x{height} "
                 f"({unit.resize_mode})")
        control_map = fit(control_map, width, height, unit.resize_mode)
    return rgb, control_map


def block_scales(unit: ControlUnit, count: int, hires: bool = False) -> list[float]:
    """The factor of each of `count` residuals (skips first, middle block last) for the unit's mode.
    In a hires fix's second pass canny (and mlsd) units are always soft, as the extension forces."""
    if unit.mode == CONTROL_MODES[0] and not (hires and unit.preprocessor in ("canny", "mlsd")):
        return [unit.scale] * count
    return [unit.scale * SOFT_BASE ** float(12 - i) for i in range(max(count, 13))][:count]


def active(unit: ControlUnit, step: int, steps: int) -> bool:
    """Whether the unit runs at sampler step `step` (0-based) of `steps`: A1111's guidance window,
    where the fraction is the last completed step's index over the steps (0 during the first)."""
    fraction = max(step - 1, 0) / steps
    return unit.start <= fraction <= unit.end


class ControlNetControl:
    """The Denoiser's `control`: the summed, scaled residuals of the units active at this call.

    sigmas: the schedule of the pass being sampled (the step is found from the call's sigma);
    images: images per UNet call without CFG (which rows of a call are the negative prompt's, the
        Denoiser says: UNetInput.uncond_rows);
    hires: this is a hires fix's second pass.
    """

    def __init__(self, units: list[PreparedUnit], sigmas: Tensor, images: int, hires: bool = False):
        self.hires = hires
        self.units = units
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
        self.steps = max(1, len(self.sigmas) - 1)
        self.images = images
        self.count = len(units[0].net.controlnet_down_blocks) + 1 if units else 0

    def step_of(self, sigma: float) -> int:
        """The sampler step whose interval (sigmas[k+1], sigmas[k]] holds sigma."""
        k = int((self.sigmas >= sigma * (1 - 1e-6)).sum()) - 1
        return min(max(k, 0), self.steps - 1)

    def __call__(self, inputs: UNetInput) -> ControlResiduals:
        step = self.step_of(float(inputs.sigma.reshape(-1)[0]))
        total: list | None = None
        for prepared in self.units:
            unit = prepared.unit
            if unit.scale == 0 or not active(unit, step, self.steps):
                continue
            # the Denoiser says which rows are the negative prompt's (with PAG the batch has 3 parts)
            skip = inputs.uncond_rows if unit.mode == CONTROL_MODES[2] else 0
            residuals = self._run(prepared, inputs, skip)
            residuals = [r * s for r, s in zip(residuals, block_scales(unit, len(residuals), self.hires))]
            if skip:  # the negative prompt's rows get nothing
                residuals = [torch.cat([r.new_zeros((skip, *r.shape[1:])), r]) for r in residuals]
            total = residuals if total is None else [a + b for a, b in zip(total, residuals)]
        if total is None:  # nothing active: zeros add nothing, exactly
            zero = torch.zeros(1, 1, 1, 1, device=inputs.sample.device, dtype=inputs.sample.dtype)
            return ControlResiduals([zero] * (self.count - 1), zero)
        return ControlResiduals(total[:-1], total[-1])

    @staticmethod
    def _run(prepared: PreparedUnit, inputs: UNetInput, first: int) -> list[Tensor]:
        """The net's 13 (SDXL: 10) residuals for rows first: of the call, conditioning scale 1."""
        rows = inputs.sample.shape[0] - first
        added = None
        if inputs.added_cond_kwargs is not None:
            added = {k: v[first:] if v.shape[0] == inputs.sample.shape[0] else v
                     for k, v in inputs.added_cond_kwargs.items()}
        # contiguous NCHW rows, as diffusers' pipeline passes them (cat/repeat): a channels-last or
        # broadcast hint made oneDNN pick another convolution, 1e-6 away (the node graph and the
        # pipeline differed at cfg 1, where the hint's strides were the only difference)
        hint = prepared.hint.expand(rows, -1, -1, -1).contiguous()
        with torch.no_grad():
            down, mid = prepared.net(inputs.sample[first:], inputs.timestep[first:],
                                     encoder_hidden_states=inputs.encoder_hidden_states[first:],
                                     controlnet_cond=hint,
                                     conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False)
        return [*down, mid]


def save_control_maps(maps: list[np.ndarray], beside) -> list[Path]:
    """Control maps (8-bit RGB, as `control_map_of` gives them) as `<stem>-control<i>.png` beside the
    file `beside`."""
    from PIL import Image

    beside = Path(beside)
    paths = []
    for i, control_map in enumerate(maps):
        path = beside.with_name(f"{beside.stem}-control{i}.png")
        Image.fromarray(control_map).save(path)
        paths.append(path)
    return paths
