"""A1111's "parameters" text (the infotext), written and read exactly as the web UI does.

Format (A1111 `modules/processing.py` `create_infotext`, v1.10):

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>        (omitted when the negative is empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The last line is "Key: value" pairs joined by ", "; a value containing a comma, colon, newline
or double quote is written as a JSON string. Reading follows A1111 `modules/infotext_utils.py`
`parse_generation_parameters`: the last line counts as parameters only if it holds at least three
pairs, every prompt line is stripped, values stay strings, and "WxH" values are split into
"Key-1" / "Key-2".
"""
from __future__ import annotations

import json
import re

from stablekit.errors import StablekitError

# The keys A1111 fills itself, in its order; anything else (A1111's extra_generation_params:
# hires fix, LoRA hashes, ...) follows in the caller's order, then Version and User.
A1111_KEY_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed",
    "Face restoration", "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA",
    "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Seed resize from",
    "Denoising strength", "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio",
    "Token merging ratio hr", "Init image hash", "RNG", "NGMS", "Tiling",
)
A1111_LAST_KEYS = ("Version", "User")
PROMPT_KEYS = ("Prompt", "Negative prompt")

# A1111's re_param: a key, ":", then a JSON-quoted string or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_KEY = re.compile(r"\w[\w \-/]+")
_NEGATIVE = "Negative prompt:"


def quote(value) -> str:
    """A value as A1111 writes it: JSON-quoted if it holds , : newline or ".

    A1111 quotes on , : and newline only; we also quote on '"' so that a value starting with a
    quote reads back unchanged. A1111's reader unquotes both forms.
    """
    text = _plain(value)
    if any(ch in text for ch in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _plain(value) -> str:
    # Whole floats print as ints ("CFG scale: 7"), as the A1111 UI writes them.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"  # (width, height)
    return str(value)


def format_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """The A1111 "parameters" text for a prompt, a negative prompt and "Key": value settings.

    settings uses A1111's key names ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
    "Size" as "WxH" or (w, h), "Model hash", "Model", "Clip skip", ...). None values are left out,
    "Clip skip" of 1 or less is left out (as A1111), "Key-1"/"Key-2" pairs (what
    `parse_parameters` returns for sizes) are joined back into "Key: AxB", and "Prompt" /
    "Negative prompt" keys are ignored, so `format_parameters(d["Prompt"], d["Negative prompt"], d)`
    works on a parsed dict.
    """
    merged = _join_sizes(settings)
    ordered = [k for k in A1111_KEY_ORDER if k in merged]
    ordered += [k for k in merged if k not in A1111_KEY_ORDER and k not in A1111_LAST_KEYS]
    ordered += [k for k in A1111_LAST_KEYS if k in merged]
    pairs = []
    for key in ordered:
        value = merged[key]
        if value is None or (key == "Clip skip" and _at_most_one(value)):
            continue
        if not _KEY.fullmatch(key):
            raise StablekitError(f"infotext key {key!r} cannot be read back by A1111; use letters, digits, spaces, '-' or '/' (at least 2 characters)")
        pairs.append(key if key == value else f"{key}: {quote(value)}")
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def _join_sizes(settings: dict) -> dict:
    merged: dict = {}
    for key, value in settings.items():
        if key in PROMPT_KEYS or key.endswith("-2") and key[:-2] + "-1" in settings:
            continue
        if key.endswith("-1") and key[:-2] + "-2" in settings:
            merged[key[:-2]] = f"{value}x{settings[key[:-2] + '-2']}"
        else:
            merged[key] = value
    return merged


def _at_most_one(value) -> bool:
    try:
        return float(value) <= 1
    except (TypeError, ValueError):
        return False


def parse_parameters(text: str) -> dict:
    """Read an A1111 "parameters" text into {"Prompt", "Negative prompt", "Key": "value", ...}.

    Values are strings, as in A1111; "WxH" values become "Key-1" and "Key-2" ("Size-1": "512").
    Unlike A1111 this adds none of the web UI's paste defaults (a missing "Clip skip" means 1, a
    missing "Schedule type" means Automatic) and accepts Windows line endings.
    """
    lines = text.replace("\r\n", "\n").strip().split("\n")
    *lines, last = lines
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        # As A1111: a newline joins lines only once the text is non-empty.
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    result: dict = {"Prompt": prompt, "Negative prompt": negative}

    for key, value in _PARAM.findall(last):
        if not value:  # A1111 fails on an empty value and skips the pair
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = _IMAGE_SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result
