"""GET /object_info: every registered node described in ComfyUI's shape (server.py node_info), so
the ComfyUI frontend and API clients build graphs that validate here.

Input specs come from the node classes themselves (INPUT_TYPES with the server's Folders, so
combo lists such as ckpt_name and LoadImage's image are the files that exist now), the same
specs `stablekit.nodes.validate` checks against; nothing is described twice.
"""
from __future__ import annotations

from stablekit.nodes.registry import Folders, load_node_families

# ComfyUI's NODE_DISPLAY_NAME_MAPPINGS for the nodes stablekit has (nodes.py); the frontend shows these.
DISPLAY_NAMES = {
    "KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)",
    "CheckpointLoaderSimple": "Load Checkpoint", "VAELoader": "Load VAE", "LoraLoader": "Load LoRA",
    "ControlNetLoader": "Load ControlNet Model", "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPSetLastLayer": "CLIP Set Last Layer", "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet", "VAEDecode": "VAE Decode", "VAEEncode": "VAE Encode",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)", "SetLatentNoiseMask": "Set Latent Noise Mask",
    "EmptyLatentImage": "Empty Latent Image", "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By", "SaveImage": "Save Image", "PreviewImage": "Preview Image",
    "LoadImage": "Load Image", "LoadImageMask": "Load Image (as Mask)", "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By", "UpscaleModelLoader": "Load Upscale Model",
    "ImageUpscaleWithModel": "Upscale Image (using Model)",
}


def node_info(name: str, cls: type, folders: Folders) -> dict:
    """One node's entry: input (required/optional/hidden specs), input_order, output, output_is_list,
    output_name, name, display_name, description, python_module, category, output_node."""
    inputs = cls.INPUT_TYPES(folders)
    outputs = list(cls.RETURN_TYPES)
    return {
        "input": {kind: {k: list(v) for k, v in spec.items()} if kind != "hidden" else dict(spec)
                  for kind, spec in inputs.items()},
        "input_order": {kind: list(spec) for kind, spec in inputs.items()},
        "output": outputs,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
        "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
        "name": name,
        "display_name": DISPLAY_NAMES.get(name, name),
        "description": getattr(cls, "DESCRIPTION", "") or (cls.__doc__ or "").strip().split("\n")[0],
        "python_module": "nodes",
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }


def object_info(folders: Folders, only: str | None = None) -> dict:
    """{class_type: node_info} for every registered node, or just `only` ({} when unknown, as ComfyUI)."""
    nodes = load_node_families()
    names = [only] if only is not None else sorted(nodes)
    return {n: node_info(n, nodes[n], folders) for n in names if n in nodes}
