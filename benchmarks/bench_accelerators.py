"""Opt-in lossy accelerators on the embedded model: prompt adherence (the shapes judge) and time, same run.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_accelerators.py \
        [--limit 48] [--configs base,tome-0.5,deepcache-3] [--steps 20]

Configurations: base (the default exact path), deepcache-N, tome-R (token merging ratio R),
tiny-vae=PATH (a TAESD-style decoder for this model's latents); several joined with "+" stack
(e.g. deepcache-3+tome-0.5). The frozen prompt set eval-v1 (its first --limit prompts with their
own seeds), the default sampler and CFG, equal steps for all. Configurations take turns prompt by
prompt, so load drifts on a shared machine hit all alike; the table gives adherence
(stablekit.shapes.evaluate), its difference to the first configuration, the seconds for all images,
the speed ratio, and the mean absolute pixel difference to the first configuration's images.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def settings_of(config: str) -> dict:
    out: dict = {}
    for part in config.split("+"):
        if part.startswith("deepcache-"):
            out["deepcache"] = int(part.split("-", 1)[1])
        elif part.startswith("tome-"):
            out["tome"] = float(part.split("-", 1)[1])
        elif part.startswith("tiny-vae="):
            out["tiny_vae"] = part.split("=", 1)[1]
        elif part != "base":
            raise SystemExit(f"unknown configuration {part!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="base,tome-0.5,deepcache-3")
    ap.add_argument("--prompt-set", default="eval-v1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import stablekit
    from stablekit.shapes.evaluate import evaluate_images
    from stablekit.shapes.prompts import load_prompt_set

    pipe = stablekit.load(progress=False)
    items = load_prompt_set(args.prompt_set)
    total = len(items)
    items = items[:args.limit]
    configs = args.configs.split(",")
    settings = {c: settings_of(c) for c in configs}
    images = {c: [] for c in configs}
    seconds = dict.fromkeys(configs, 0.0)
    with torch.inference_mode():
        for c in configs:
            pipe.generate("warm-up", steps=2, seed=0, **settings[c])
        for it in items:
            for c in configs:
                t0 = time.perf_counter()
                im = pipe.generate(it.prompt, seed=it.seed, steps=args.steps, width=64, height=64, **settings[c])[0]
                seconds[c] += time.perf_counter() - t0
                images[c].append(np.asarray(im.convert("RGB")))
    reports = {c: evaluate_images(items, np.stack(images[c])) for c in configs}
    base = configs[0]
    print(f"# embedded model, {args.prompt_set} first {len(items)} of {total} prompts, {args.steps} steps, default "
          f"sampler and CFG, {args.threads} thread(s), {time.strftime('%Y-%m-%d %H:%M')} UTC, load average "
          f"{os.getloadavg()[0]:.1f} (CPU shared); {pipe.acceleration.describe()}")
    print("\n| configuration | adherence | vs first | s (all images) | speed vs first | mean abs pixel diff vs first |")
    print("|---|---|---|---|---|---|")
    for c in configs:
        a = reports[c]["adherence"]
        diff = np.mean([np.abs(x.astype(float) - y.astype(float)).mean() for x, y in zip(images[c], images[base])])
        print(f"| {c} | {a:.3f} | {a - reports[base]['adherence']:+.3f} | {seconds[c]:.1f} | "
              f"{seconds[base] / seconds[c]:.2f}x | {diff:.1f} |")


if __name__ == "__main__":
    main()
