"""`stablekit generate --prompts FILE`: many prompts in one run, split across processes.

FILE holds one prompt per line, or JSON objects (JSONL: one per line) with "prompt" and any
generate() settings for that line ("negative_prompt", "steps", "cfg", "sampler", "seed", "width",
"batch_size", "deepcache", ...); blank lines and lines starting with "#" are skipped. The command
line's settings apply to every line and a line's own settings override them.

Seeds and file names are fixed by the file alone, before any work is split, so that an image has
the same seed and name however many processes run (`accelerate launch --num_processes N -m
stablekit generate --prompts FILE`): a line without a seed takes base + (number of images before
it), where base is --seed or, without one, a number derived from the file's bytes (every process
must agree on it, and they cannot share a random one). Images are numbered in file order from
the folder's next free A1111 number, agreed on by every process before any of them writes, and
named `NNNNN-SEED.EXT`. Lines go to processes round-robin (line i to process i mod N).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stablekit.errors import StablekitError


@dataclass
class PromptJob:
    """One line of the file: its prompt and settings, first seed and first image number (offset)."""

    line: int  # 1-based line number in the file
    prompt: str
    settings: dict
    seed: int
    first_image: int  # images before this line, in file order
    images: int  # batch_size * batch_count


def read_prompt_file(path, allowed: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, {"prompt": ..., settings...}) per non-empty line; bad lines are one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StablekitError(f"cannot read --prompts file {path}: {exc}") from None
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            entries.append((n, {"prompt": line}))
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise StablekitError(f"{path}:{n}: not valid JSON ({exc}); write one JSON object or one prompt per line")
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise StablekitError(f"{path}:{n}: a JSON line needs a \"prompt\" text, e.g. {{\"prompt\": \"a red circle\"}}")
        unknown = sorted(set(entry) - set(allowed) - {"prompt"})
        if unknown:
            raise StablekitError(f"{path}:{n}: unknown setting {unknown[0]!r}; use one of: prompt, {', '.join(allowed)}")
        entries.append((n, entry))
    if not entries:
        raise StablekitError(f"--prompts file {path} has no prompts (one per line, or JSON lines with \"prompt\")")
    return entries


def file_seed(path) -> int:
    """The base seed of a file run without --seed: from the file's bytes, so every process agrees."""
    return int.from_bytes(hashlib.sha256(Path(path).read_bytes()).digest()[:4], "little") % (2**31)


def plan_jobs(entries: list[tuple[int, dict]], common: dict, base_seed: int) -> list[PromptJob]:
    """Every line's job, in file order, with its seeds and image numbers fixed (see the module doc)."""
    jobs, count = [], 0
    for n, entry in entries:
        settings = {**common, **{k: v for k, v in entry.items() if k != "prompt"}}
        seed = settings.pop("seed", None)
        if seed is None or seed == -1:
            seed = base_seed + count
        images = int(settings.get("batch_size", 1)) * int(settings.get("batch_count", 1))
        jobs.append(PromptJob(n, entry["prompt"], settings, int(seed), count, images))
        count += images
    return jobs


def my_share(jobs: list[PromptJob], rank: int, world: int) -> list[PromptJob]:
    """The jobs of process `rank` of `world`: lines round-robin."""
    return jobs[rank::world]


def image_name(start: int, job: PromptJob, k: int, ext: str) -> str:
    """The file name of image k of a job: NNNNN-SEED.EXT, numbered in file order from `start`."""
    return f"{start + job.first_image + k:05d}-{job.seed + k}{ext}"
