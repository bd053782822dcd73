"""Incremental figure driver: evaluates one model / sweep setting at a time through the library
behind `stablekit eval` and rewrites the report after each, so a cut-off run still leaves results.
usage: drive.py OUT METRICS N JUDGE_LIMIT STEPS SWEEP_JSON MODEL..."""
import json
import sys
import time

import torch

torch.set_num_threads(1)
import stablekit
from stablekit.evaluate.report import write_report
from stablekit.evaluate.runner import EvalConfig, Evaluation, checkpoint_step, model_label

out, metrics, n, jl, steps, sweep = sys.argv[1], tuple(sys.argv[2].split(",")), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
models = sys.argv[7:] or [None]
cfg = EvalConfig(models=models, metrics=metrics, n=n, judge_limit=jl, steps=steps, images_per_prompt=4,
                 loss_n=32, sweep=sweep or [{}])
ev = Evaluation(cfg)
rows, samples = [], {}
for model in models:
    pipe = stablekit.load(model, progress=False)
    for setting in cfg.sweep:
        ev.config.sweep = [setting]
        t = time.time()
        r, s = ev.evaluate_pipeline(pipe, model_label(model), str(model or "embedded"), checkpoint_step(model))
        rows += r
        samples.update(s)
        cfg.sweep = sweep or [{}]
        write_report({"config": {**vars(cfg), "models": models}, "rows": rows, "samples": samples}, out)
        print(f"[drive] {model_label(model)} {setting} {time.time() - t:.0f} s wall", flush=True)
    ev.config.sweep = sweep or [{}]
print("[drive] done", flush=True)
