"""Prompt adherence with and without each guidance option (generate/guidance.py), at equal steps.

Generates one image per prompt of a shapes-world prompt set (fixed seeds) for every setting below,
judges them with the abstaining judge (stablekit.shapes.evaluate), and writes a Markdown table, a
JSON report and one sample grid per setting into --out. Settings: plain CFG; CFG rescale 0.7;
FreeU at the architecture's defaults, with diffusers' math and with ComfyUI's FreeU_V2 math; PAG
scale 3 at the mid block (diffusers' default layer) and at every self-attention layer of the down path; all at the same sampler, steps and CFG.

    .venv/bin/python benchmarks/guidance_adherence.py [--model PATH] [--limit 48] [--steps 20]
        [--prompt-set eval-v1] [--out docs/reports/guidance/adherence] [--only plain "FreeU_V2 (defaults)"]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import stablekit
from stablekit.generate.guidance import GuidanceOptions
from stablekit.shapes.evaluate import evaluate_images, sample_grid
from stablekit.shapes.prompts import load_prompt_set

SETTINGS = {
    "plain": None,
    "CFG rescale 0.7": GuidanceOptions(cfg_rescale=0.7),
    "FreeU (defaults)": GuidanceOptions(freeu=True),
    "FreeU_V2 (defaults)": GuidanceOptions(freeu=True, freeu_v2=True),
    "PAG 3 (mid)": GuidanceOptions(pag_scale=3.0),
    "PAG 3 (down_blocks)": GuidanceOptions(pag_scale=3.0, pag_layers=("down_blocks",)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model path (default: the embedded shapes model)")
    ap.add_argument("--prompt-set", default="eval-v1")
    ap.add_argument("--limit", type=int, default=48, help="first N prompts of the set (default 48; 0: all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--only", nargs="*", default=None, help="run only these settings (names as in the table)")
    ap.add_argument("--out", default="docs/reports/guidance/adherence")
    ap.add_argument("--eager", action="store_true",
                    help="run the UNet without its TorchScript trace (generate/traced.py; bit-exact for plain): "
                         "diffusers-math FreeU sets attributes the trace does not see, so traced it is a no-op")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = stablekit.load(args.model, progress=False)
    if args.eager:
        from stablekit.generate import traced

        traced.uninstall(pipe.components.unet)
    items = load_prompt_set(args.prompt_set)[:args.limit or None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, reports = [], {}
    for name, options in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        images = [np.asarray(pipe.generate(it.prompt, seed=it.seed, steps=args.steps, cfg=args.cfg, width=64, height=64,
                                           guidance=options)[0]) for it in items]
        seconds = (time.time() - t0) / len(items)
        report = evaluate_images(items, np.stack(images))
        acc = report["accuracy"]
        rows.append(f"| {name} | {report['adherence']:.3f} | {acc.get('shape', 0):.3f} | {acc.get('color', 0):.3f} | "
                    f"{acc.get('background', 0):.3f} | {acc.get('size', 0):.3f} | {acc.get('position', 0):.3f} | "
                    f"{report['abstained_total']} | {seconds:.2f} |")
        reports[name] = {k: v for k, v in report.items() if k != "items"}
        slug = name.lower().replace(" ", "-").replace("(", "").replace(")", "").replace(".", "")
        sample_grid(images, items, report).save(out / f"grid-{slug}.png")
        print(rows[-1], flush=True)
    header = (f"prompt set `{args.prompt_set}`, first {len(items)} prompts (their seeds), {args.steps} steps, "
              f"CFG {args.cfg:g}, default sampler, model {args.model or 'embedded (default)'}\n\n"
              "| setting | adherence | shape | colour | background | size | position | abstained | s/image |\n"
              "|---|---|---|---|---|---|---|---|---|")
    table = header + "\n" + "\n".join(rows) + "\n"
    (out / "adherence.md").write_text(table)
    (out / "adherence.json").write_text(json.dumps({"args": vars(args), "reports": reports}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
