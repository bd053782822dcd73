"""Prompt adherence and diversity of images generated for a fixed prompt set.

- adherence: mean over prompts of the fraction of the attributes the prompt names that the
  judge finds in its image; per-attribute accuracy over the prompts that name the attribute.
- diversity: for each optional attribute, over the prompts that leave it out, the entropy of
  the values the judge reads in their images divided by log(number of possible values); overall
  = mean over attributes. One image per prompt, so this measures variety across the set (a model
  that always draws a left-out attribute the same way scores 0). Images where the judge finds no
  object do not count towards diversity.
- abstentions: the judge's `abstained` reasons counted (no object, object in the background's
  colour, shape unrecognised); each is a miss for the attributes it leaves None, and
  `abstention_grid` shows them all so a reader can check them by eye.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm
from PIL import Image, ImageDraw

from stablekit.errors import StablekitError
from stablekit.shapes.captions import ATTRIBUTES, OPTIONAL_ATTRIBUTES
from stablekit.shapes.prompts import PromptItem, load_prompt_set
from stablekit.shapes.render import BASE_SHAPES, COLORS, POSITIONS, SIZES

# Values a left-out attribute can take in the base world: the diversity denominator.
POSSIBLE_VALUES = {"size": tuple(SIZES), "color": COLORS, "background": COLORS,
                   "position": tuple(POSITIONS), "shape": BASE_SHAPES}


def normalized_entropy(values: Sequence, n_possible: int) -> float:
    """Entropy of the empirical distribution of `values` divided by log(n_possible), in [0, 1]."""
    values = [v for v in values if v is not None]
    if not values or n_possible < 2:
        return 0.0
    p = np.asarray(list(Counter(values).values()), dtype=np.float64) / len(values)
    return float(-(p * np.log(p)).sum() / math.log(n_possible))


def evaluate_images(items: Sequence[PromptItem], images, judge=None) -> dict:
    """Score images (one per item, same order) against their prompts; returns the report dict.

    `judge` defaults to the shipped Judge. The report holds adherence, per-attribute accuracy
    and diversity, plus one record per item with what the judge saw.
    """
    from stablekit.shapes.judge import Judge

    if len(items) != len(images):
        raise StablekitError(f"{len(items)} prompts but {len(images)} images; pass one image per prompt")
    judge = judge or Judge.load()
    found = judge.judge(list(images) if not isinstance(images, np.ndarray) else images)
    per_item, scores = [], []
    hits = {a: [] for a in ATTRIBUTES + ("hollow",)}
    for item, f in zip(items, found):
        ok = {a: f.get(a) == v for a, v in item.named.items()}
        for a, v in ok.items():
            hits[a].append(v)
        scores.append(sum(ok.values()) / len(ok))
        per_item.append({"id": item.id, "prompt": item.prompt, "seed": item.seed,
                         "named": dict(item.named), "score": scores[-1],
                         "judged": {a: f.get(a) for a in ATTRIBUTES + ("hollow",)},
                         "shape_confidence": round(float(f.get("shape_confidence", 0.0)), 4),
                         "abstained": f.get("abstained")})
    diversity = {}
    for a in OPTIONAL_ATTRIBUTES:
        shown = [f.get(a) for item, f in zip(items, found) if a not in item.named]
        if shown:
            # a value outside the base world (e.g. the judge reading teal) widens the support, so
            # the fraction stays <= 1 instead of crediting an off-domain answer as extra diversity
            # (an abstention, None, is no value: it neither counts nor widens the support)
            seen = {v for v in shown if v is not None}
            diversity[a] = normalized_entropy(shown, len(set(POSSIBLE_VALUES[a]) | seen))
    return {
        "n": len(items),
        "adherence": float(np.mean(scores)) if scores else 0.0,
        "accuracy": {a: float(np.mean(v)) for a, v in hits.items() if v},
        "named_count": {a: len(v) for a, v in hits.items() if v},
        "diversity": diversity,
        "diversity_overall": float(np.mean(list(diversity.values()))) if diversity else 0.0,
        "left_out_count": {a: sum(a not in it.named for it in items) for a in OPTIONAL_ATTRIBUTES},
        "no_object": sum(f.get("abstained") == "no object" for f in found),
        "background_colour_object": sum(f.get("abstained") == "object in background colour" for f in found),
        "abstained": dict(Counter(f["abstained"] for f in found if f.get("abstained"))),
        "abstained_total": sum(bool(f.get("abstained")) for f in found),
        "shape_by_named_size": _shape_by_named_size(items, found),
        "items": per_item,
    }


def _shape_by_named_size(items: Sequence[PromptItem], found: list[dict]) -> dict:
    """Shape accuracy over the prompts that name each size ("small-object shape" in the spec)."""
    out = {}
    for size in SIZES:
        hits = [f.get("shape") == it.named["shape"] for it, f in zip(items, found) if it.named.get("size") == size]
        if hits:
            out[size] = float(np.mean(hits))
    return out


def _call_generate(generate_fn: Callable, prompts, seeds, steps, sampler) -> list:
    """Call generate_fn(prompts, seeds), passing steps= and sampler= when it accepts them."""
    params = inspect.signature(generate_fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("steps", steps), ("sampler", sampler))
              if takes_kwargs or k in params}
    return list(generate_fn(prompts, seeds, **kwargs))


def evaluate_model(generate_fn: Callable, steps: int = 20, sampler: str | None = None,
                   prompt_set: str = "eval-v1", out_dir: str | Path | None = None,
                   batch_size: int = 8, limit: int | None = None, judge=None,
                   label: str = "", log=print, meta: dict | None = None) -> dict:
    """Generate one image per prompt of `prompt_set` and score them (see evaluate_images).

    `generate_fn(prompts, seeds)` returns one 64x64 image (PIL or uint8 array) per prompt; it
    also receives steps= and sampler= if its signature takes them. `limit` uses only the first
    prompts (for smoke tests; the figure is then not the benchmark's). `meta` (e.g. the CFG
    scale) is stored in the report as given. With `out_dir`, writes the report files there.
    """
    items = load_prompt_set(prompt_set)[:limit]
    images, t0 = [], time.time()
    for s in tqdm(range(0, len(items), batch_size), desc="eval", unit="batch", dynamic_ncols=True):
        chunk = items[s:s + batch_size]
        out = _call_generate(generate_fn, [i.prompt for i in chunk], [i.seed for i in chunk], steps, sampler)
        if len(out) != len(chunk):
            raise StablekitError(f"generate_fn returned {len(out)} images for {len(chunk)} prompts; "
                                 f"it must return one per prompt")
        images.extend(np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in out)
        if log:
            log(f"generated {len(images)}/{len(items)} ({time.time() - t0:.0f} s)")
    report = evaluate_images(items, np.stack(images), judge=judge)
    report.update(prompt_set=prompt_set, steps=steps, sampler=sampler, label=label,
                  limit=limit, generation_seconds=round(time.time() - t0, 1), **(meta or {}))
    if out_dir is not None:
        write_report(report, images, items, out_dir)
    return report


def markdown_table(report: dict) -> str:
    """The report's headline figures as a Markdown table."""
    lines = [f"# Shapes-world evaluation {report.get('label', '')}".rstrip(), "",
             f"prompt set `{report.get('prompt_set', '?')}` ({report['n']} prompts), "
             f"steps {report.get('steps', '?')}, sampler {report.get('sampler') or 'default'}", "",
             "| attribute | accuracy (named) | prompts naming it | diversity (left out) | prompts leaving it out |",
             "|---|---|---|---|---|"]
    for a in ATTRIBUTES:
        acc = report["accuracy"].get(a)
        div = report["diversity"].get(a)
        lines.append(f"| {a} | {'' if acc is None else f'{acc:.3f}'} | {report['named_count'].get(a, 0)} | "
                     f"{'' if div is None else f'{div:.3f}'} | {report['left_out_count'].get(a, 0)} |")
    by_size = report.get("shape_by_named_size", {})
    lines += ["", f"**prompt adherence {report['adherence']:.3f}**, "
                  f"**diversity {report['diversity_overall']:.3f}**, "
                  + ", ".join(f"shape when {k} is named {v:.3f}" for k, v in by_size.items()), "",
              f"abstained on {report.get('abstained_total', 0)} of {report['n']} images: "
              + (", ".join(f"{k} {v}" for k, v in sorted(report.get("abstained", {}).items())) or "none")
              + f" (no object {report['no_object']}, object in background colour "
                f"{report.get('background_colour_object', 0)})", ""]
    return "\n".join(lines)


