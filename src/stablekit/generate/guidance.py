"""Guidance options users reach for beyond plain CFG: CFG rescale, FreeU, PAG and img2img "fix steps".

All are opt-in (GuidanceOptions() changes nothing) and act through the one Denoiser (denoiser.py)
and the img2img schedule (steps.img2img_schedule):

- CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  section 3.4), as diffusers' `rescale_noise_cfg`: the guided prediction is rescaled to the
  standard deviation of the text-conditioned one and mixed by phi. Applied, as diffusers does, to
  the model's own prediction (eps or v), only when CFG runs.
- FreeU (Si et al. 2023), exactly diffusers' `UNet2DConditionModel.enable_freeu(s1, s2, b1, b2)`
  for the duration of each UNet call: backbone features of the first two up-block stages scaled by
  b1/b2, their skip features' low frequencies by s1/s2. `freeu_v2`: ComfyUI's FreeU_V2 node instead
  (comfy_extras/nodes_freelunch.py): at every output block whose incoming features have 4x / 2x the
  UNet's first channel count, the first half of the channels is scaled by (b - 1) * m + 1, m the
  channel-mean map min-max normalised per image (b where the features are strongest, 1 where
  weakest), and the skip features Fourier-filtered by s as in FreeU.
- Perturbed-Attention Guidance (Ahn et al. 2024), as diffusers' PAG pipelines: one more copy of the
  conditional batch whose self-attention in the chosen layers is the identity (softmax(QK^T) -> I,
  so the output is to_out(to_v(x))); the guided prediction gains pag_scale * (cond - perturbed).
  Layer names select self-attention modules by `re.search` over the UNet's module names, as
  diffusers' `set_pag_applied_layers` ("mid", "down_blocks.1", "up_blocks.0.attentions.1", ...).
- img2img "fix steps" (A1111's setting `img2img_fix_steps`): run exactly the requested steps inside
  the strength range (the full schedule is int(steps / strength) long and its last `steps` run).

PNG text keys are the ones web UIs use: "CFG Rescale" (A1111's CFG Rescale extension; "CFG Rescale
phi" and Forge's "Rescale CFG" are read too), Forge's "freeu_enabled"/"freeu_b1".."freeu_s2", and
"PAG Scale" / "PAG Applied Layers" (sd-webui-incantations, SD.Next); FreeU_V2 adds "freeu_version: 2"
(stablekit's own key: web UIs write none for it). A1111 writes no text for fix
steps (it is a setting); stablekit keeps it in its JSON record.
"""
from __future__ import annotations

import math
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from stablekit.errors import StablekitError

# diffusers' documented FreeU values per architecture (from the FreeU repository's recommendations)
FREEU_DEFAULTS = {"sd1": (1.5, 1.6, 0.9, 0.2), "sd2": (1.4, 1.6, 0.9, 0.2), "sd2-v": (1.4, 1.6, 0.9, 0.2),
                  "sdxl": (1.3, 1.4, 0.9, 0.2)}
RESCALE_KEYS = ("CFG Rescale", "CFG Rescale phi", "CFG Rescale φ", "Rescale CFG")
FREEU_KEYS = ("freeu_b1", "freeu_b2", "freeu_s1", "freeu_s2")
PAG_KEYS = ("PAG Scale", "PAG scale")
TEXT_KEYS = frozenset({*RESCALE_KEYS, *FREEU_KEYS, "freeu_enabled", "freeu_version", *PAG_KEYS, "PAG Applied Layers"})


