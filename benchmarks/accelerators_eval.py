"""What the opt-in lossy accelerators cost in prompt adherence, and what they save, on the shapes world.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accelerators_eval.py [--limit 48]
        [--configs base,deepcache-2,deepcache-3] [--steps 20] [--threads 1]

The embedded model, the frozen prompt set eval-v1 (its first --limit prompts with their own seeds:
a reduced set when --limit is below its size), the default sampler and CFG, equal steps for every
configuration. Configurations take turns prompt by prompt, so load drifts on a shared machine hit
all alike; the table gives adherence (stablekit.shapes.evaluate), its difference to the base, the
time for all images and the speed ratio to the base.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="base,deepcache-2,deepcache-3")
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
    settings = {c: ({"deepcache": int(c.split("-")[1])} if c.startswith("deepcache-") else {}) for c in configs}
    images = {c: [] for c in configs}
    seconds = dict.fromkeys(configs, 0.0)
    with torch.inference_mode():
        pipe.generate("warm-up", steps=2, seed=0)
        for it in items:
            for c in configs:
                t0 = time.perf_counter()
                im = pipe.generate(it.prompt, seed=it.seed, steps=args.steps, width=64, height=64, **settings[c])[0]
                seconds[c] += time.perf_counter() - t0
                images[c].append(np.asarray(im.convert("RGB")))
    reports = {c: evaluate_images(items, np.stack(images[c])) for c in configs}
    base = configs[0]
    print(f"# embedded model, {args.prompt_set} first {len(items)} of {total} prompts, {args.steps} steps, default "
          f"sampler and CFG, {args.threads} thread(s), {time.strftime('%Y-%m-%d %H:%M')}; {pipe.acceleration.describe()}")
    print("\n| configuration | adherence | vs base | s (all images) | speed vs base |")
    print("|---|---|---|---|---|")
    for c in configs:
        a = reports[c]["adherence"]
        print(f"| {c} | {a:.3f} | {a - reports[base]['adherence']:+.3f} | {seconds[c]:.1f} | "
              f"{seconds[base] / seconds[c]:.2f}x |")


if __name__ == "__main__":
    main()
