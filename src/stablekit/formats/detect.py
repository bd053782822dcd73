"""Which architecture an LDM single file holds, from its key names (and one tensor for SD 2.x).

Rules, in order (prefixes as written by the original CompVis / Stability code):
  conditioner.embedders.1.model.*          -> sdxl (SDXL base: CLIP-L + OpenCLIP bigG)
  conditioner.embedders.0.model.* only     -> SDXL refiner (not supported)
  cond_stage_model.model.*                 -> SD 2.x (OpenCLIP ViT-H); v-prediction ("sd2-v") if a
      `v_pred` key is present, else by ComfyUI's test: the std of
      output_blocks.11.1.transformer_blocks.0.norm1.bias is above 0.09 in v-models
  cond_stage_model.transformer.*           -> sd1 (OpenAI CLIP ViT-L)
The UNet's first convolution gives the model kind: 4 input channels is text-to-image, 9 an
inpainting model (latents + mask + masked-image latents: runwayml's SD 1.5, SD 2 and SDXL
inpainting), loaded with the same config and in_channels = 9; any other count (instruct-pix2pix's
8, a depth model's 5) is refused. 512 vs 768 cannot be told from weights: "sd2" is 2.x-base (512, epsilon), "sd2-v" is
2.x (768, v); override with arch= / prediction_type=.
"""
from __future__ import annotations

import torch

from stablekit.errors import StablekitError

_V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"
INPAINT_CHANNELS = 9  # as generate/inpaint_unet.py (not imported: formats/ stays below generate/)
KNOWN_CHANNELS = {8: "an instruct-pix2pix model", 5: "a depth-conditioned model (SD 2 depth)"}


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_arch(weights) -> tuple[str, str | None]:
    """(arch, prediction_type or None) of an LDM file; one-line StablekitError if unknown."""
    keys = weights.keys()
    family = detect_family(weights.path, keys)
    unet_in_channels(weights)  # 4 or 9, else refused before anything is read
    if family == "sdxl":
        return "sdxl", "v_prediction" if "v_pred" in weights else None
    if family == "sd2":
        return ("sd2-v", None) if is_v_model(weights) else ("sd2", None)
    return "sd1", "v_prediction" if "v_pred" in weights else None


def unet_in_channels(weights) -> int:
    """The UNet's input channels from its first convolution: 4 (text-to-image) or 9 (inpainting);
    a file without that tensor counts as 4 (the key check names what is missing). Others: one line."""
    if FIRST_CONV not in weights or len(weights.shape(FIRST_CONV)) != 4:
        return 4
    channels = int(weights.shape(FIRST_CONV)[1])
    if channels not in (4, INPAINT_CHANNELS):
        kind = KNOWN_CHANNELS.get(channels, "not a model kind stablekit knows")
        raise StablekitError(
            f"{weights.path}: the UNet takes {channels} input channels ({kind}); stablekit loads text-to-image "
            f"(4 channels) and inpainting (9 channels) checkpoints")
    return channels


def detect_family(path, keys) -> str:
    """"sd1", "sd2" or "sdxl" from key prefixes alone."""
    if _has_prefix(keys, "conditioner.embedders.1.model."):
        return "sdxl"
    if _has_prefix(keys, "conditioner.embedders.0.model."):
        raise StablekitError(f"{path}: an SDXL refiner (or an SD 2.x file in sgm layout); only SDXL base, SD 1.x and 2.x are supported")
    if _has_prefix(keys, "cond_stage_model.model."):
        return "sd2"
    if _has_prefix(keys, "cond_stage_model.transformer."):
        return "sd1"
    if _has_prefix(keys, "model.diffusion_model."):
        raise StablekitError(
            f"{path}: has a UNet (model.diffusion_model.*) but no text encoder (cond_stage_model.* or "
            "conditioner.embedders.*); UNet-only files are not supported, use a full checkpoint")
    if any(k.removeprefix("control_model.").startswith(("zero_convs.", "controlnet_cond_embedding.")) for k in keys):
        raise StablekitError(f"{path}: a ControlNet, not a Stable Diffusion model; use it as a ControlNet "
                             "beside a model (stablekit.formats.controlnet.load_controlnet)")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise StablekitError(
        f"{path}: unknown checkpoint layout (no model.diffusion_model./cond_stage_model./conditioner. keys; "
        f"first keys: {sample}); stablekit loads SD 1.x, SD 2.x and SDXL base checkpoints")


def is_v_model(weights) -> bool:
    """SD 2.x v-prediction test (a `v_pred` marker key, else ComfyUI's norm-bias statistic)."""
    if "v_pred" in weights:
        return True
    if _V_PROBE not in weights:
        return False
    bias = weights.get(_V_PROBE, torch.float32)
    return bool(torch.std(bias, unbiased=False) > 0.09)
