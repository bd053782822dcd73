"""ControlNet nodes: ControlNetApply, ControlNetApplyAdvanced (ComfyUI names, inputs and outputs).

Applying a ControlNet needs stablekit.generate.control (ControlNet units feeding the Denoiser's
residuals), which is not in the project yet: both nodes validate like ComfyUI's and then stop
with a one-line error saying so. ControlNetLoader (loaders.py) already loads the weights.
"""
from __future__ import annotations

from stablekit.errors import StablekitError
from stablekit.nodes.registry import register

NOT_YET = ("ControlNet application is not available yet in stablekit (generate/control.py has not landed); "
           "remove the {node} node, or run the workflow without ControlNet")
STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}


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
        raise StablekitError(NOT_YET.format(node="ControlNetApply"))


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
        raise StablekitError(NOT_YET.format(node="ControlNetApplyAdvanced"))