@dataclass(frozen=True)
class GuidanceOptions:
    """cfg_rescale: phi in [0, 1] (0: off); freeu: (b1, b2, s1, s2), True for the architecture's
    defaults, or None (off); pag_scale: >= 0 (0: off) with pag_layers (diffusers' layer names);
    fix_steps: img2img runs exactly `steps` steps (A1111's img2img_fix_steps); freeu_v2: FreeU's values
    applied with ComfyUI's FreeU_V2 math (needs freeu)."""

    cfg_rescale: float = 0.0
    freeu: tuple | bool | None = None
    pag_scale: float = 0.0
    pag_layers: tuple = ("mid",)
    fix_steps: bool = False
    freeu_v2: bool = False

    def validate(self) -> "GuidanceOptions":
        """A checked copy (tuples, floats); a bad value is a one-line StablekitError."""
        rescale = _number(self.cfg_rescale, "CFG rescale", 0, 1)
        pag = _number(self.pag_scale, "PAG scale", 0, 100)
        freeu = self.freeu
        if freeu is False:
            freeu = None
        if freeu is not None and freeu is not True:
            if isinstance(freeu, str):
                freeu = freeu.split(",")
            if len(freeu) != 4:
                raise StablekitError(f"FreeU takes 4 numbers b1,b2,s1,s2 (got {self.freeu!r}); e.g. 1.5,1.6,0.9,0.2")
            freeu = tuple(_number(v, "FreeU value", 0, 10) for v in freeu)
        layers = (self.pag_layers,) if isinstance(self.pag_layers, str) else tuple(self.pag_layers or ())
        if pag and not layers:
            raise StablekitError("PAG needs at least one layer name (e.g. mid); give --pag-layers mid")
        for layer in layers:
            try:
                re.compile(str(layer))
            except re.error as exc:
                raise StablekitError(f"PAG layer {layer!r} is not a valid pattern ({exc}); use names such as mid, "
                                     "down_blocks.1, up_blocks.0.attentions.1") from None
        if not isinstance(self.fix_steps, bool) or not isinstance(self.freeu_v2, bool):
            raise StablekitError(f"fix_steps and freeu_v2 must be true or false (got {self.fix_steps!r}, "
                                 f"{self.freeu_v2!r})")
        if self.freeu_v2 and freeu is None:
            raise StablekitError("FreeU_V2 needs FreeU on: give freeu=True or its 4 values (CLI: --freeu)")
        return replace(self, cfg_rescale=rescale, freeu=freeu, pag_scale=pag, pag_layers=tuple(map(str, layers)))

    @property
    def changes_model(self) -> bool:
        """True when the Denoiser must take the guided path (anything but fix steps is on)."""
        return bool(self.cfg_rescale or self.freeu or self.pag_scale)

    @property
    def enabled(self) -> bool:
        return self.changes_model or self.fix_steps

    def resolved(self, arch: str | None) -> "GuidanceOptions":
        """freeu=True replaced by the architecture's default values (SD1 for unknown ones)."""
        options = self.validate()
        if options.freeu is True:
            options = replace(options, freeu=FREEU_DEFAULTS.get(arch or "sd1", FREEU_DEFAULTS["sd1"]))
        return options

    def fields(self) -> dict:
        """A1111-style text fields for the options in use (see the module docstring)."""
        out: dict = {}
        if self.cfg_rescale:
            out["CFG Rescale"] = self.cfg_rescale
        if self.freeu:
            out["freeu_enabled"] = True
            out.update(dict(zip(FREEU_KEYS, self.freeu)))
            if self.freeu_v2:
                out["freeu_version"] = 2
        if self.pag_scale:
            out["PAG Scale"] = self.pag_scale
            out["PAG Applied Layers"] = " ".join(self.pag_layers)
        return out

    def record(self) -> dict:
        return {"cfg_rescale": self.cfg_rescale, "freeu": list(self.freeu) if self.freeu else None,
                "pag_scale": self.pag_scale, "pag_layers": list(self.pag_layers), "fix_steps": self.fix_steps,
                "freeu_v2": self.freeu_v2}

    @classmethod
    def from_record(cls, record: dict | None) -> "GuidanceOptions | None":
        if not record:
            return None
        known = {k: record[k] for k in ("cfg_rescale", "freeu", "pag_scale", "pag_layers", "fix_steps", "freeu_v2")
                 if k in record}
        if isinstance(known.get("freeu"), list):
            known["freeu"] = tuple(known["freeu"])
        return cls(**known).validate()

    @classmethod
    def from_fields(cls, fields: dict) -> "GuidanceOptions | None":
        """From parsed A1111 text (None when it names none of these options)."""
        try:
            rescale = next((float(fields[k]) for k in RESCALE_KEYS if k in fields), 0.0)
            freeu = None
            if str(fields.get("freeu_enabled", "True")).lower() == "true" and all(k in fields for k in FREEU_KEYS):
                freeu = tuple(float(fields[k]) for k in FREEU_KEYS)
            pag = next((float(fields[k]) for k in PAG_KEYS if k in fields), 0.0)
        except ValueError as exc:
            raise StablekitError(f"the PNG's guidance fields are not numbers: {exc}") from None
        layers = tuple(str(fields.get("PAG Applied Layers", "mid")).replace(",", " ").split()) or ("mid",)
        v2 = freeu is not None and str(fields.get("freeu_version", "1")).strip() == "2"
        options = cls(rescale, freeu, pag, layers, freeu_v2=v2).validate()
        return options if options.enabled else None


