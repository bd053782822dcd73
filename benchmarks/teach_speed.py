"""Training steps per second on the embedded model with the encoder cache off, cold and warm, in one run.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_speed.py [--method lora] [--steps 20]

Same data (the method's benchmark data, read at the model's native 64 px), settings and seed
for each pass; `off` encodes every batch with the VAE and text encoder, `cold` fills a fresh
cache while training, `warm` reads it, and `off` runs again last (so one-time costs of the first
pass are visible). Times are wall clock of stablekit.train (model loaded once before, copied per
pass); only ratios within one run are comparable.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import stablekit
from stablekit.formats import load_model
from stablekit.shapes import teach_eval as te
from stablekit.train.run import load_data, native_size

EXTRA = {"textual-inversion": dict(token="<hexagon>", init_word="circle"),
         "dreambooth": dict(instance_prompt="a sks square")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lora", choices=te.METHODS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/teach")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32)
    data_dir = te.render_method_data(args.method, Path(args.out) / "data")["data"]
    dataset = load_data(str(data_dir), native_size(base))
    result = {"method": args.method, "steps": args.steps, "images": len(dataset)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cache in (("off", "off"), ("cold", tmp), ("warm", tmp), ("off_again", "off")):
            os.environ["STABLEKIT_TRAIN_CACHE"] = cache
            t = time.perf_counter()
            stablekit.train(args.method, components=copy.deepcopy(base), dataset=dataset, out=f"{tmp}/run-{name}",
                            steps=args.steps, sample_every=0, checkpoint_every=10**6, tensorboard=False,
                            progress=False, **EXTRA.get(args.method, {}))
            result[f"{name}_steps_per_s"] = args.steps / (time.perf_counter() - t)
    off = (result["off_steps_per_s"] + result["off_again_steps_per_s"]) / 2
    result["warm_vs_off"] = result["warm_steps_per_s"] / off
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
