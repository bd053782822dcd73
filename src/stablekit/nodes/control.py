"""ControlNet nodes: ControlNetApply, ControlNetApplyAdvanced (ComfyUI names, inputs, outputs and
semantics; comfy/controlnet.py), applied through stablekit.generate.control (no second ControlNet).

As in ComfyUI, applying only attaches the control to the CONDITIONING (`Cond.controls`, in the
order applied; every control of a chain is summed); the KSampler then builds the Denoiser's
Control from it (`node_control`), when the size and schedule are known:
  - the IMAGE becomes the hint as ComfyUI's get_control does: resized to the latent size times 8
    by nearest-exact with a centre crop (comfy.utils.common_upscale), used as floats (no 8-bit step);
  - strength multiplies every residual (A1111's "Balanced"); strength 0 returns the input unchanged;
  - start_percent / end_percent are ComfyUI's: a control runs at a model call whose sigma s has
    percent_to_sigma(end) <= s <= percent_to_sigma(start), percent_to_sigma(p) = sigma(t=(1-p)*999)
    (0 -> infinity, 1 -> 0); not A1111's step fractions (ControlUnit.start/end);
  - residuals reach the conditioning that carries the control. ControlNetApply marks it
    control_apply_to_uncond: a negative without any control then takes the positive's (ComfyUI's
    apply_empty_x_to_equal_area), so both halves of the CFG batch get it, as one batch;
    ControlNetApplyAdvanced attaches the same control to both itself. A negative with controls of
    its own keeps them, and a positive-only control from ControlNetApplyAdvanced leaves the
    negative prompt's half without residuals.
The optional vae is accepted and unused: SD 1.x/2.x/SDXL ControlNets take the image itself.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from stablekit.errors import StablekitError
from stablekit.nodes.registry import register

STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}


@dataclass(eq=False)  # identity: the same control on positive and negative is one batch (as ComfyUI's copy)
class ControlSpec:
    """One applied ControlNet: the loaded net, the IMAGE [B, H, W, C] in [0, 1], its strength and window."""

    net: object
    image: torch.Tensor
    strength: float
    start: float = 0.0
    end: float = 1.0


def _spec(control_net, image, strength, start=0.0, end=1.0) -> ControlSpec:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
        raise StablekitError("the ControlNet image must be an IMAGE [batch, height, width, 3]; connect a LoadImage")
    if image.shape[0] != 1:
        raise StablekitError(f"the ControlNet image is a batch of {image.shape[0]}; stablekit takes one hint "
                             "image per ControlNet: pick one (ImageFromBatch) or apply one ControlNet per image")
    if start > end:
        raise StablekitError(f"start_percent {start} is after end_percent {end}; give start_percent <= end_percent")
    return ControlSpec(control_net, image, float(strength), float(start), float(end))


@register
class ControlNetApply:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"conditioning": ("CONDITIONING",), "control_net": ("CONTROL_NET",),
                             "image": ("IMAGE",), "strength": STRENGTH}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        spec = _spec(control_net, image, strength)
        return (replace(conditioning, controls=conditioning.controls + (spec,), controls_to_uncond=True),)


@register
class ControlNetApplyAdvanced:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",), "image": ("IMAGE",), "strength": STRENGTH,
                             "start_percent": ("FLOAT", {"default": 0.0, **PERCENT}),
                             "end_percent": ("FLOAT", {"default": 1.0, **PERCENT})},
                "optional": {"vae": ("VAE",)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if strength == 0:
            return (positive, negative)
        spec = _spec(control_net, image, strength, start_percent, end_percent)
        return (replace(positive, controls=positive.controls + (spec,), controls_to_uncond=False),
                replace(negative, controls=negative.controls + (spec,), controls_to_uncond=False))


def percent_to_sigma(denoiser, percent: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return float(denoiser.t_to_sigma(torch.tensor((1.0 - percent) * 999.0)))


@dataclass
class _Applied:
    control: object  # a one-unit ControlNetControl
    high: float  # runs while low <= sigma <= high
    low: float


def _prepare(spec: ControlSpec, components, denoiser, width: int, height: int, sigmas, images: int) -> _Applied:
    """A spec as a one-unit ControlNetControl (generate/control.py): prepare_units validates, checks
    the architecture and loads; the hint is then ComfyUI's and the scale the node's strength."""
    from stablekit.generate.control import ControlNetControl, ControlUnit, prepare_units
    from stablekit.nodes.image import to_uint8
    from stablekit.nodes.latent import upscale

    net, param = spec.net, next(spec.net.parameters())
    if (param.device, param.dtype) != (components.device, components.dtype):
        net = net.to(components.device, components.dtype)
    (prepared,) = prepare_units([ControlUnit(net, to_uint8(spec.image)[0])], components, width, height)
    hint = upscale(spec.image.movedim(-1, 1).float(), width, height, "nearest-exact", "center")
    prepared = replace(prepared, unit=replace(prepared.unit, scale=spec.strength),  # 0..10 as ComfyUI allows
                       hint=hint.to(prepared.hint.device, prepared.hint.dtype))
    return _Applied(ControlNetControl([prepared], sigmas, images),
                    percent_to_sigma(denoiser, spec.start), percent_to_sigma(denoiser, spec.end))


class NodeControl:
    """The Denoiser's Control for a KSampler: each half of a CFG batch ([uncond, cond]) gets the
    summed residuals of its own conditioning's controls; a call without CFG is the positive's."""

    def __init__(self, positive: list[_Applied], negative: list[_Applied], images: int, shared: bool, count: int):
        self.positive, self.negative, self.images, self.shared, self.count = positive, negative, images, shared, count

    @staticmethod
    def _sum(applied: list[_Applied], inputs):
        sigma = float(inputs.sigma.reshape(-1)[0])
        total = None
        for a in applied:
            if a.low <= sigma <= a.high:
                r = a.control(inputs)
                parts = [*r.down, r.mid]
                total = parts if total is None else [x + y for x, y in zip(total, parts)]
        return total

    def __call__(self, inputs):
        from stablekit.generate.denoiser import ControlResiduals, UNetInput

        rows = inputs.sample.shape[0]
        if rows == self.images or self.shared:
            total = self._sum(self.positive, inputs)
        else:
            halves = []
            for rows_of, applied in ((slice(0, self.images), self.negative), (slice(self.images, rows), self.positive)):
                added = inputs.added_cond_kwargs
                if added is not None:
                    added = {k: v[rows_of] if v.shape[0] == rows else v for k, v in added.items()}
                half = UNetInput(inputs.sample[rows_of], inputs.timestep[rows_of],
                                 inputs.encoder_hidden_states[rows_of], added, inputs.sigma[rows_of])
                halves.append(self._sum(applied, half))
            total = None
            if halves[0] is not None or halves[1] is not None:
                like = halves[0] if halves[0] is not None else halves[1]
                neg, pos = (h if h is not None else [torch.zeros_like(r) for r in like] for h in halves)
                total = [torch.cat([n, p]) for n, p in zip(neg, pos)]
        if total is None:  # nothing active: zeros add nothing, exactly
            zero = torch.zeros(1, 1, 1, 1, device=inputs.sample.device, dtype=inputs.sample.dtype)
            return ControlResiduals([zero] * (self.count - 1), zero)
        return ControlResiduals(total[:-1], total[-1])


def node_control(positive, negative, components, denoiser, size: tuple[int, int], sigmas, images: int):
    """The Control for a KSampler's positive and negative CONDITIONING; None when neither has one."""
    if not positive.controls and not negative.controls:
        return None
    width, height = size
    made: dict = {}

    def applied(specs) -> list[_Applied]:
        for spec in specs:
            if id(spec) not in made:
                made[id(spec)] = _prepare(spec, components, denoiser, width, height, sigmas, images)
        return [made[id(s)] for s in specs]

    negatives = negative.controls
    if not negatives and positive.controls_to_uncond:  # ComfyUI's apply_empty_x_to_equal_area
        negatives = positive.controls
    pos, neg = applied(positive.controls), applied(negatives)
    count = next(iter(made.values())).control.count
    return NodeControl(pos, neg, images, positive.controls == negatives, count)
