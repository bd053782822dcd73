"""The values that travel along a graph's links: MODEL, CLIP, VAE, CONDITIONING (IMAGE, MASK and
LATENT use ComfyUI's own layouts: [B, H, W, C] and [B, H, W] float tensors in [0, 1], and
{"samples": [B, C, h, w], "noise_mask"?: [B, 1, H, W]} with our scaled latents).

MODEL and CLIP are handles on one loaded Components plus the LoRAs a LoraLoader chain added, so
branches with and without a LoRA can share one model: as ComfyUI's ModelPatcher, weights are
patched when a node uses the handle (`activate`), through `stablekit.adapters.apply_adapters`,
the UNet with strength_model and the text encoder(s) with strength_clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from stablekit.components import Components

_STATE = "nodes_lora_state"  # Components.extra: ((unet loras), (text loras), AppliedAdapters | None)
_ENCODER = "nodes_prompt_encoder"
_DENOISER = "nodes_denoiser"

Lora = tuple  # (path as str, strength)


@dataclass(frozen=True)
class ModelHandle:
    components: Components = field(compare=False)
    loras: tuple = ()

    def activate(self) -> Components:
        activate(self.components, unet=self.loras)
        return self.components

    def denoiser(self):
        from stablekit.generate.denoiser import Denoiser

        c = self.components
        if _DENOISER not in c.extra:
            c.extra[_DENOISER] = Denoiser.from_components(c)
        return c.extra[_DENOISER]

    def __repr__(self) -> str:  # cache signatures never see it; error messages may
        return f"MODEL({self.components.name}, loras={list(self.loras)})"


@dataclass(frozen=True)
class ClipHandle:
    components: Components = field(compare=False)
    clip_skip: int = 1
    loras: tuple = ()

    def with_(self, **changes) -> "ClipHandle":
        return replace(self, **changes)

    def encoder(self):
        """The model's one PromptEncoder, its text encoder patched with this handle's LoRAs."""
        from stablekit.prompts.encode import PromptEncoder

        c = self.components
        activate(c, text=self.loras)
        if _ENCODER not in c.extra:
            c.extra[_ENCODER] = PromptEncoder(c)
        return c.extra[_ENCODER]


@dataclass(frozen=True)
class VaeHandle:
    components: Components = field(compare=False)  # decode/encode read .vae and its config only


@dataclass(frozen=True)
class Cond:
    """CONDITIONING: the prompt text as encoded by one CLIP (A1111 prompt syntax, as `generate`)."""

    clip: ClipHandle
    text: str
    encoded: object = field(compare=False, default=None)
    controls: tuple = ()  # ControlSpecs (nodes/control.py), in the order applied
    controls_to_uncond: bool = False  # ComfyUI's control_apply_to_uncond (set by ControlNetApply)


def _split(path: str, part: str):
    """The UNet ("unet") or text-encoder ("text") layers of a LoRA file as their own AdapterFile."""
    from stablekit.formats.lora_keys import component_of_name, load_lora_file

    adapter = load_lora_file(path)
    keep = {k: p for k, p in adapter.patches.items() if (component_of_name(k) == "unet") == (part == "unet")}
    return replace(adapter, patches=keep)


def activate(components: Components, unet: tuple | None = None, text: tuple | None = None) -> None:
    """Patch `components` so its UNet carries the `unet` LoRAs and its text encoders the `text`
    ones (None: leave that part as it is). Unchanged state costs nothing; a change restores the
    base weights exactly and applies the new set (adapters.apply_adapters)."""
    from stablekit.adapters import apply_adapters

    old_unet, old_text, applied = components.extra.get(_STATE, ((), (), None))
    unet = old_unet if unet is None else tuple(unet)
    text = old_text if text is None else tuple(text)
    if (unet, text) == (old_unet, old_text):
        return
    if applied is not None:
        applied.remove()
    components.extra[_STATE] = ((), (), None)  # the base weights, until the new set is applied
    items = [(_split(p, "unet"), s) for p, s in unet if s] + [(_split(p, "text"), s) for p, s in text if s]
    items = [(a, s) for a, s in items if a.patches]
    components.extra[_STATE] = (unet, text, apply_adapters(components, items) if items else None)
    if text != old_text and _ENCODER in components.extra:
        components.extra[_ENCODER].clear_cache()  # its cache holds encodings of the old weights
