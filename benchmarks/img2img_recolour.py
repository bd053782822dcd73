"""img2img recolouring on the shapes world: the strength x CFG trade-off (issue 9 item 6).

Renders large shapes (seed 11), asks img2img for the same shape in another colour ("a large
{new colour} {shape} on a {background} background") over a grid of denoising strength x CFG
scale, and counts with the abstaining judge how often shape + position are kept and how often
the new colour appears. Optionally the same grid with guidance options (A1111's fix steps, CFG
rescale). Writes a Markdown table, JSON, a plot of both rates per CFG along strength, and an image
grid of the first shape into --out. Target (specs/shapes-world.md): at the best grid point kept
>= 0.9 and new colour >= 0.8.

    .venv/bin/python benchmarks/img2img_recolour.py [--n 12] [--strengths 0.3 0.4 0.5 0.6 0.7 0.8]
        [--cfgs 3 5 7 10 15] [--variants plain fix-steps] [--name-position] [--model PATH]
        [--out docs/reports/guidance/img2img]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stablekit
from stablekit.generate.guidance import GuidanceOptions
from stablekit.shapes.captions import POSITION_PHRASES, make_batch
from stablekit.shapes.edits import other_color
from stablekit.shapes.judge import Judge

VARIANTS = {"plain": None, "fix-steps": GuidanceOptions(fix_steps=True),
            "cfg-rescale": GuidanceOptions(cfg_rescale=0.7)}


def recolour_prompt(spec, new: str, name_position: bool = False) -> str:
    """The source's description with only the colour changed; with name_position, its place too
    (the captions' first phrase for it, e.g. "at the top")."""
    where = f" {POSITION_PHRASES[spec.position][0]}" if name_position else ""
    return f"a large {new} {spec.shape}{where} on a {spec.background} background"


def run_grid(pipe, judge, images, specs, strengths, cfgs, options, steps: int, keep_first: bool = True,
             name_position: bool = False):
    """{(strength, cfg): (kept, recoloured)} over the images, and the first image's outputs."""
    results, firsts = {}, {}
    for strength in strengths:
        for cfg in cfgs:
            kept = recoloured = 0
            for i, (image, spec) in enumerate(zip(images, specs)):
                new = other_color(spec, ("blue", "yellow", "red"))
                prompt = recolour_prompt(spec, new, name_position)
                out = pipe.img2img(Image.fromarray(image), prompt, strength=strength, seed=1, cfg=cfg, steps=steps,
                                   guidance=options)[0]
                got = judge.judge([np.asarray(out)])[0]
                kept += got["shape"] == spec.shape and got["position"] == spec.position
                recoloured += got["color"] == new
                if i == 0 and keep_first:
                    firsts[(strength, cfg)] = np.asarray(out)
            results[(strength, cfg)] = (kept / len(images), recoloured / len(images))
            print(f"  strength {strength} CFG {cfg:g}: kept {results[(strength, cfg)][0]:.2f} "
                  f"new colour {results[(strength, cfg)][1]:.2f}", flush=True)
    return results, firsts


def best_point(results: dict) -> tuple:
    """The grid point maximising min(kept, new colour) (ties: the higher sum)."""
    return max(results, key=lambda k: (min(results[k]), sum(results[k])))


def plot(all_results: dict, strengths, cfgs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4), squeeze=False)
    for ax, (variant, results) in zip(axes[0], all_results.items()):
        for j, cfg in enumerate(cfgs):
            colour = plt.cm.viridis(j / max(1, len(cfgs) - 1))
            ax.plot(strengths, [results[(s, cfg)][0] for s in strengths], "-o", color=colour, label=f"kept, CFG {cfg:g}")
            ax.plot(strengths, [results[(s, cfg)][1] for s in strengths], "--s", color=colour, label=f"new colour, CFG {cfg:g}")
        ax.axhline(0.9, color="grey", lw=0.5)
        ax.axhline(0.8, color="grey", lw=0.5, ls="--")
        ax.set(title=f"img2img recolour ({variant})", xlabel="denoising strength", ylabel="rate", ylim=(-0.03, 1.03))
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def image_grid(firsts: dict, source: np.ndarray, strengths, cfgs, path: Path) -> None:
    """Rows: CFG; columns: the source, then each strength (first test image)."""
    size = source.shape[0]
    grid = Image.new("RGB", ((len(strengths) + 1) * size, len(cfgs) * size), "white")
    for r, cfg in enumerate(cfgs):
        grid.paste(Image.fromarray(source), (0, r * size))
        for c, s in enumerate(strengths):
            grid.paste(Image.fromarray(firsts[(s, cfg)]), ((c + 1) * size, r * size))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12, help="rendered images per grid point (default 12)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--cfgs", type=float, nargs="+", default=[3.0, 5.0, 7.0, 10.0, 15.0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=["plain"], choices=tuple(VARIANTS))
    ap.add_argument("--name-position", action="store_true",
                    help="the prompt also names the object's place (e.g. 'at the top'); default: colour, shape, background")
    ap.add_argument("--model", default=None, help="model path (default: the embedded shapes model)")
    ap.add_argument("--out", default="docs/reports/guidance/img2img")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = stablekit.load(args.model, progress=False)
    images, _, specs = make_batch(args.n, seed=11, sizes=("large",))
    judge = Judge.load()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_results, lines = {}, []
    for variant in args.variants:
        print(f"variant {variant}", flush=True)
        results, firsts = run_grid(pipe, judge, images, specs, args.strengths, args.cfgs, VARIANTS[variant], args.steps,
                                   name_position=args.name_position)
        all_results[variant] = results
        image_grid(firsts, images[0], args.strengths, args.cfgs, out / f"grid-{variant}.png")
        best = best_point(results)
        lines += [f"### {variant}", "",
                  "kept = shape and position kept / new = the new colour; rows CFG, columns denoising strength", "",
                  "| CFG \\ strength | " + " | ".join(f"{s:g}" for s in args.strengths) + " |",
                  "|---|" + "---|" * len(args.strengths)]
        for cfg in args.cfgs:
            lines.append(f"| {cfg:g} | " + " | ".join(f"{results[(s, cfg)][0]:.2f} / {results[(s, cfg)][1]:.2f}"
                                                       for s in args.strengths) + " |")
        lines += ["", f"best point (max of min(kept, new)): strength {best[0]:g}, CFG {best[1]:g}: kept "
                      f"{results[best][0]:.2f}, new colour {results[best][1]:.2f}", ""]
    plot(all_results, args.strengths, args.cfgs, out / "curve.png")
    header = (f"{args.n} rendered large shapes (seed 11), seed 1, {args.steps} steps, default sampler, model "
              f"{args.model or 'embedded (default)'}; prompt: \"{recolour_prompt(specs[0], 'NEW', args.name_position)}\"\n")
    (out / "recolour.md").write_text(header + "\n" + "\n".join(lines))
    (out / "recolour.json").write_text(json.dumps(
        {"args": vars(args), "results": {v: {f"{s:g},{c:g}": r for (s, c), r in res.items()}
                                         for v, res in all_results.items()}}, indent=1))
    print(header + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
