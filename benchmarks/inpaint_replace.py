"""Inpainting on the embedded model: replace a rendered object with another shape and colour.

Renders large shapes (seed 21), masks the object's bounding box + 4 px, asks for a different
shape in a different colour on the same background, and counts with the judge how often the new
object appears (shape and colour both right) and whether every pixel outside the mask is unchanged.
In one run: the plain model with each "masked content" choice in --fills (A1111's options, as
`pipe.inpaint(..., inpaint_options=InpaintOptions(fill=...))`) and, with --inpaint-model, a
9-channel inpainting model (`stablekit train inpainting`) on the same items and seeds.

    .venv/bin/python benchmarks/inpaint_replace.py [--n 40] [--model PATH] [--inpaint-model PATH]
        [--fills original "latent noise"] [--json out.json] [--grid grid.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stablekit
from stablekit.generate.inpaint_options import InpaintOptions
from stablekit.shapes.captions import make_batch
from stablekit.shapes.edits import object_box_mask, other_color, other_shape
from stablekit.shapes.judge import Judge


def run_variant(pipe, fill: str | None, items, judge) -> tuple[dict, list[np.ndarray]]:
    """Scores of one model / fill over `items` [(image, mask, prompt, shape, colour)] and its outputs."""
    shapes = colors = hits = 0
    unchanged = True
    outs = []
    for image, mask, prompt, shape, color in items:
        settings = {} if fill is None else {"inpaint_options": InpaintOptions(fill=fill)}
        out = np.asarray(pipe.inpaint(Image.fromarray(image), mask, prompt, seed=1, **settings)[0])
        unchanged &= bool(np.array_equal(out[mask == 0], image[mask == 0]))
        got = judge.judge([out])[0]
        shapes += got["shape"] == shape
        colors += got["color"] == color
        hits += got["shape"] == shape and got["color"] == color
        outs.append(out)
    n = len(items)
    return {"new_object": hits / n, "shape": shapes / n, "colour": colors / n, "unchanged_outside_mask": unchanged,
            "n": n}, outs


def load_inpainting(path: str, base: str | None):
    """A Pipeline of a 9-channel model file / folder, or of a `stablekit train inpainting` checkpoint
    step-NNNNNN.pt (its UNet put into a 9-channel copy of `base`'s; read with weights_only)."""
    if not str(path).endswith(".pt"):
        return stablekit.load(path, progress=False)
    from stablekit.generate.pipeline import Pipeline
    from stablekit.train.checkpoint import load_checkpoint
    from stablekit.train.strategies.inpainting import to_inpainting_unet

    pipe = stablekit.load(base, progress=False)
    unet = to_inpainting_unet(pipe.components.unet)
    unet.load_state_dict(load_checkpoint(Path(path))["strategy"]["unet"])
    pipe.components.unet = unet.eval()
    return Pipeline(pipe.components, progress=False)


def grid(rows: list[list[np.ndarray]], columns: int) -> Image.Image:
    """Items as columns (the first `columns`), one row per input / variant."""
    tiles = [[r[i] for i in range(min(columns, len(r)))] for r in rows]
    return Image.fromarray(np.concatenate([np.concatenate(t, axis=1) for t in tiles], axis=0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", default=None, help="plain checkpoint (default: the embedded model)")
    ap.add_argument("--inpaint-model", default=None,
                    help="a 9-channel model (stablekit train inpainting) or a step-NNNNNN.pt checkpoint of that run")
    ap.add_argument("--fills", nargs="*", default=["original"],
                    help="masked-content choices for the plain model: original, fill, 'latent noise', 'latent nothing'")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--grid", default=None, help="write a grid: input, mask, then one row per variant (12 items)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images, _, specs = make_batch(args.n, seed=21, sizes=("large",))
    items = []
    for image, spec in zip(images, specs):
        shape, color = other_shape(spec), other_color(spec)
        items.append((image, object_box_mask(spec), f"a large {color} {shape} on a {spec.background} background",
                      shape, color))
    judge = Judge.load()
    results, rows = {}, [[it[0] for it in items], [np.repeat((it[1][..., None] * 255).astype(np.uint8), 3, 2)
                                                  for it in items]]
    plain = stablekit.load(args.model, progress=False)
    for fill in args.fills:
        label = f"plain model, masked content {fill}"
        results[label], outs = run_variant(plain, fill, items, judge)
        rows.append(outs)
        print(f"{label}: {json.dumps(results[label])}", flush=True)
    if args.inpaint_model:
        label = "inpainting model (9-channel)"
        results[label], outs = run_variant(load_inpainting(args.inpaint_model, args.model), None, items, judge)
        rows.append(outs)
        print(f"{label}: {json.dumps(results[label])}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model or "embedded", "inpaint_model": args.inpaint_model, "results": results},
                      f, indent=1)
    if args.grid:
        grid(rows, 12).save(args.grid)


if __name__ == "__main__":
    main()
