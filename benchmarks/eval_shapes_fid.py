"""In-domain FID/KID of the embedded model (or any shapes-world model) with the shipped shapes
feature extractor, plus the rendered-vs-rendered floor.

    PYTHONPATH=src python benchmarks/eval_shapes_fid.py --n 2000 --per-prompt 4 --cache /tmp/gen.npz

Generation goes through stablekit.load + Pipeline.generate(output="np") (evaluate.runner.generate),
on the captions of the held-out reference stream, K seeds per caption in one batch; images are
cached in --cache after every chunk so a long run can stop and resume. Prints one JSON object:
rendered-vs-rendered FID/KID (two disjoint rendered sets of n), model-vs-rendered FID/KID, the
number of images and seconds per image.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stablekit.evaluate.data import REFERENCE_SEED, shapes_reference
from stablekit.evaluate.fid import fid, kid
from stablekit.evaluate.shapes_features import ShapesFeatures


def generated(model, n: int, per_prompt: int, cache: Path | None, steps: int, chunk: int = 4):
    import stablekit
    from stablekit.evaluate.runner import generate

    ref = shapes_reference(-(-n // per_prompt))
    done = np.load(cache)["images"] if cache and cache.exists() else np.zeros((0, 64, 64, 3), np.uint8)
    seconds = []
    pipe = None
    while len(done) < n:
        pipe = pipe or stablekit.load(model, progress=False)
        start = len(done) // per_prompt
        prompts = ref.captions[start:start + chunk]
        seeds = [s * per_prompt for s in ref.seeds[start:start + chunk]]
        images, spi = generate(pipe, prompts, seeds, {"steps": steps}, per_prompt)
        seconds.append(spi)
        done = np.concatenate([done, images])
        if cache:
            np.savez(cache, images=done)
        print(f"{len(done)}/{n} images, {spi:.2f} s/image", flush=True)
    return done[:n], (float(np.mean(seconds)) if seconds else None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--render-only", action="store_true", help="only the rendered-vs-rendered floor")
    p.add_argument("--available", action="store_true",
                   help="score only the images already in --cache (n = their count, rounded down to per-prompt)")
    args = p.parse_args()
    if args.available:
        have = len(np.load(args.cache)["images"]) if args.cache and args.cache.exists() else 0
        args.n = have - have % args.per_prompt
    t0 = time.time()
    feats = ShapesFeatures()
    ref = feats(shapes_reference(args.n).images)  # same n as generated: FID's small-n bias matches
    other = feats(shapes_reference(args.n, seed=REFERENCE_SEED + 1).images)
    out = {"n": args.n, "features": feats.name,
           "rendered_vs_rendered": {"fid": fid(other, ref), "kid": kid(other, ref)[0]}}
    if not args.render_only:
        images, spi = generated(args.model, args.n, args.per_prompt, args.cache, args.steps)
        g = feats(images)
        out["model"] = {"fid": fid(g, ref), "kid": kid(g, ref)[0], "n_generated": len(images),
                        "per_prompt": args.per_prompt, "steps": args.steps, "seconds_per_image": spi}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
