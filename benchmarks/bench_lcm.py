"""An LCM-LoRA against the base model on the embedded shapes model: a grid, time per image, adherence.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_lcm.py \
        --lora runs/shapes-lcm.safetensors --out docs/reports/lcm [--grid-only] [--limit 64]

Settings compared (same prompts and seeds):
  base-20      the model as shipped: its default sampler, 20 steps, CFG 7 (the issue's 20-step base)
  base-lcm-4   the model without the LoRA, LCM sampler, 4 steps, CFG 1 (what the LoRA must improve on)
  lora-lcm-4   with the LoRA, LCM sampler, 4 steps, CFG 1 (one UNet call per step)
Writes OUT/grid.png (one row per setting), and unless --grid-only, eval-v1 adherence (the first
--limit prompts) and seconds per image per setting, measured in this run, to OUT/lcm.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["a red circle on a blue background", "a green star", "a yellow square on a black background",
           "a small white triangle at the top"]
SETTINGS = {"base-20": dict(steps=20, cfg=7.0, sampler=None, lora=False),
            "base-lcm-4": dict(steps=4, cfg=1.0, sampler="LCM", lora=False),
            "lora-lcm-4": dict(steps=4, cfg=1.0, sampler="LCM", lora=True)}


def generator(pipe, setting: dict):
    """generate_fn(prompts, seeds) for shapes.evaluate_model with one setting."""
    def generate(prompts, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds):
            kw = dict(steps=setting["steps"], cfg=setting["cfg"], seed=int(seed), output="np")
            if setting["sampler"]:
                kw["sampler"] = setting["sampler"]
            out.append((np.asarray(pipe.generate(prompt, **kw)[0]) * 255).round().astype(np.uint8))
        return out
    return generate


def with_lora(pipe, setting: dict, lora: str, fn):
    """fn() with the LoRA applied once (not per image, so timing counts the sampling only)."""
    from stablekit.adapters import apply_adapters

    applied = apply_adapters(pipe.components, [(lora, 1.0)]) if setting["lora"] else None
    try:
        return fn()
    finally:
        if applied is not None:
            applied.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lora", required=True)
    ap.add_argument("--model", default="", help="base model (default: the embedded one)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=64, help="eval-v1 prompts to judge")
    ap.add_argument("--grid-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import stablekit
    from stablekit.data.validation import image_grid

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = stablekit.load(a.model or stablekit.default_model_path(), progress=False)
    rows = []
    for name, setting in SETTINGS.items():
        rows += with_lora(pipe, setting, a.lora, lambda: generator(pipe, setting)(PROMPTS, list(range(len(PROMPTS)))))
    image_grid(rows, cols=len(PROMPTS)).save(out / "grid.png")
    print(f"grid rows: {', '.join(SETTINGS)} -> {out / 'grid.png'}")
    if a.grid_only:
        return
    from stablekit.shapes.evaluate import evaluate_model

    results = {}
    for name, setting in SETTINGS.items():
        t0 = time.perf_counter()
        report = with_lora(pipe, setting, a.lora, lambda: evaluate_model(
            generator(pipe, setting), steps=setting["steps"], limit=a.limit, out_dir=out / name, label=name,
            meta={"cfg": setting["cfg"]}))
        results[name] = {"adherence": report["adherence"], "s_per_image": (time.perf_counter() - t0) / a.limit,
                         **{k: setting[k] for k in ("steps", "cfg", "sampler")}}
        print(name, json.dumps(results[name]), flush=True)
    (out / "lcm.json").write_text(json.dumps({"lora": a.lora, "limit": a.limit, "results": results}, indent=1))


if __name__ == "__main__":
    main()
