"""`stablekit tune METHOD`: search training settings with Optuna on an eval metric of the trained model.

    stablekit tune lora --data DIR --out runs/tune --metric adherence --trials 12 \\
        --space lr=1e-5..1e-2:log rank=2,4,8 steps=100..400 --set batch_size=8 eval_prompts=p.jsonl
    stablekit tune lora ... --storage postgresql://user@host/db     (several machines, one study)

Each trial trains in OUT/trials/trial-NNNN/; the study is in OUT/study.db (or --storage). Run the
same command again to resume: finished trials are kept, a trial whose process died is re-run and
its training resumes from its checkpoint. OUT/tune.md holds the table and the best settings,
OUT/tune.png the plot, OUT/tune.json everything.
"""
from __future__ import annotations

import argparse

from stablekit.train.methods import METHODS


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="hyper-parameter search over training settings (Optuna) on an eval metric",
                              description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=list(METHODS), metavar="METHOD", help=f"training method: {', '.join(METHODS)}")
    p.add_argument("--space", nargs="+", required=True, metavar="NAME=RANGE",
                   help="searched settings: NAME=LOW..HIGH (int when both ends are), NAME=LOW..HIGH:log, or NAME=A,B,C")
    p.add_argument("--metric", required=True,
                   help="eval metric to optimise: fid, kid, loss, clip (lower/higher is better as usual), "
                        "adherence, diversity or accuracy_<attribute> (shapes judge)")
    p.add_argument("--trials", type=int, default=10, help="completed trials wanted in the study (default 10)")
    p.add_argument("--data", default=None, help="training data (as for stablekit train)")
    p.add_argument("--model", default=None, help="model to train (default: the embedded shapes model)")
    p.add_argument("--out", default="runs/tune", help="study folder: trials/, study.db, tune.md/json/png (default runs/tune)")
    p.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", dest="settings",
                   help="fixed training settings for every trial, e.g. steps=200 batch_size=8 eval_metrics=judge "
                        "eval_prompts=FILE (any 'stablekit train METHOD --print-config' key)")
    p.add_argument("--config", default=None, metavar="TOML", help="training settings file for every trial")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL (default sqlite:///OUT/study.db; e.g. postgresql://... for several machines)")
    p.add_argument("--study-name", default=None, help="study name in the storage (default METHOD-METRIC)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--prune", action="store_true",
                   help="stop poor trials early (median rule) on intermediate evaluations; needs --set eval_every=N")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not start with a trial at the method's defaults")
    p.set_defaults(func=run)


def run(args) -> int:
    from stablekit.evaluate.tune import TuneConfig, parse_settings, parse_space, tune
    from stablekit.evaluate.tune_report import markdown

    base = parse_settings(args.settings)
    for name in ("data", "model"):
        if getattr(args, name):
            base[name] = getattr(args, name)
    cfg = TuneConfig(method=args.method, space=parse_space(args.space), metric=args.metric, out=args.out,
                     trials=args.trials, base=base, config=args.config, storage=args.storage,
                     study_name=args.study_name, seed=args.seed, prune=args.prune, baseline=args.baseline)
    summary = tune(cfg)
    print(markdown(summary), end="")
    print(f"wrote {args.out}/tune.md, tune.json and tune.png")
    return 0
