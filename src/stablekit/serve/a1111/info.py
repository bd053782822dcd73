"""A1111's `info`: the JSON string txt2img/img2img return (modules/processing.py Processed.js, v1.10).

Built from the images themselves (each one's `parameters` text and stablekit record), so the seeds,
infotexts and model named here are exactly the ones in the PNGs.
"""
from __future__ import annotations

import json
import time

from stablekit.metadata import parse_parameters

# infotext keys Processed.js reports as fields of its own; the rest are extra_generation_params
_BASE_KEYS = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1",
              "Size-2", "Model hash", "Model", "Variation seed", "Variation seed strength", "Seed resize from-1",
              "Seed resize from-2", "Clip skip", "Version", "Face restoration", "VAE hash", "VAE"}


def build_info(plan, infotexts: list[str], seeds: list[int], subseeds: list[int], *, components=None,
               interrupted: bool = False) -> str:
    """Processed.js() as A1111 writes it: one JSON string, image-by-image lists for seeds and texts."""
    first = parse_parameters(infotexts[0]) if infotexts else {}
    s = plan.settings
    n = len(infotexts)
    extra = {k: v for k, v in first.items() if k not in _BASE_KEYS}
    obj = {
        "prompt": plan.prompt,
        "all_prompts": [plan.prompt] * n,
        "negative_prompt": s["negative_prompt"],
        "all_negative_prompts": [s["negative_prompt"]] * n,
        "seed": seeds[0] if seeds else s["seed"],
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else s["subseed"],
        "all_subseeds": subseeds,
        "subseed_strength": s["subseed_strength"],
        "width": s["width"],
        "height": s["height"],
        "sampler_name": s["sampler"],
        "scheduler": s["schedule"],
        "cfg_scale": s["cfg"],
        "steps": s["steps"],
        "batch_size": s["batch_size"],
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": getattr(components, "name", None) or first.get("Model"),
        "sd_model_hash": getattr(components, "hash", None) or first.get("Model hash"),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": s["seed_resize_from_w"] or -1,
        "seed_resize_from_h": s["seed_resize_from_h"] or -1,
        "denoising_strength": plan.strength if plan.strength is not None else (
            plan.hires.denoise if plan.hires is not None else None),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": plan.styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": s["clip_skip"],
        "is_using_inpainting_conditioning": False,
        "version": first.get("Version"),
        "interrupted": interrupted,  # stablekit's addition: the run was stopped by /interrupt
    }
    return json.dumps(obj, default=lambda o: None)
