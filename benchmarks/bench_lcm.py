"""An LCM-LoRA against the base model on the embedded shapes model: a grid and prompt adherence.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_lcm.py \
        --lora runs/shapes-lcm.safetensors --out docs/reports/lcm [--prompt-set eval-v1] \
        [--settings lora-lcm-4-cfg1,lora-lcm-2-cfg1] [--limit N] [--grid-only]

Settings (same prompts and seeds; `--settings` picks some, default all):
  base-20          the model as shipped: its default sampler, 20 steps, CFG 7 (the issue's 20-step base)
  base-lcm-4-cfg2  no LoRA, LCM sampler, 4 steps, CFG 2 (the best few-step row without distillation)
  base-lcm-4-cfg1  no LoRA, LCM sampler, 4 steps, CFG 1 (one UNet call per step)
  lora-lcm-N-cfg1  with the LoRA, LCM sampler, N = 2, 3 or 4 steps, CFG 1 (what the LoRA is for)
Images are made exactly as `stablekit shapes eval --sampler S --steps N --cfg C` makes them (one
64x64 PIL image per prompt and seed), so the base rows match that command's figures. Writes
OUT/grid.png (one row per setting, 4 prompts) and, unless --grid-only, each setting's judge report
under OUT/<prompt-set>/<setting>/ and the adherence of all settings run so far to
OUT/lcm-<prompt-set>.json (merged with what an earlier run wrote). Speed: bench_few_step.py --lora.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["a red circle on a blue background", "a green star", "a yellow square on a black background",
           "a small white triangle at the top"]
SETTINGS = {"base-20": dict(steps=20, cfg=7.0, sampler=None, lora=False),
            "base-lcm-4-cfg2": dict(steps=4, cfg=2.0, sampler="LCM", lora=False),
            "base-lcm-4-cfg1": dict(steps=4, cfg=1.0, sampler="LCM", lora=False),
            "lora-lcm-4-cfg1": dict(steps=4, cfg=1.0, sampler="LCM", lora=True),
            "lora-lcm-3-cfg1": dict(steps=3, cfg=1.0, sampler="LCM", lora=True),
            "lora-lcm-2-cfg1": dict(steps=2, cfg=1.0, sampler="LCM", lora=True)}


def generator(pipe, setting: dict):
    """generate_fn(prompts, seeds) for shapes.evaluate_model, as shapes' model_generate_fn makes images."""
    def generate(prompts, seeds):
        kw = dict(steps=setting["steps"], cfg=setting["cfg"], width=64, height=64)
        if setting["sampler"]:
            kw["sampler"] = setting["sampler"]
        return [pipe.generate(p, seed=int(s), **kw)[0] for p, s in zip(prompts, seeds)]
    return generate


def pipelines(model: str, lora: str, names: list[str]) -> dict:
    """{False: the base pipeline, True: a second one with the LoRA patched in once} (as needed)."""
    import stablekit
    from stablekit.adapters import apply_adapters

    path = model or stablekit.default_model_path()
    pipes = {False: stablekit.load(path, progress=False)}
    if any(SETTINGS[n]["lora"] for n in names):
        pipes[True] = stablekit.load(path, progress=False)
        apply_adapters(pipes[True].components, [(lora, 1.0)])
    return pipes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lora", default="", help="the LCM-LoRA (kohya or PEFT file); needed by the lora-* settings")
    ap.add_argument("--model", default="", help="base model (default: the embedded one)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}")
    ap.add_argument("--prompt-set", default="eval-v1", choices=["eval-v1", "eval-v2"])
    ap.add_argument("--limit", type=int, default=None, help="judge only the first N prompts (default: all 240)")
    ap.add_argument("--grid-only", action="store_true")
    a = ap.parse_args()
    names = [n.strip() for n in a.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; use some of {', '.join(SETTINGS)}")
    if not a.lora and any(SETTINGS[n]["lora"] for n in names):
        raise SystemExit("the lora-* settings need --lora FILE")
    torch.set_num_threads(1)
    from stablekit.data.validation import image_grid

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pipes = pipelines(a.model, a.lora, names)
    rows = []
    for name in names:
        setting = SETTINGS[name]
        images = generator(pipes[setting["lora"]], setting)(PROMPTS, list(range(len(PROMPTS))))
        rows += [np.asarray(im.convert("RGB")) for im in images]
    image_grid(rows, cols=len(PROMPTS)).save(out / "grid.png")
    print(f"grid rows: {', '.join(names)} -> {out / 'grid.png'}")
    if a.grid_only:
        return
    from stablekit.shapes.evaluate import evaluate_model

    summary_path = out / f"lcm-{a.prompt_set}.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"results": {}}
    for name in names:
        setting = SETTINGS[name]
        report = evaluate_model(generator(pipes[setting["lora"]], setting), steps=setting["steps"],
                                sampler=setting["sampler"], prompt_set=a.prompt_set, limit=a.limit,
                                out_dir=out / a.prompt_set / name, label=name, log=None, meta={"cfg": setting["cfg"]})
        summary["results"][name] = {"adherence": report["adherence"], "limit": a.limit,
                                    "lora": a.lora if setting["lora"] else None,
                                    **{k: setting[k] for k in ("steps", "cfg", "sampler")}}
        print(name, json.dumps(summary["results"][name]), flush=True)
        summary_path.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
