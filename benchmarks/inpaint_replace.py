"""Inpainting on the embedded model: replace a rendered object with another shape and colour.

Renders large shapes (seed 21), masks the object's bounding box + 4 px, asks for a different
shape in a different colour on the same background, and counts with the judge how often the new
object appears (shape and colour both right) and whether every pixel outside the mask is unchanged.
In one run: the plain model with each "masked content" choice in --fills (A1111's options, as
`pipe.inpaint(..., inpaint_options=InpaintOptions(fill=...))`) and, with --inpaint-model, a
9-channel inpainting model (`stablekit train inpainting`) on the same items and seeds.

    .venv/bin/python benchmarks/inpaint_replace.py [--n 40] [--model PATH] [--inpaint-model PATH]
        [--fills original "latent noise"] [--only-masked 0 8] [--json out.json] [--grid grid.png]

--only-masked runs every model (plain and each 9-channel variant) with A1111's "Only masked" too;
`--fills` with no value leaves out the plain model's rows. Each row reports cpu_s_per_image: this
process's CPU seconds per inpainted image (time.process_time; run with OMP_NUM_THREADS=1, so it is
the single-core cost whatever else shares the machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stablekit
from stablekit.generate.inpaint_options import InpaintOptions
from stablekit.shapes.captions import POSITION_PHRASES, make_batch
from stablekit.shapes.edits import object_box_mask, other_color, other_shape
from stablekit.shapes.judge import Judge
from stablekit.shapes.render import render


def run_variant(pipe, options: dict | None, items, judge) -> tuple[dict, list[np.ndarray], list[dict]]:
    """Scores of one model / InpaintOptions fields over `items` [(image, mask, prompt, shape, colour)],
    its outputs and the judge's reading of each."""
    outs, reads = [], []
    unchanged = True
    cpu = 0.0
    settings = {} if options is None else {"inpaint_options": InpaintOptions(**options)}
    image, mask, prompt = items[0][:3]
    pipe.inpaint(Image.fromarray(image), mask, prompt, seed=1, **settings)  # warm-up (speed probe, caches): not timed
    for image, mask, prompt, shape, color in items:
        start = time.process_time()  # this process's CPU time: fair on a shared machine, unlike wall time
        out = np.asarray(pipe.inpaint(Image.fromarray(image), mask, prompt, seed=1, **settings)[0])
        cpu += time.process_time() - start
        unchanged &= bool(np.array_equal(out[mask == 0], image[mask == 0]))
        outs.append(out)
        reads.append(judge.judge([out])[0])
    return {**score(reads, items), "unchanged_outside_mask": unchanged,
            "cpu_s_per_image": round(cpu / len(items), 3)}, outs, reads


def score(reads: list[dict], items) -> dict:
    """new object (shape and colour right), shape, colour and abstain rates of judge readings."""
    n = len(items)
    shapes = sum(r["shape"] == it[3] for r, it in zip(reads, items))
    colors = sum(r["color"] == it[4] for r, it in zip(reads, items))
    hits = sum(r["shape"] == it[3] and r["color"] == it[4] for r, it in zip(reads, items))
    abstained = sum(r["abstained"] is not None for r in reads)
    return {"new_object": hits / n, "shape": shapes / n, "colour": colors / n, "abstained": abstained / n, "n": n}


def ideal_outputs(specs, items, vae_pipe=None) -> list[np.ndarray]:
    """What a perfect inpaint looks like: the target object rendered where the old one was (same
    place, size, rotation) pasted into the mask; through the model's autoencoder with `vae_pipe`
    (pixels outside the mask pasted back, as the pipeline does). The judge's score on these is
    the ceiling of the metric."""
    from stablekit.generate.steps import InitImage, decode, encode

    outs = []
    for spec, (image, mask, _, shape, color) in zip(specs, items):
        target = render(dataclasses.replace(spec, shape=shape, color=color))
        ideal = np.where(mask[..., None] > 0, target, image)
        if vae_pipe is not None:
            c = vae_pipe.components
            with torch.no_grad():
                pixels = decode(c, encode(c, InitImage(ideal).pixels[None]))[0]
            ideal = np.where(mask[..., None] > 0, np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8), image)
        outs.append(ideal)
    return outs


def seam(out: np.ndarray, mask: np.ndarray, width: int = 3) -> float:
    """Median RGB distance of the mask's inner rim (`width` px; background in a good inpaint, since
    the object sits inside the box) from the background outside the mask. Above the judge's
    OBJECT_DISTANCE (40) the judge sees the box itself as part of the object."""
    inside = mask > 0.5
    eroded = inside.copy()
    for _ in range(width):
        core = eroded[1:-1, 1:-1] & eroded[:-2, 1:-1] & eroded[2:, 1:-1]
        eroded[1:-1, 1:-1] = core & eroded[1:-1, :-2] & eroded[1:-1, 2:]
    rim = inside & ~eroded
    background = np.median(out[~inside].reshape(-1, 3).astype(np.float32), axis=0)
    return float(np.median(np.linalg.norm(out[rim].astype(np.float32) - background, axis=1)))


def failure(row: dict) -> str:
    """Why an item missed, first match of: missing (no object, or one in the background's colour),
    small (the judge reads it small: partial or shrunk), unrecognised (large, shape abstained),
    wrong shape, wrong colour; "ok" for a hit."""
    got, (shape, color) = row["got"], row["want"]
    if got["shape"] == shape and got["color"] == color:
        return "ok"
    if got["color"] is None:
        return "missing"
    if got["size"] == "small":
        return "small"
    if got["shape"] is None:
        return "unrecognised"
    return "wrong shape" if got["shape"] != shape else "wrong colour"


