"""Evaluation inside training: `stablekit train METHOD ... --eval-every N [--eval-metrics ...] [--keep-best M]`.

Every N steps (and at the last step) the model being trained -- the in-memory components with
the LoRA injected or the new embedding active -- is scored with the same code as `stablekit eval`
(runner.Evaluation: the reference set, its features and the scorers are built once per run).
The figures join the step's row as `eval/<metric>` (so metrics.jsonl and TensorBoard log them
beside the loss), a plot `<run>/eval.png` is redrawn, and with keep_best the artefact is
exported whenever the chosen metric improves, as `<out>/<name>-best.safetensors` (files are
written to a temporary folder and moved into place, so a kill mid-export never leaves a torn
best file), with `<run>/best.json` recording metric, value and step (read back on resume).

Evaluation runs inside `torch.random.fork_rng`, so the training run is the same with or without it
(LoRA dropout draws from the global generator). Weights are the raw trained ones, not the EMA.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stablekit.errors import StablekitError

# which way is better; any accuracy_<attribute> is higher-better too
LOWER_IS_BETTER = {"fid", "kid", "loss", "seconds_per_image", "no_object"}
HIGHER_IS_BETTER = {"adherence", "diversity", "clip"}


@dataclass
class TrainingEvalSettings:
    """The eval_* settings of a training run (TrainConfig holds them; see cli/train.py for help)."""

    every: int
    metrics: tuple
    prompts: str = ""
    reference: str = ""
    n: int = 32
    steps: int = 20
    cfg: float = 0.0  # 0: the model's default
    clip: str = ""
    judge_limit: int = 0  # 0: the whole judge prompt set
    keep_best: str = ""


def parse_metrics(text: str) -> tuple:
    from stablekit.evaluate.runner import METRICS

    metrics = tuple(m.strip() for m in str(text).split(",") if m.strip())
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise StablekitError(f"bad eval metrics {text!r}; choose a comma-separated subset of {','.join(METRICS)}")
    return metrics


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is; an unknown name is a one-line error."""
    name = metric.removeprefix("eval/")
    if name in LOWER_IS_BETTER:
        return -1
    if name in HIGHER_IS_BETTER or name.startswith("accuracy_"):
        return 1
    raise StablekitError(f"cannot keep the best checkpoint by {metric!r}: use one of "
                         f"{', '.join(sorted(LOWER_IS_BETTER | HIGHER_IS_BETTER))} or accuracy_<attribute>")


def settings_from(tc) -> TrainingEvalSettings | None:
    """The eval settings of a TrainConfig, or None when eval_every is 0."""
    if not tc.eval_every:
        return None
    s = TrainingEvalSettings(every=tc.eval_every, metrics=parse_metrics(tc.eval_metrics), prompts=tc.eval_prompts,
                             reference=tc.eval_reference, n=tc.eval_n, steps=tc.eval_steps, cfg=tc.eval_cfg,
                             clip=tc.eval_clip, judge_limit=tc.eval_judge_limit, keep_best=tc.keep_best)
    if s.keep_best:
        direction(s.keep_best)
    return s


def build_evaluation(s: TrainingEvalSettings, shapes: bool, log=print, prompt_hook=None):
    """A runner.Evaluation for these settings. It fails now, before any training step, on a bad
    prompt file, CLIP folder, reference folder or missing Inception weights; the reference set
    and its features are computed here once for the whole run."""
    from stablekit.evaluate.data import read_prompts
    from stablekit.evaluate.runner import EvalConfig, Evaluation

    if s.prompts:
        read_prompts(s.prompts)
    config = EvalConfig(metrics=s.metrics, n=max(2, s.n), prompts=s.prompts or None, reference=s.reference or None,
                        steps=s.steps, cfg=s.cfg or None, clip=s.clip or None, judge_limit=s.judge_limit or None,
                        loss_n=max(2, s.n), samples=0)
    evaluation = Evaluation(config, log=log, prompt_hook=prompt_hook)
    if {"fid", "kid", "loss"} & set(s.metrics):
        evaluation.reference(shapes)
    if {"fid", "kid"} & set(s.metrics):
        evaluation.reference_features(shapes)
    return evaluation


class EvalHook:
    """on_step for train.loop.TrainHooks: evaluate every `every` steps and at `last_step`, keep the best."""

    def __init__(self, settings: TrainingEvalSettings, evaluation, run_dir, last_step: int,
                 save_best: Callable[[], Path] | None = None, log=print):
        self.s, self.evaluation, self.run_dir, self.last_step = settings, evaluation, Path(run_dir), last_step
        self.save_best, self.log = save_best, log
        self.best = self._read_best()

    def _read_best(self) -> dict | None:
        path = self.run_dir / "best.json"
        if self.s.keep_best and path.is_file():
            best = json.loads(path.read_text())
            if best.get("metric") == self.s.keep_best:
                return best
        return None

    def __call__(self, step: int, row: dict, strategy) -> None:
        if step % self.s.every and step != self.last_step:
            return
        import torch

        from stablekit.evaluate.runner import evaluate_components

        if hasattr(strategy, "write"):  # textual inversion: put the trained vectors into the embedding matrix
            strategy.write()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            metrics = evaluate_components(self.evaluation, strategy.components, step)
        for key, value in metrics.items():
            if key not in ("step", "n", "judge_n", "loss_n") and math.isfinite(value):
                row[f"eval/{key}"] = float(value)
        self._plot(row)
        if self.s.keep_best:
            self._keep_best(step, row)

    def _keep_best(self, step: int, row: dict) -> None:
        name = self.s.keep_best.removeprefix("eval/")
        value = row.get(f"eval/{name}")
        if value is None:
            raise StablekitError(f"--keep-best {name}: the evaluation gave no such metric (it gave "
                                 f"{', '.join(k[5:] for k in row if k.startswith('eval/'))}); add it to --eval-metrics")
        if self.best is not None and direction(name) * (value - self.best["value"]) <= 0:
            return
        artefact = self.save_best() if self.save_best is not None else None
        self.best = {"metric": self.s.keep_best, "value": value, "step": step,
                     "artefact": str(artefact) if artefact else None}
        atomic_write(self.run_dir / "best.json", json.dumps(self.best, indent=2))
        self.log(f"[eval] step {step}: best {name} so far ({value:.4g})" + (f" -> {artefact}" if artefact else ""))

    def _plot(self, row: dict) -> None:
        """Redraw <run>/eval.png from the logged history plus this row (metric vs step, one panel each)."""
        rows = [json.loads(line) for line in _lines(self.run_dir / "metrics.jsonl")] + [row]
        keys = sorted({k for r in rows for k in r if k.startswith("eval/")} - {"eval/seconds_per_image",
                                                                              "eval/judge_seconds_per_image"})
        if not keys:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            ax.set_title(key[5:])
            ax.set_xlabel("step")
        fig.tight_layout()
        tmp = self.run_dir / ".eval.png.tmp"
        fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        os.replace(tmp, self.run_dir / "eval.png")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def move_into_place(tmp_dir: Path, out: Path) -> list[Path]:
    """Move every entry of tmp_dir into out under the same name, replacing what is there.

    Files move with one os.replace (atomic); a folder (the diffusers copy of a fine-tune) is
    swapped by two renames, so readers see the old or the new folder, never a half-written one.
    """
    moved = []
    for entry in sorted(tmp_dir.iterdir()):
        dest = out / entry.name
        if entry.is_dir() and dest.exists():
            old = out / f".{dest.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(entry, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, dest)
        moved.append(dest)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return moved
