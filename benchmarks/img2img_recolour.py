"""img2img recolouring on the embedded model (the spec's img2img check, measured, not yet a target met).

Renders large shapes (seed 11), asks img2img for the same shape in another colour at several
strengths and CFG scales, and counts with the judge how often shape + position are kept and the
new colour appears.

    .venv/bin/python benchmarks/img2img_recolour.py [--n 12]
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import stablekit
from stablekit.shapes.captions import make_batch
from stablekit.shapes.edits import other_color
from stablekit.shapes.judge import Judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    args = ap.parse_args()
    pipe = stablekit.load(progress=False)
    images, _, specs = make_batch(args.n, seed=11, sizes=("large",))
    judge = Judge.load()
    print("| strength | CFG | shape and position kept | new colour |\n|---|---|---|---|")
    for strength in (0.3, 0.5, 0.7):
        for cfg in (7.0, 12.0):
            kept = recoloured = 0
            for image, spec in zip(images, specs):
                new = other_color(spec, ("blue", "yellow", "red"))
                prompt = f"a large {new} {spec.shape} on a {spec.background} background"
                out = pipe.img2img(Image.fromarray(image), prompt, strength=strength, seed=1, cfg=cfg)[0]
                got = judge.judge([np.asarray(out)])[0]
                kept += got["shape"] == spec.shape and got["position"] == spec.position
                recoloured += got["color"] == new
            print(f"| {strength} | {cfg:g} | {kept / args.n:.2f} | {recoloured / args.n:.2f} |")


if __name__ == "__main__":
    main()