def details(reads: list[dict], specs, items, outs) -> list[dict]:
    """Per item: the source object, the mask, what was asked, what the judge read and the box's seam."""
    rows = []
    for r, spec, (_, mask, prompt, shape, color), out in zip(reads, specs, items, outs):
        rows.append({"source": {"shape": spec.shape, "color": spec.color, "background": spec.background,
                                "position": spec.position, "diameter": round(spec.diameter, 1),
                                "rotation": round(spec.rotation, 1)},
                     "mask_area": int(mask.sum()), "prompt": prompt, "want": [shape, color],
                     "seam": round(seam(out, mask), 1),
                     "got": {k: r.get(k) for k in ("shape", "color", "background", "size", "position", "abstained",
                                                   "shape_confidence", "shape_fit", "feret")}})
    return rows


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
                    help="masked-content choices for the plain model: original, fill, 'latent noise', 'latent nothing' "
                         "(--fills with no value: no plain-model rows, e.g. to measure only --inpaint-model)")
    ap.add_argument("--inpaint-variants", nargs="*", default=["plain"], choices=["plain", "noise-mask"],
                    help="runs of the 9-channel model: plain (diffusers' behaviour), noise-mask (A1111's latent "
                         "blend, InpaintOptions(noise_mask=True))")
    ap.add_argument("--mask-blur", type=int, default=0, help="A1111's Mask blur for every run (default 0)")
    ap.add_argument("--only-masked", type=int, nargs="*", default=None, metavar="PADDING",
                    help="also run A1111's 'Inpaint area: Only masked' at each of these paddings (pixels): the "
                         "plain model (masked content = the first of --fills) and every --inpaint-variants run")
    ap.add_argument("--no-whole-picture", action="store_true",
                    help="leave out the whole-picture rows of the 9-channel variants (only their --only-masked rows): "
                         "to split one measurement across processes")
    ap.add_argument("--name-position", action="store_true",
                    help="name the object's place in the prompt as the training captions do ('... at the top on a')")
    ap.add_argument("--ideal", action="store_true",
                    help="also judge perfect inpaints (the target rendered into the mask; raw and through the VAE)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--details", default=None, help="write every item's source, mask, prompt and judge reading here")
    ap.add_argument("--grid", default=None, help="write a grid: input, mask, then one row per variant (12 items)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images, _, specs = make_batch(args.n, seed=21, sizes=("large",))
    items = []
    for image, spec in zip(images, specs):
        shape, color = other_shape(spec), other_color(spec)
        place = f" {POSITION_PHRASES[spec.position][0]}" if args.name_position else ""
        items.append((image, object_box_mask(spec), f"a large {color} {shape}{place} on a {spec.background} background",
                      shape, color))
    judge = Judge.load()
    results, per_item = {}, {}
    rows = [[it[0] for it in items], [np.repeat((it[1][..., None] * 255).astype(np.uint8), 3, 2) for it in items]]
    plain = stablekit.load(args.model, progress=False)

    def report(label, scores, outs, reads):
        per_item[label] = details(reads, specs, items, outs)
        scores["seam_over_40"] = sum(r["seam"] > 40 for r in per_item[label]) / len(items)
        kinds = [failure(r) for r in per_item[label]]
        scores["failures"] = {k: kinds.count(k) for k in ("missing", "small", "unrecognised", "wrong shape",
                                                          "wrong colour") if k in kinds}
        results[label] = scores
        rows.append(outs)
        print(f"{label}: {json.dumps(scores)}", flush=True)

    if args.ideal:
        for label, vae in (("ideal paste (rendered target)", None), ("ideal paste through the VAE", plain)):
            outs = ideal_outputs(specs, items, vae)
            reads = judge.judge(outs)
            report(label, score(reads, items), outs, reads)
    for fill in args.fills:
        report(f"plain model, masked content {fill}",
               *run_variant(plain, {"fill": fill, "mask_blur": args.mask_blur}, items, judge))
    for padding in (args.only_masked or []) if args.fills else []:  # no fills: no plain rows at all
        report(f"plain model, only masked, padding {padding}",
               *run_variant(plain, {"fill": args.fills[0], "mask_blur": args.mask_blur, "only_masked": True,
                                    "padding": padding}, items, judge))
    if args.inpaint_model:
        model = load_inpainting(args.inpaint_model, args.model)
        for variant in args.inpaint_variants:
            options = {"noise_mask": variant == "noise-mask", "mask_blur": args.mask_blur}
            if not args.no_whole_picture:
                report(f"inpainting model (9-channel), {variant}", *run_variant(model, options, items, judge))
            for padding in args.only_masked or ():
                report(f"inpainting model (9-channel), {variant}, only masked, padding {padding}",
                       *run_variant(model, {**options, "only_masked": True, "padding": padding}, items, judge))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model or "embedded", "inpaint_model": args.inpaint_model,
                       "name_position": args.name_position, "results": results}, f, indent=1)
    if args.details:
        with open(args.details, "w") as f:
            json.dump(per_item, f, indent=1)
    if args.grid:
        grid(rows, 12).save(args.grid)


if __name__ == "__main__":
    main()
