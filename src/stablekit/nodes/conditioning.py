"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer (ComfyUI names, inputs and outputs).

The text follows stablekit's (A1111's) prompt syntax, as `stablekit generate` reads it: for plain
text and for (word:1.2) weights the tokens are the same as ComfyUI's; the weighting math is
A1111's (mean restored), and [a:b:when] is prompt editing, which ComfyUI does not have.
"""
from __future__ import annotations

from stablekit.nodes.registry import register
from stablekit.nodes.values import Cond


@register
class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, text):
        encoder = clip.encoder()
        return (Cond(clip, text, encoder.encode(text, clip.clip_skip)),)


@register
class CLIPSetLastLayer:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"clip": ("CLIP",),
                             "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    def set_last_layer(self, clip, stop_at_clip_layer):
        # -1 = the last layer = A1111's clip skip 1; -2 = clip skip 2 (hidden state + final norm, as both do)
        return (clip.with_(clip_skip=-stop_at_clip_layer),)
