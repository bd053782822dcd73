"""Evaluation: FID/KID (fid.py, inception.py, shapes_features.py), CLIP score (clip_score.py),
held-out loss (loss.py), the `stablekit eval` runner and sweeps (runner.py), reports (report.py),
evaluation inside training (in_training.py: `stablekit train --eval-every`), and Optuna
hyper-parameter search (tune.py, tune_report.py: `stablekit tune`). Guide: docs/evaluation.md.
Modules import torch lazily where they can; import what you need:

    from stablekit.evaluate.fid import fid, kid
    from stablekit.evaluate.runner import EvalConfig, evaluate
    from stablekit.evaluate.tune import TuneConfig, tune
"""
