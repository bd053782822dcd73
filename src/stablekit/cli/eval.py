"""`stablekit eval`: FID, KID, CLIP score, held-out loss and judge metrics for one or more models.

    stablekit eval [--model M ...] [--prompts FILE] [--reference DIR] [--metrics fid,kid,clip,loss,judge]
                   [--n N] [--out DIR] [--sweep sampler=A,B steps=10,20 cfg=3,7] [--resume]

Writes DIR/report.json (metric -> value per model), DIR/report.html (tables, plots, sample grids;
self-contained) and prints a Markdown summary. The report is rewritten after every row, so a long run
that is cut off keeps what it finished; `--resume` then computes only the missing rows.
"""
from __future__ import annotations

from pathlib import Path

from stablekit.errors import StablekitError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="FID/KID, CLIP score, held-out loss and judge metrics of models; sweeps",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="model path for stablekit.load, or 'embedded'; repeat for several models or the "
                        "checkpoints of one run (a step number in the name is plotted). Default: the embedded model")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompts to generate from (.txt one per line, or .jsonl with prompt/seed); "
                        "default: the reference set's captions")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="reference images (with .txt captions or metadata.jsonl for the loss); "
                        "default in the shapes world: rendered images")
    p.add_argument("--metrics", default="fid,kid,loss,judge",
                   help="comma-separated subset of fid,kid,clip,loss,judge (default fid,kid,loss,judge; "
                        "judge only for shapes-world models)")
    p.add_argument("--n", type=int, default=200, help="images generated per model/setting for FID/KID/CLIP (default 200)")
    p.add_argument("--out", default="eval-report", metavar="DIR", help="report folder (default eval-report)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the pipeline's)")
    p.add_argument("--sampler", default=None, help="sampler name (default: the pipeline's)")
    p.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="grid over sampler, steps, cfg, schedule: e.g. --sweep sampler=Euler,'DPM++ 2M' steps=10,20 cfg=3,7")
    p.add_argument("--images-per-prompt", type=int, default=1,
                   help="images per prompt in one batch (faster; the prompts used are then N / this)")
    p.add_argument("--features", choices=["auto", "shapes", "inception"], default="auto",
                   help="FID/KID features: the shipped shapes extractor or Inception (auto: shapes for "
                        "shapes-world models unless --inception is given)")
    p.add_argument("--inception", default=None, metavar="FILE",
                   help="pytorch-fid's pt_inception-2015-12-05 weights (.pth or .safetensors)")
    p.add_argument("--clip", default=None, metavar="DIR", help="local transformers CLIPModel folder for --metrics clip")
    p.add_argument("--judge-limit", type=int, default=None,
                   help="judge only the first N prompts of eval-v1 (smoke runs; not the benchmark's figure)")
    p.add_argument("--loss-n", type=int, default=64, help="held-out images for the loss (default 64)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --out (same settings) and compute only the missing ones; "
                        "the report is rewritten after every row either way")
    p.set_defaults(func=run)


def run(args) -> int:
    from stablekit.evaluate.report import previous_rows, write_report
    from stablekit.evaluate.runner import EvalConfig, evaluate, parse_sweep

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.n < 2:
        raise StablekitError(f"--n must be at least 2 (got {args.n}); FID/KID need two or more images")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise StablekitError(f"--out {out} is a file; give a folder")
    config = EvalConfig(models=args.model or [None], metrics=metrics, n=args.n, prompts=args.prompts,
                        reference=args.reference, steps=args.steps, cfg=args.cfg, sampler=args.sampler,
                        images_per_prompt=args.images_per_prompt, features=args.features,
                        inception=args.inception, clip=args.clip, judge_limit=args.judge_limit,
                        loss_n=args.loss_n, sweep=parse_sweep(args.sweep or []))
    done = previous_rows(out, vars(config)) if args.resume else {}
    if done:
        print(f"resuming: {len(done)} row(s) from {out / 'report.json'}")
    result = evaluate(config, on_progress=lambda partial: write_report(partial, out), done=done)
    paths = write_report(result, out)
    print(paths["markdown"])
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0
