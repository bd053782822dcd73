"""Generation defaults a model carries in its own record (e.g. the CFG its figures were measured at).

A single file holds them in its "stablekit" metadata record, a diffusers folder in model_index.json
under "_stablekit" (diffusers ignores keys starting with "_"); both as {"defaults": {"cfg": 7.0}}.
Loaded into Components.extra["defaults"]; `generate` uses them only for settings the user did not give.
"""
from __future__ import annotations

import math

from stablekit.errors import StablekitError

KNOWN = {"cfg": "CFG scale", "cfg_rescale": "CFG rescale"}  # cfg_rescale: zero-terminal-SNR models (Lin et al.)
UPPER = {"cfg_rescale": 1.0}  # the largest valid value, where there is one


def read_defaults(record: dict | None, where: str) -> dict:
    """The validated defaults of a model record ({} when it has none)."""
    raw = (record or {}).get("defaults") or {}
    if not isinstance(raw, dict):
        raise StablekitError(f"{where}: the model's recorded defaults are not a JSON object; re-save the model")
    out = {}
    for key, value in raw.items():
        if key not in KNOWN:
            continue  # a newer stablekit may record more; this one uses what it knows
        if (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
                or value > UPPER.get(key, math.inf)):
            bounds = f"in [0, {UPPER[key]:g}]" if key in UPPER else ">= 0"
            raise StablekitError(f"{where}: recorded default {KNOWN[key]} {value!r} is not a finite number {bounds}; "
                                 "re-save the model")
        out[key] = float(value)
    return out