def take(settings: dict, arch: str | None) -> GuidanceOptions | None:
    """Pop `guidance` (GuidanceOptions, a dict of its fields, or None) from generate() settings,
    resolved for the architecture; None when nothing is on."""
    options = settings.pop("guidance", None)
    if options is None:
        return None
    if isinstance(options, dict):
        options = GuidanceOptions(**options)
    if not isinstance(options, GuidanceOptions):
        raise StablekitError(f"guidance must be a GuidanceOptions or a dict of its fields (got {options!r})")
    options = options.resolved(arch)
    return options if options.enabled else None


def _number(value, label: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StablekitError(f"{label} must be a number (got {value!r})") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise StablekitError(f"{label} must be between {low} and {high} (got {value!r})")
    return number


# ----------------------------------------------------------------------------- the math
def rescale_cfg(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """diffusers' rescale_noise_cfg: guided rescaled to cond's per-image standard deviation, mixed by phi."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def combine(outputs: Tensor, cfg_scale: float, guided: bool, options: GuidanceOptions) -> Tensor:
    """One UNet call's outputs [uncond?, cond, perturbed?] (chunks of equal size) -> the guided
    prediction, in the model's own prediction space, in diffusers' order: CFG, PAG, rescale."""
    chunks = outputs.chunk(copies(guided, options))
    uncond = chunks[0] if guided else None
    cond = chunks[1] if guided else chunks[0]
    result = uncond + cfg_scale * (cond - uncond) if guided else cond
    if options.pag_scale:
        result = result + options.pag_scale * (cond - chunks[-1])
    if options.cfg_rescale and guided:
        result = rescale_cfg(result, cond, options.cfg_rescale)
    return result


def copies(guided: bool, options: GuidanceOptions) -> int:
    """How many copies of the images one UNet call holds: [uncond?, cond, perturbed?]."""
    return 1 + bool(guided) + bool(options.pag_scale)


# ----------------------------------------------------------------------------- UNet patches per call
def base_unet(unet):
    """The diffusers UNet inside wrappers (a 9-channel InpaintUNet, torch.compile)."""
    for name in ("unet", "_orig_mod"):
        inner = getattr(unet, name, None)
        if isinstance(inner, torch.nn.Module):
            return base_unet(inner)
    return unet


def pag_modules(unet, layers) -> list:
    """The self-attention modules PAG perturbs, matched as diffusers' PAGMixin._set_pag_attn_processor."""
    from diffusers.models.attention_processor import Attention

    found = []
    for layer in layers:
        matched = [m for name, m in base_unet(unet).named_modules()
                   if isinstance(m, Attention) and not m.is_cross_attention and re.search(layer, name) is not None
                   and not _fake_integral_match(layer, name)]
        if not matched:
            raise StablekitError(f"no self-attention layer of this UNet matches PAG layer {layer!r}; use names such as "
                                 "mid, down_blocks.1, up_blocks.0.attentions.1")
        found += [m for m in matched if all(m is not f for f in found)]
    return found


def _fake_integral_match(layer: str, name: str) -> bool:
    """diffusers' rule: a layer id ending in a number must not match another number ("blocks.1" vs "blocks.10")."""
    a, b = layer.split(".")[-1], name.split(".")[-1]
    return a.isnumeric() and b.isnumeric() and a == b


class IdentityTailProcessor:
    """An attention processor whose last `rows` batch rows get identity self-attention (PAG's
    perturbed branch, as diffusers' PAGCFGIdentitySelfAttnProcessor2_0); the rest go through the
    module's own processor unchanged."""

    def __init__(self, inner, rows: int):
        self.inner, self.rows = inner, rows

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> Tensor:
        split = hidden_states.shape[0] - self.rows
        normal = self.inner(attn, hidden_states[:split], encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return torch.cat([normal, identity_attention(attn, hidden_states[split:], temb)])


def identity_attention(attn, hidden_states: Tensor, temb=None) -> Tensor:
    """Self-attention with the attention map replaced by the identity: to_out(to_v(x)), with the
    module's norms, residual and output rescale as its processor applies them."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    out = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
    if len(shape) == 4:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


@contextmanager
def patched_unet(unet, options: GuidanceOptions, perturbed_rows: int):
    """FreeU enabled and PAG processors set on `unet` for one call; everything restored afterwards."""
    with ExitStack() as stack:
        base = base_unet(unet)
        if options.freeu and options.freeu_v2:
            for handle in freeu_v2_hooks(base, *options.freeu):
                stack.callback(handle.remove)
        elif options.freeu:
            b1, b2, s1, s2 = options.freeu
            base.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
            stack.callback(base.disable_freeu)
        if options.pag_scale:
            saved = [(m, m.processor) for m in pag_modules(base, options.pag_layers)]
            for module, processor in saved:
                module.processor = IdentityTailProcessor(processor, perturbed_rows)
            stack.callback(lambda: [setattr(m, "processor", p) for m, p in saved])
        yield


# ----------------------------------------------------------------------------- FreeU_V2 (ComfyUI)
def freeu_v2_hooks(unet, b1: float, b2: float, s1: float, s2: float) -> list:
    """Forward pre-hooks on the up-block ResNets of a diffusers UNet doing ComfyUI's FreeU_V2 patch.

    ComfyUI patches each output block before `cat([h, skip])`; in diffusers that concatenation is
    each up-block ResNet's input, so the hook splits it at h's channel count: the previous block's
    output channels for a block's first ResNet (the mid block's for the first), else the block's own.
    ComfyUI keys the scales on h's channels (model_channels x 4 -> b1, s1; x 2 -> b2, s2), not on the
    block index as diffusers' FreeU does."""
    first = unet.config.block_out_channels[0]
    scales = {first * 4: (b1, s1), first * 2: (b2, s2)}
    return [resnet.register_forward_pre_hook(_v2_hook(channels, *scales[channels]))
            for resnet, channels in up_resnet_inputs(unet) if channels in scales]


def up_resnet_inputs(unet) -> list[tuple]:
    """(ResNet, channels of the backbone features h in its input cat([h, skip])) for every up-block ResNet."""
    out, previous = [], unet.config.block_out_channels[-1]
    for block in unet.up_blocks:
        for i, resnet in enumerate(block.resnets):
            out.append((resnet, previous if i == 0 else resnet.out_channels))
        previous = block.resnets[-1].out_channels
    return out


def _v2_hook(channels: int, backbone: float, skip: float):
    def hook(module, args):
        h, skip_features = freeu_v2_features(args[0][:, :channels], args[0][:, channels:], backbone, skip)
        return (torch.cat([h, skip_features], dim=1), *args[1:])

    return hook


def freeu_v2_features(h: Tensor, skip_features: Tensor, backbone: float, skip: float) -> tuple[Tensor, Tensor]:
    """ComfyUI's FreeU_V2 output_block_patch on (h, hsp): returns new tensors (inputs untouched)."""
    mean = h.mean(1, keepdim=True)
    flat = mean.view(mean.shape[0], -1)
    low, high = flat.min(-1).values[:, None, None, None], flat.max(-1).values[:, None, None, None]
    # ComfyUI divides by zero when the map is flat (a 1x1 feature map: NaN image); flat -> factor 1
    mean = torch.where(high > low, (mean - low) / torch.where(high > low, high - low, 1.0), 0.0)
    h = h.clone()
    half = h.shape[1] // 2
    h[:, :half] = h[:, :half] * ((backbone - 1) * mean + 1)
    return h, fourier_filter(skip_features, 1, skip)


def fourier_filter(x: Tensor, threshold: int, scale: float) -> Tensor:
    """FreeU's filter (ComfyUI's Fourier_filter): the centred (2 threshold)^2 lowest frequencies scaled by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    b, c, height, width = freq.shape
    mask = torch.ones((b, c, height, width), device=x.device)
    row, col = height // 2, width // 2
    mask[..., row - threshold:row + threshold, col - threshold:col + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)
