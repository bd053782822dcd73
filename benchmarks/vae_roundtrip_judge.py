"""How much the embedded autoencoder alone limits the judge's reading: 600 fresh renders
(seed 777) encoded and decoded, then judged; accuracy per attribute and size.

    .venv/bin/python benchmarks/vae_roundtrip_judge.py [--vae runs/shapes-v2/vae/final.pt]

--vae swaps in an autoencoder state dict from a pretraining run (shapes architecture), so a new
autoencoder can be judged before its UNet is trained.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

import stablekit
from stablekit.generate.pipeline import decode, encode
from stablekit.shapes.captions import make_batch
from stablekit.shapes.judge import Judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default=None, help="autoencoder state dict (.pt, read with weights_only=True) to judge instead")
    args = ap.parse_args()
    pipe = stablekit.load(progress=False)
    if args.vae:
        pipe.components.vae.load_state_dict(torch.load(args.vae, weights_only=True))
    images, _, specs = make_batch(600, seed=777)
    with torch.inference_mode():
        out = decode(pipe.components, encode(pipe.components, images.astype(np.float32) / 255))
    judged = Judge.load().judge((out * 255).round().astype(np.uint8))
    acc = collections.defaultdict(list)
    for got, spec in zip(judged, specs):
        for attr in ("shape", "color", "background", "size", "position"):
            acc[(attr, spec.size)].append(got.get(attr) == getattr(spec, attr))
    print("| attribute | large | small |\n|---|---|---|")
    for attr in ("shape", "color", "background", "size", "position"):
        print(f"| {attr} | {np.mean(acc[(attr, 'large')]):.3f} | {np.mean(acc[(attr, 'small')]):.3f} |")


if __name__ == "__main__":
    main()
