"""A1111's settings (`/sdapi/v1/options`) and prompt styles, kept under the server's data folder.

Options live in DATA_DIR/a1111/config.json (A1111's config.json): every key a client POSTs is
kept, as A1111 keeps unknown keys; the ones stablekit acts on are `sd_model_checkpoint` (switches
the current checkpoint, loading it first, so a bad name or file is refused), `CLIP_stop_at_last_layers`
(clip skip of requests that set none) and `show_progress_every_n_steps` (live previews). Styles
are A1111's styles.csv (name,prompt,negative_prompt) in the data folder.
"""
from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

from stablekit.serve.a1111.fields import PayloadError

_LOCK = threading.Lock()

# The A1111 options clients read most, with A1111's defaults; values stablekit cannot change are
# reported as they are (sd_vae "Automatic": the checkpoint's own VAE).
DEFAULTS = {
    "sd_model_checkpoint": None,  # filled from the model manager
    "sd_checkpoint_hash": None,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "show_progress_every_n_steps": 10,
    "live_previews_enable": True,
    "live_previews_image_format": "png",
    "samples_format": "png",
    "samples_save": True,
    "enable_pnginfo": True,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": True,
    "outdir_samples": "",
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
    "sd_checkpoints_limit": 2,
    "img2img_fix_steps": False,
    "face_restoration": False,
    "tiling": False,
    "upscaler_for_img2img": None,
    "hires_fix_use_firstpass_conds": False,
    "randn_source": "GPU",
}
# the keys stablekit cannot honour with another value: a clear 422 instead of a silent no-op
FIXED = {"sd_vae": ("Automatic", "None"), "eta_noise_seed_delta": (0,), "face_restoration": (False,),
         "tiling": (False,), "img2img_fix_steps": (False,), "randn_source": ("GPU", "CPU")}


def _path(state) -> Path:
    return Path(state.settings.data_dir) / "a1111" / "config.json"


def _stored(state) -> dict:
    path = _path(state)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def get_options(state) -> dict:
    """Every option: A1111's defaults, what clients stored, the current checkpoint."""
    models = state.models
    title = models.title(models.current_name)
    return {**DEFAULTS, **_stored(state), "sd_model_checkpoint": title, "sd_checkpoint_hash": None}


def check_fixed(key: str, value) -> None:
    """A PayloadError for a value stablekit cannot honour (e.g. another VAE, tiling)."""
    if key in FIXED and value not in FIXED[key]:
        raise PayloadError(f"option {key}={value!r} is not supported by stablekit; allowed: "
                           f"{', '.join(map(repr, FIXED[key]))}")


def set_options(state, changes: dict) -> None:
    """Store options; `sd_model_checkpoint` switches (and loads) the current checkpoint first, so
    an unknown name changes nothing (A1111 refuses it too)."""
    if not isinstance(changes, dict):
        raise PayloadError("the options must be a JSON object of option names and values")
    for key, value in changes.items():
        check_fixed(key, value)
    if "CLIP_stop_at_last_layers" in changes:
        clip_skip(changes)
    if changes.get("sd_model_checkpoint") is not None:
        name = resolve_checkpoint(state, changes["sd_model_checkpoint"])
        state.models.set_current(name)
    with _LOCK:
        data = _stored(state)
        data.update({k: v for k, v in changes.items() if k not in ("sd_model_checkpoint", "sd_checkpoint_hash")})
        path = _path(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def resolve_checkpoint(state, name) -> str:
    """A checkpoint name as A1111 clients send it (title, file name, name without extension) ->
    the model manager's file name; unknown names are HTTP 404 as in A1111, listing the choices."""
    from stablekit.errors import StablekitError

    if not isinstance(name, str):
        raise PayloadError(f"sd_model_checkpoint must be a checkpoint title (got {name!r})")
    try:
        return state.models.resolve_name(name)
    except StablekitError as exc:
        raise PayloadError(str(exc), status=404) from None


def clip_skip(options: dict) -> int:
    """A1111's CLIP_stop_at_last_layers as stablekit's clip_skip (a whole number >= 1)."""
    value = options.get("CLIP_stop_at_last_layers", 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
        raise PayloadError(f"CLIP_stop_at_last_layers must be a whole number >= 1 (got {value!r})")
    return int(value)


def read_styles(state) -> dict[str, tuple[str, str]]:
    """name -> (prompt, negative_prompt) from DATA_DIR/styles.csv (A1111's file; absent: none)."""
    path = Path(state.settings.data_dir) / "styles.csv"
    if not path.is_file():
        return {}
    styles = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = (row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def apply_style(text: str, style: str) -> str:
    """A1111's apply_styles_to_prompt for one style: "{prompt}" in the style is replaced by the
    prompt, else the style is appended after ", "."""
    if "{prompt}" in style:
        return style.replace("{prompt}", text)
    if not style.strip():
        return text
    return f"{text}, {style}" if text.strip() else style


def apply_styles(state, prompt: str, negative: str, names: list) -> tuple[str, str]:
    """The prompts with the named styles applied in order; unknown names are skipped, as in A1111."""
    if not names:
        return prompt, negative
    styles = read_styles(state)
    for name in names:
        if isinstance(name, str) and name in styles:
            prompt = apply_style(prompt, styles[name][0])
            negative = apply_style(negative, styles[name][1])
    return prompt, negative
