"""`stablekit shapes ...`: render the shapes world, judge images, evaluate a model, pretrain.

    stablekit shapes render --n 5000 --out DIR [--seed S] [--shapes ...] [--hollow]
    stablekit shapes judge DIR [--json]
    stablekit shapes eval [--model M] [--steps 20] [--sampler NAME] [--prompt-set eval-v2] [--backend openvino] [--out DIR]
    stablekit shapes eval --rescore DIR    (judge an earlier evaluation's images again)
    stablekit shapes pretrain ...          (the recipe lives in stablekit.shapes.pretrain)
"""
from __future__ import annotations

import json
from pathlib import Path

from stablekit.errors import StablekitError


def register(subparsers) -> None:
    shapes = subparsers.add_parser("shapes", help="the shapes world: render, judge, evaluate, pretrain",
                                   description=__doc__.splitlines()[0])
    sub = shapes.add_subparsers(dest="shapes_command", metavar="SUBCOMMAND",
                                help="render, judge, eval or pretrain (each has its own --help)")
    shapes.set_defaults(func=lambda args: shapes.print_help() or 1)

    from stablekit.shapes.render import ALL_COLORS, ALL_SHAPES, BASE_SHAPES, COLORS

    p = sub.add_parser("render", help="write NNNNNN.png + NNNNNN.txt caption pairs and metadata.json",
                       description="Render captioned shapes-world images (exact ground truth in metadata.json).")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="stream seed: item i is the same whatever --n and --start")
    p.add_argument("--start", type=int, default=0, help="first item index of the seeded stream")
    p.add_argument("--shapes", nargs="+", default=list(BASE_SHAPES), choices=ALL_SHAPES,
                   help="shapes to draw (default: the base shapes)")
    p.add_argument("--colors", nargs="+", default=list(COLORS), choices=list(ALL_COLORS),
                   help="object colours (default: the base palette)")
    p.add_argument("--backgrounds", nargs="+", default=list(COLORS), choices=list(ALL_COLORS),
                   help="background colours (default: the base palette)")
    p.add_argument("--hollow", action="store_true", help="outline style (large objects only)")
    p.add_argument("--drop-p", type=float, default=0.3, help="chance to leave each optional attribute out")
    p.add_argument("--shape-word", default=None, help="word used for the shape in captions, e.g. '<hexagon>'")
    p.set_defaults(func=run_render)

    p = sub.add_parser("judge", help="judge a folder of 64x64 PNGs; with captions, score them",
                       description="Read shape, colour, background, size, position and hollowness from "
                                   "64x64 PNGs; the judge abstains (None) rather than guesses.")
    p.add_argument("folder", metavar="DIR", help="folder of .png files (captions from metadata.json or .txt files)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run_judge)

    from stablekit.shapes.prompts import PROMPT_SETS

    p = sub.add_parser("eval", help="prompt adherence and diversity of a model on a fixed prompt set",
                       description="Generate one image per prompt of a fixed prompt set and judge it: "
                                   "adherence, diversity, abstentions, grids.")
    p.add_argument("--model", default=None, help="model path understood by stablekit.load (default: the embedded model)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--sampler", default=None, help="sampler name (default: the model's default)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the pipeline's)")
    p.add_argument("--prompt-set", default="eval-v1", choices=list(PROMPT_SETS),
                   help="fixed prompt set with seeds (default eval-v1)")
    p.add_argument("--backend", choices=("torch", "openvino"), default="torch",
                   help="UNet backend, as stablekit generate --backend (default torch)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (smoke test)")
    p.add_argument("--out", default=None,
                   help="folder for report.json, report.md, grid.png, abstentions.png and images.npz")
    p.add_argument("--rescore", default=None, metavar="DIR",
                   help="judge the images.npz of an earlier --out folder again (no generation); "
                        "writes to --out, or back into DIR")
    p.set_defaults(func=run_eval)

    try:
        from stablekit.shapes import pretrain
    except ImportError as exc:  # the recipe is not in this build yet
        p = sub.add_parser("pretrain", help="(unavailable) pretrain the embedded shapes model")
        p.set_defaults(func=_unavailable(f"stablekit.shapes.pretrain cannot be imported ({exc})"))
    else:
        p = sub.add_parser("pretrain", help="pretrain the embedded shapes model (resumable)",
                           description="Train the embedded shapes model from nothing, stage by stage; "
                                       "rerun the same command to resume.")
        pretrain.add_arguments(p)
        p.set_defaults(func=pretrain.run)


def _unavailable(reason: str):
    def run(args):
        raise StablekitError(f"{reason}; update stablekit to a build that has it")
    return run


def run_render(args) -> int:
    from stablekit.shapes.captions import render_dataset

    if args.n <= 0:
        raise StablekitError(f"--n must be positive (got {args.n})")
    out = render_dataset(args.out, args.n, args.seed, start=args.start, drop_p=args.drop_p,
                         shape_word=args.shape_word, shapes=tuple(args.shapes), colors=tuple(args.colors),
                         backgrounds=tuple(args.backgrounds), hollow=args.hollow)
    print(f"wrote {args.n} images with captions and metadata.json to {out}")
    return 0


def _expected(folder: Path, files: list[Path]) -> list[dict | None]:
    """Per image, the attributes its caption names: metadata.json first, else NNNNNN.txt."""
    from stablekit.shapes.captions import parse_caption

    meta = folder / "metadata.json"
    if meta.exists():
        named = {r["file"]: r["named"] for r in json.loads(meta.read_text()).get("items", [])}
        if all(f.name in named for f in files):
            return [named[f.name] for f in files]
    out = []
    for f in files:
        txt = f.with_suffix(".txt")
        out.append(parse_caption(txt.read_text()) if txt.exists() else None)
    return out


def run_judge(args) -> int:
    import numpy as np
    from PIL import Image

    from stablekit.shapes.judge import Judge

    folder = Path(args.folder)
    files = sorted(folder.glob("*.png"))
    if not files:
        raise StablekitError(f"no .png files in {folder}; point to a folder of 64x64 images")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    found = Judge.load().judge(images)
    expected = _expected(folder, files)
    attrs = ("shape", "color", "background", "size", "position", "hollow")
    hits = {a: [] for a in attrs}
    scores = []
    for exp, got in zip(expected, found):
        if exp:
            ok = [got.get(a) == v for a, v in exp.items()]
            scores.append(sum(ok) / len(ok))
            for a, v in exp.items():
                hits[a].append(got.get(a) == v)
    if args.json:
        print(json.dumps({"images": [{"file": f.name, "judged": g, "named": e}
                                     for f, g, e in zip(files, found, expected)],
                          "accuracy": {a: float(np.mean(v)) for a, v in hits.items() if v},
                          "adherence": float(np.mean(scores)) if scores else None}, indent=1))
        return 0
    if not scores:
        print(f"{'file':14s} shape     color   background size  position hollow")
        for f, g in zip(files, found):
            print(f"{f.name:14s} {g['shape']!s:9s} {g['color']!s:7s} {g['background']!s:10s} "
                  f"{g['size']!s:5s} {g['position']!s:8s} {g['hollow']}")
        return 0
    print(f"{len(files)} images, {len(scores)} with captions")
    print(f"{'attribute':12s} {'accuracy':>9s} {'named in':>9s}")
    for a in attrs:
        if hits[a]:
            print(f"{a:12s} {np.mean(hits[a]):9.4f} {len(hits[a]):9d}")
    print(f"{'adherence':12s} {np.mean(scores):9.4f}")
    return 0


def run_eval(args) -> int:
    from stablekit.shapes.evaluate import evaluate_model, markdown_table, model_generate_fn, rescore

    if args.rescore:
        report = rescore(args.rescore, args.out)
        print(markdown_table(report))
        print(f"report written to {args.out or args.rescore}")
        return 0
    generate = model_generate_fn(args.model, cfg=args.cfg, backend=args.backend)
    report = evaluate_model(generate, steps=args.steps, sampler=args.sampler, prompt_set=args.prompt_set,
                            out_dir=args.out, limit=args.limit, meta={"cfg": args.cfg, "backend": args.backend},
                            label=Path(args.model).name if args.model else "embedded model")
    print(markdown_table(report))
    if args.out:
        print(f"report written to {args.out}")
    return 0
