"""Where an embedded-model image spends its CPU time with `--backend openvino`: UNet, VAE decode, the rest.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/profile_openvino.py [--images 3]

One warm image first (it converts the UNet, or loads it from the cache), then `time.process_time()`
summed around the OpenVINO UNet forward and `vae.decode` over N images of 20 Euler steps, CFG 7, 1 thread.
"""
from __future__ import annotations

import argparse
import time

import torch

import stablekit
from stablekit.generate.openvino_unet import OpenVINOForward

PROMPT = "a large red star on a blue background"
SETTINGS = dict(negative_prompt="", steps=20, cfg=7.0, sampler="Euler", schedule="Normal", seed=1, output="np")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = stablekit.load(None, progress=False, backend="openvino")
    pipe.generate(PROMPT, **SETTINGS)
    spent = {"unet": 0.0, "vae decode": 0.0}

    def timed(name, fn):
        def call(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.process_time() - c0
        return call

    OpenVINOForward.__call__ = timed("unet", OpenVINOForward.__call__)
    pipe.components.vae.decode = timed("vae decode", pipe.components.vae.decode)
    c0 = time.process_time()
    with torch.inference_mode():
        for _ in range(args.images):
            pipe.generate(PROMPT, **SETTINGS)
    total = (time.process_time() - c0) / args.images
    parts = {k: v / args.images for k, v in spent.items()}
    print(f"{pipe.acceleration.describe()}\nCPU s per image: {total:.3f} = "
          + " + ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" + other {total - sum(parts.values()):.3f}")


if __name__ == "__main__":
    main()
