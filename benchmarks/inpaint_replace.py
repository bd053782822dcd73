"""Inpainting on the embedded model: replace a rendered object with another shape and colour.

Renders large shapes (seed 21), masks the object's bounding box + 4 px, asks for a different
shape in a different colour on the same background, and counts with the judge how often the new
object appears and whether every pixel outside the mask is unchanged.

    .venv/bin/python benchmarks/inpaint_replace.py [--n 40] [--model PATH]
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import stablekit
from stablekit.shapes.captions import make_batch
from stablekit.shapes.edits import object_box_mask, other_color, other_shape
from stablekit.shapes.judge import Judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    args = ap.parse_args()
    pipe = stablekit.load(args.model, progress=False)
    images, _, specs = make_batch(args.n, seed=21, sizes=("large",))
    judge = Judge.load()
    hits, unchanged = 0, True
    for image, spec in zip(images, specs):
        mask = object_box_mask(spec)
        shape, color = other_shape(spec), other_color(spec)
        out = np.asarray(pipe.inpaint(Image.fromarray(image), mask, f"a large {color} {shape} on a {spec.background} background",
                                      seed=1)[0])
        unchanged &= bool(np.array_equal(out[mask == 0], image[mask == 0]))
        got = judge.judge([out])[0]
        hits += got["shape"] == shape and got["color"] == color
    print(f"new object (shape and colour) {hits / args.n:.3f} of {args.n}; pixels outside the mask unchanged: {unchanged}")


if __name__ == "__main__":
    main()
