"""A1111's txt2img / img2img request fields: their defaults, their types, and one normalising pass.

The defaults are those of A1111's API models (modules/api/models.py builds them from
StableDiffusionProcessingTxt2Img/Img2Img's __init__ plus the API's extra keys, v1.10). As there,
every field may be null (null means the default) and unknown keys are ignored. Types are coerced
as pydantic's lax mode does ("5" and 5.0 for an int, 1 for a float, "true" for a bool); anything
else is a one-line PayloadError (HTTP 422) naming the field.
"""
from __future__ import annotations

import math

from stablekit.errors import StablekitError


class PayloadError(StablekitError):
    """A request A1111 would refuse (or stablekit cannot honour): HTTP `status` with a one-line message."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


COMMON = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None,
    "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512,
    "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False,
    "eta": None, "denoising_strength": None, "s_min_uncond": None, "s_churn": None, "s_tmax": None,
    "s_tmin": None, "s_noise": None, "override_settings": None, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False,
    "firstpass_image": None, "comments": None,
    # the API's own keys
    "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {}, "force_task_id": None, "infotext": None,
}
TXT2IMG = {
    **COMMON, "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0,
    "hr_upscaler": None, "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
    "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "",
}
IMG2IMG = {
    **COMMON, "init_images": None, "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": None,
    "mask": None, "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None, "mask_round": True,
    "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None, "latent_mask": None, "include_init_images": False,
}
DEFAULTS = {"txt2img": TXT2IMG, "img2img": IMG2IMG}

_INT = {"seed", "subseed", "seed_resize_from_h", "seed_resize_from_w", "batch_size", "n_iter", "steps", "width",
        "height", "firstphase_width", "firstphase_height", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
        "resize_mode", "mask_blur_x", "mask_blur_y", "mask_blur", "inpainting_fill", "inpaint_full_res_padding",
        "inpainting_mask_invert"}
_FLOAT = {"subseed_strength", "cfg_scale", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax",
          "s_tmin", "s_noise", "refiner_switch_at", "hr_scale", "image_cfg_scale", "initial_noise_multiplier"}
_BOOL = {"restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
         "disable_extra_networks", "send_images", "save_images", "enable_hr", "mask_round", "inpaint_full_res",
         "include_init_images"}
_LIST = {"styles", "script_args", "init_images"}
_DICT = {"override_settings", "alwayson_scripts", "comments"}
# everything else with a default is text (prompts, names, base64 images)


def normalize(kind: str, body) -> dict:
    """The request with A1111's defaults filled in and every known field coerced to its type
    (unknown keys dropped, as A1111's pydantic model does): what the response echoes as
    `parameters` and what the queued job carries."""
    if not isinstance(body, dict):
        raise PayloadError(f"the {kind} request must be a JSON object (got {type(body).__name__})")
    out = {}
    for name, default in DEFAULTS[kind].items():
        value = body.get(name)
        out[name] = default if value is None else coerce(name, value)
    return out


def coerce(name: str, value):
    """One field's value as its A1111 type; a PayloadError names the field and the value."""
    if name in _INT:
        return _as_int(name, value)
    if name in _FLOAT:
        return _as_float(name, value)
    if name in _BOOL:
        return _as_bool(name, value)
    if name in _LIST:
        if not isinstance(value, list):
            raise PayloadError(f"{name} must be a list (got {_show(value)})")
        return value
    if name in _DICT:
        if not isinstance(value, dict):
            raise PayloadError(f"{name} must be an object (got {_show(value)})")
        return value
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a string (got {_show(value)})")
    return value


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise PayloadError(f"{name} must be a whole number (got {value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise PayloadError(f"{name} must be a whole number (got {_show(value)})")


def _as_float(name: str, value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
    else:
        number = math.nan
    if not math.isfinite(number):
        raise PayloadError(f"{name} must be a finite number (got {_show(value)})")
    return number


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise PayloadError(f"{name} must be true or false (got {_show(value)})")
