"""How often does a model paint the background in the object's colour when the prompt names the
object's colour but not the background? (Recipe v3's remaining eval failure type.)

    .venv/bin/python benchmarks/bg_colour_rate.py --model PATH --cfg 7,5 [--cfg-rescale 0,0.7] [--n 200]

A validation set of its own, not eval-v1/eval-v2 (so choosing a CFG here does not fit them):
n specs from stream seed 4242, generation seeds 9000+, captions in the 10 training templates
naming the shape and colour (size and position each named with probability 0.7), never the
background. Reports, per CFG, the images judged "object in background colour" or "no object",
adherence and colour accuracy. --cfg-rescale adds Lin et al.'s CFG rescale (phi) per CFG, for
zero-terminal-SNR models (benchmarks/ztsnr_finetune.py). `--prompt-set eval-v1 --n 100` scores the
first n prompts of a fixed eval set instead (same seeds and settings as `stablekit shapes eval
--limit n`), for adherence with a CFG rescale, which that command has no flag for.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def items(n: int):
    from stablekit.shapes.captions import TEMPLATE_SETS, compose_caption
    from stablekit.shapes.prompts import PromptItem
    from stablekit.shapes.render import sample_spec

    rng = np.random.default_rng(4242)
    templates = TEMPLATE_SETS["extended"]
    out = []
    for i in range(n):
        spec = sample_spec(rng)
        attrs = ["color"] + [a for a in ("size", "position") if rng.random() < 0.7]
        text, named = compose_caption(spec, attrs, i % len(templates), i // len(templates), templates=templates)
        out.append(PromptItem(id=i, prompt=text, seed=9000 + i, named=named, spec=spec))
    return out


def main() -> None:
    import torch

    from stablekit import load
    from stablekit.shapes.evaluate import evaluate_images

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model path, or embedded")
    ap.add_argument("--cfg", default="7,5")
    ap.add_argument("--cfg-rescale", default="0", help="comma-separated CFG rescale values (0: off)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--prompt-set", default=None, help="eval-v1 / eval-v2: its first n prompts instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.prompt_set:
        from stablekit.shapes.prompts import load_prompt_set

        its = load_prompt_set(args.prompt_set)[:args.n]
    else:
        its = items(args.n)
    pipe = load(progress=False) if args.model == "embedded" else load(args.model, progress=False)
    rows = {}
    for cfg, phi in [(float(c), float(r)) for c in args.cfg.split(",") for r in args.cfg_rescale.split(",")]:
        extra = {"guidance": {"cfg_rescale": phi}} if phi else {}
        images = np.stack([np.asarray(pipe.generate(i.prompt, seed=i.seed, steps=20, width=64, height=64, cfg=cfg,
                                                    **extra)[0]) for i in its])
        r = evaluate_images(its, images)
        key = f"cfg {cfg:g}" + (f" rescale {phi:g}" if phi else "")
        rows[key] = {"bg_colour": r["background_colour_object"], "no_object": r["no_object"],
                     "adherence": round(r["adherence"], 4), "colour": round(r["accuracy"]["color"], 3),
                     "small_shape": r["shape_by_named_size"], "abstained": r["abstained_total"],
                     "failures": [it["prompt"] for it in r["items"]
                                  if it["abstained"] in ("object in background colour", "no object")]}
        print(json.dumps({key: rows[key]}), flush=True)


if __name__ == "__main__":
    main()
