"""Guidance options users reach for beyond plain CFG: CFG rescale, FreeU, PAG and img2img "fix steps".

All are opt-in (GuidanceOptions() changes nothing) and act through the one Denoiser (denoiser.py)
and the img2img schedule (steps.img2img_schedule):

- CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  section 3.4), as diffusers' `rescale_noise_cfg`: the guided prediction is rescaled to the
  standard deviation of the text-conditioned one and mixed by phi. Applied, as diffusers does, to
  the model's own prediction (eps or v), only when CFG runs.
- FreeU (Si et al. 2023), exactly diffusers' `UNet2DConditionModel.enable_freeu(s1, s2, b1, b2)`
  for the duration of each UNet call: backbone features of the first two up-block stages scaled by
  b1/b2, their skip features' low frequencies by s1/s2.
- Perturbed-Attention Guidance (Ahn et al. 2024), as diffusers' PAG pipelines: one more copy of the
  conditional batch whose self-attention in the chosen layers is the identity (softmax(QK^T) -> I,
  so the output is to_out(to_v(x))); the guided prediction gains pag_scale * (cond - perturbed).
  Layer names select self-attention modules by `re.search` over the UNet's module names, as
  diffusers' `set_pag_applied_layers` ("mid", "down_blocks.1", "up_blocks.0.attentions.1", ...).
- img2img "fix steps" (A1111's setting `img2img_fix_steps`): run exactly the requested steps inside
  the strength range (the full schedule is int(steps / strength) long and its last `steps` run).

PNG text keys are the ones web UIs use: "CFG Rescale" (A1111's CFG Rescale extension; "CFG Rescale
phi" and Forge's "Rescale CFG" are read too), Forge's "freeu_enabled"/"freeu_b1".."freeu_s2", and
"PAG Scale" / "PAG Applied Layers" (sd-webui-incantations, SD.Next). A1111 writes no text for fix
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
TEXT_KEYS = frozenset({*RESCALE_KEYS, *FREEU_KEYS, "freeu_enabled", *PAG_KEYS, "PAG Applied Layers"})


@dataclass(frozen=True)
class GuidanceOptions:
    """cfg_rescale: phi in [0, 1] (0: off); freeu: (b1, b2, s1, s2), True for the architecture's
    defaults, or None (off); pag_scale: >= 0 (0: off) with pag_layers (diffusers' layer names);
    fix_steps: img2img runs exactly `steps` steps (A1111's img2img_fix_steps)."""

    cfg_rescale: float = 0.0
    freeu: tuple | bool | None = None
    pag_scale: float = 0.0
    pag_layers: tuple = ("mid",)
    fix_steps: bool = False

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
        if not isinstance(self.fix_steps, bool):
            raise StablekitError(f"fix_steps must be true or false (got {self.fix_steps!r})")
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
        if self.pag_scale:
            out["PAG Scale"] = self.pag_scale
            out["PAG Applied Layers"] = " ".join(self.pag_layers)
        return out

    def record(self) -> dict:
        return {"cfg_rescale": self.cfg_rescale, "freeu": list(self.freeu) if self.freeu else None,
                "pag_scale": self.pag_scale, "pag_layers": list(self.pag_layers), "fix_steps": self.fix_steps}

    @classmethod
    def from_record(cls, record: dict | None) -> "GuidanceOptions | None":
        if not record:
            return None
        known = {k: record[k] for k in ("cfg_rescale", "freeu", "pag_scale", "pag_layers", "fix_steps") if k in record}
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
        options = cls(rescale, freeu, pag, layers).validate()
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
        if options.freeu:
            b1, b2, s1, s2 = options.freeu
            base.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
            stack.callback(base.disable_freeu)
        if options.pag_scale:
            saved = [(m, m.processor) for m in pag_modules(base, options.pag_layers)]
            for module, processor in saved:
                module.processor = IdentityTailProcessor(processor, perturbed_rows)
            stack.callback(lambda: [setattr(m, "processor", p) for m, p in saved])
        yield