def sample_grid(images: Sequence[np.ndarray], items: Sequence[PromptItem], report: dict,
                scale: int = 2) -> Image.Image:
    """Rows = base shapes, columns = object colors; each cell is the first prompt naming both
    (blank if none). Green frame: the judge found every named attribute; red: it did not."""
    cell, margin = 64 * scale + 6, 60
    colors = list(COLORS)
    height = 16 + cell * len(BASE_SHAPES)
    grid = Image.new("RGB", (margin + cell * len(colors), height + 16), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, height + 2), "rows: shape, columns: color named in the prompt; frame green = the judge "
              f"found every named attribute, red = it missed one. Adherence {report['adherence']:.3f}",
              fill="black")
    for c, name in enumerate(colors):
        draw.text((margin + c * cell + 4, 2), name, fill="black")
    for r, shape in enumerate(BASE_SHAPES):
        draw.text((4, 16 + r * cell + cell // 2 - 6), shape, fill="black")
        for c, color in enumerate(colors):
            k = next((k for k, it in enumerate(items)
                      if it.named.get("shape") == shape and it.named.get("color") == color), None)
            if k is None:
                continue
            x, y = margin + c * cell, 16 + r * cell
            ok = report["items"][k]["score"] == 1.0
            draw.rectangle([x, y, x + cell - 3, y + cell - 3], fill=(40, 170, 70) if ok else (220, 40, 40))
            tile = Image.fromarray(np.asarray(images[k], dtype=np.uint8)).resize((64 * scale,) * 2, Image.NEAREST)
            grid.paste(tile, (x + 2, y + 2))
    return grid


def abstention_grid(images: Sequence[np.ndarray], report: dict, scale: int = 2, cols: int = 8,
                    limit: int = 96) -> Image.Image:
    """Every image the judge abstained on (up to `limit`), with the reason, the shape confidence
    and the prompt, so the abstentions can be checked by eye."""
    recs = [(k, r) for k, r in enumerate(report["items"]) if r.get("abstained")][:limit]
    cell_w, text_h = 64 * scale + 8, 40
    rows = max(1, (len(recs) + cols - 1) // cols)
    grid = Image.new("RGB", (cell_w * cols, (64 * scale + text_h) * rows + 18), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), f"{report.get('abstained_total', 0)} abstentions of {report['n']} images "
              f"({', '.join(f'{k} {v}' for k, v in sorted(report.get('abstained', {}).items())) or 'none'})",
              fill="black")
    short = {"shape unrecognised": "unrecognised", "object in background colour": "bg colour",
             "no object": "no object"}
    for n, (k, r) in enumerate(recs):
        x, y = (n % cols) * cell_w + 4, 18 + (n // cols) * (64 * scale + text_h)
        tile = Image.fromarray(np.asarray(images[k], dtype=np.uint8)).resize((64 * scale,) * 2, Image.NEAREST)
        grid.paste(tile, (x, y))
        words = r["prompt"].split()
        draw.text((x, y + 64 * scale + 1), f"{short.get(r['abstained'], r['abstained'])} "
                  f"p={r.get('shape_confidence', 0):.2f}", fill=(200, 0, 0))
        draw.text((x, y + 64 * scale + 13), " ".join(words[:4])[:22], fill="black")
        draw.text((x, y + 64 * scale + 25), " ".join(words[4:])[:22], fill="black")
    return grid


def write_report(report: dict, images, items, out_dir: str | Path) -> Path:
    """Write report.json, report.md, grid.png, abstentions.png and images.npz into out_dir;
    returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown_table(report))
    # the images themselves, so a changed judge can re-score them without generating again
    np.savez_compressed(out / "images.npz", images=np.stack([np.asarray(im, dtype=np.uint8) for im in images]))
    sample_grid(images, items, report).save(out / "grid.png")
    abstention_grid(images, report).save(out / "abstentions.png")
    return out


def rescore(folder: str | Path, out_dir: str | Path | None = None, judge=None) -> dict:
    """Judge again the images an earlier evaluation saved (images.npz + report.json in `folder`)
    with the current judge, e.g. after the judge changed; writes the report to `out_dir`
    (default: `folder`, overwritten) and returns it."""
    folder = Path(folder)
    if not (folder / "images.npz").exists() or not (folder / "report.json").exists():
        raise StablekitError(f"{folder} has no images.npz and report.json; "
                             f"point to the --out folder of an earlier `stablekit shapes eval`")
    old = json.loads((folder / "report.json").read_text())
    with np.load(folder / "images.npz") as z:
        images = z["images"]
    items = load_prompt_set(old.get("prompt_set", "eval-v1"))[:len(images)]
    report = evaluate_images(items, images, judge=judge)
    report.update({k: old.get(k) for k in ("prompt_set", "steps", "sampler", "label", "limit",
                                             "generation_seconds", "cfg", "backend")})
    write_report(report, list(images), items, out_dir or folder)
    return report


def model_generate_fn(model_path: str | None = None, cfg: float | None = None, **load_kwargs) -> Callable:
    """A generate_fn over `stablekit.load(model_path)` (None: the embedded model): one 64x64
    image per (prompt, seed)."""
    try:
        from stablekit import load
    except ImportError as exc:
        raise StablekitError("stablekit.load is not available yet in this build; "
                             "evaluate with evaluate_model(your_generate_fn) instead") from exc
    load_kwargs.setdefault("progress", False)  # one bar per image would bury the evaluation's own
    pipe = load(model_path, **load_kwargs) if model_path else load(**load_kwargs)

    def generate(prompts, seeds, steps=20, sampler=None):
        extra = {"cfg": cfg} if cfg is not None else {}
        if sampler:
            extra["sampler"] = sampler
        return [pipe.generate(p, seed=s, steps=steps, width=64, height=64, **extra)[0]
                for p, s in zip(prompts, seeds)]

    return generate
