"""Evaluate models (or the checkpoints of a run) on one prompt set: the library behind `stablekit eval`.

Generation goes only through the public API (`stablekit.load`, `Pipeline.generate(output="np")`).
Per model and per sampler setting of a sweep, one row of metrics:
- fid / kid: generated vs reference features (the shapes extractor in the shapes world, else the
  FID Inception from a local weights file);
- clip: CLIP score of the generated images against their prompts (a local CLIP model);
- loss: the held-out denoising loss (per model; it does not depend on sampler settings);
- judge: the shapes judge's adherence and diversity on the eval-v1 prompt set;
- seconds_per_image: wall time of the generation for fid/kid/clip, after one warm-up image.
"""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stablekit.errors import StablekitError

METRICS = ("fid", "kid", "clip", "loss", "judge")
SWEEP_KEYS = {"sampler": str, "steps": int, "cfg": float, "schedule": str}


@dataclass
class EvalConfig:
    """Everything an evaluation needs; built from CLI flags or by the trainer."""

    models: list = field(default_factory=lambda: [None])  # None: the embedded model
    metrics: tuple = ("fid", "kid", "loss", "judge")
    n: int = 200  # images for fid/kid/clip
    prompts: str | None = None  # prompt file (default: the reference's captions)
    reference: str | None = None  # reference image folder (default in the shapes world: rendered)
    steps: int = 20
    cfg: float | None = None  # None: the pipeline's default
    sampler: str | None = None
    images_per_prompt: int = 1  # >1 batches seeds per prompt (faster; fewer distinct prompts)
    features: str = "auto"  # auto | shapes | inception
    inception: str | None = None
    clip: str | None = None
    judge_prompt_set: str = "eval-v1"
    judge_limit: int | None = None  # first prompts only (smoke runs; not the benchmark's figure)
    loss_n: int = 64
    loss_timesteps: int = 10
    sweep: list = field(default_factory=lambda: [{}])  # settings dicts (see parse_sweep)
    samples: int = 16  # images per row kept for the report's grids


def parse_sweep(specs: list[str]) -> list[dict]:
    """["sampler=Euler,DPM++ 2M", "steps=10,20"] -> the cartesian product as settings dicts."""
    axes = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or key not in SWEEP_KEYS or not values.strip():
            raise StablekitError(f"bad --sweep {spec!r}; write KEY=V1,V2 with KEY one of {', '.join(SWEEP_KEYS)}")
        try:
            axes[key] = [SWEEP_KEYS[key](v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise StablekitError(f"bad --sweep {spec!r}: {key} takes {SWEEP_KEYS[key].__name__} values") from None
    if not axes:
        return [{}]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def checkpoint_step(path) -> int | None:
    """The training step in a checkpoint's name (step-1000, checkpoint_1000, ckpt1000, 000500.safetensors)."""
    if path is None:
        return None
    name = Path(str(path)).name
    m = re.search(r"(?:step|checkpoint|ckpt|iter)[-_]?(\d+)", name, re.I) or re.fullmatch(r"(\d+)(?:\.\w+)?", name)
    return int(m.group(1)) if m else None


def model_label(path) -> str:
    return "embedded" if path in (None, "", "embedded") else Path(str(path)).name


def generate(pipe, prompts: list[str], seeds: list[int], settings: dict, per_prompt: int = 1) -> tuple[np.ndarray, float]:
    """uint8 images [len(prompts) * per_prompt, H, W, 3] and seconds per image (after a warm-up)."""
    from stablekit.evaluate.fid import quantize

    pipe.generate(prompts[0], seed=seeds[0], output="np", **{**settings, "steps": 1})  # warm-up, discarded
    images, t0 = [], time.perf_counter()
    for p, s in zip(prompts, seeds):
        images.extend(pipe.generate(p, seed=s, batch_size=per_prompt, output="np", **settings))
    seconds = (time.perf_counter() - t0) / max(1, len(images))
    return quantize(np.stack(images)), seconds


class Evaluation:
    """Holds what is shared between models (reference, its features, scorers) while rows are made."""

    def __init__(self, config: EvalConfig, log=print, prompt_hook=None):
        unknown = set(config.metrics) - set(METRICS)
        if unknown:
            raise StablekitError(f"unknown metric(s) {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
        if "clip" in config.metrics and not config.clip:
            raise StablekitError("the clip metric needs a local CLIP model: pass --clip DIR (a transformers CLIPModel folder)")
        self.config, self.log = config, log
        # rewrites every prompt before generation (textual inversion expands its token into its vectors)
        self.prompt_hook = prompt_hook or (lambda p: p)
        self._reference, self._ref_features, self._extractor, self._clip = None, None, None, None
        if "clip" in config.metrics:  # fail before any generation if the model folder is wrong
            from stablekit.evaluate.clip_score import ClipScorer

            self._clip = ClipScorer(config.clip)

    def reference(self, shapes: bool):
        if self._reference is None:
            from stablekit.evaluate.data import folder_reference, shapes_reference

            c = self.config
            if c.reference:
                self._reference = folder_reference(c.reference, limit=max(c.n, c.loss_n))
            elif shapes:
                self._reference = shapes_reference(max(c.n, c.loss_n))
            else:
                raise StablekitError("fid, kid and loss need reference images outside the shapes world; pass --reference DIR")
        return self._reference

    def extractor(self, shapes: bool):
        if self._extractor is None:
            kind = self.config.features
            if kind == "auto":
                kind = "inception" if self.config.inception or not shapes else "shapes"
            if kind == "shapes":
                from stablekit.evaluate.shapes_features import ShapesFeatures

                self._extractor = ShapesFeatures()
            elif kind == "inception":
                from stablekit.evaluate.inception import WEIGHTS_HINT, InceptionFeatures

                if not self.config.inception:
                    raise StablekitError(f"FID/KID with Inception features need its weights; {WEIGHTS_HINT}")
                self._extractor = InceptionFeatures(self.config.inception)
            else:
                raise StablekitError(f"unknown --features {kind!r}; use auto, shapes or inception")
        return self._extractor

    def reference_features(self, shapes: bool) -> np.ndarray:
        if self._ref_features is None:
            self._ref_features = self.extractor(shapes)(self.reference(shapes).images[:self.config.n])
        return self._ref_features

    def prompts(self, shapes: bool) -> tuple[list[str], list[int]]:
        c = self.config
        if c.prompts:
            from stablekit.evaluate.data import read_prompts

            prompts, seeds = read_prompts(c.prompts)
        else:
            ref = self.reference(shapes)
            prompts, seeds = ref.captions, ref.seeds
        k = max(1, c.images_per_prompt)
        count = -(-c.n // k)
        return prompts[:count], [s * k for s in seeds[:count]]  # seeds spaced so batches never overlap

    def run(self, on_progress=None, done: dict | None = None) -> dict:
        """All rows (model x sweep setting) plus the config; see write_report for the files.

        on_progress(result) is called after every row with the rows so far (the CLI rewrites its
        report, so a run cut off after hours still leaves every finished row). `done` maps row
        keys to (row, sample images) of an earlier run of the same evaluation (`--resume`): those
        rows are kept as they were and not computed again; a model with nothing left is not loaded."""
        import stablekit

        done = done or {}
        rows, samples = [], {}

        def keep(row, images):
            rows.append(row)
            samples[row_key(row)] = images
            if on_progress:
                on_progress(self.result(rows, samples))

        for model in self.config.models:
            label = model_label(model)
            todo = []
            for setting in self.config.sweep:
                key = row_key({"model": label, "settings": self._settings(setting)})
                if key in done:
                    keep(*done[key])
                else:
                    todo.append(setting)
            if not todo:
                self.log(f"[eval] {label}: every row done earlier (resumed)")
                continue
            self.log(f"[eval] loading {label}")
            pipe = stablekit.load(None if model in (None, "", "embedded") else model, progress=False)
            self.evaluate_pipeline(pipe, label, str(model or "embedded"), checkpoint_step(model), sweep=todo, on_row=keep)
        return self.result(rows, samples)

    def result(self, rows: list, samples: dict) -> dict:
        return {"config": {k: v for k, v in vars(self.config).items()}, "rows": list(rows), "samples": dict(samples)}

    def evaluate_pipeline(self, pipe, label: str, path: str = "", step: int | None = None, sweep: list | None = None,
                          on_row=None) -> tuple[list, dict]:
        """Rows (one per sweep setting; `sweep` defaults to the config's) and sample images for one
        loaded Pipeline; on_row(row, images) after each row."""
        c = self.config
        shapes = pipe.components.arch == "shapes"
        if {"fid", "kid"} & set(c.metrics):  # fail on a missing reference or weights before generating
            self.reference(shapes)
            self.extractor(shapes)
        loss = self._loss(pipe.components, shapes) if "loss" in c.metrics else None
        rows, samples = [], {}
        for setting in c.sweep if sweep is None else sweep:
            row, images = self._row(pipe, shapes, setting)
            row.update(model=label, path=path, step=step, **(loss or {}))
            rows.append(row)
            samples[row_key(row)] = images
            self.log(f"[eval] {row_key(row)}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                             if isinstance(v, float)))
            if on_row:
                on_row(row, images)
        return rows, samples

    def _settings(self, setting: dict) -> dict:
        c = self.config
        s = {"steps": c.steps}
        if c.cfg is not None:
            s["cfg"] = c.cfg
        if c.sampler:
            s["sampler"] = c.sampler
        s.update(setting)
        return s

    def _row(self, pipe, shapes: bool, setting: dict) -> tuple[dict, np.ndarray]:
        from stablekit.evaluate.fid import fid, kid

        c, settings = self.config, self._settings(setting)
        row = {"settings": settings}
        images = np.zeros((0, 8, 8, 3), np.uint8)
        if {"fid", "kid", "clip"} & set(c.metrics):
            prompts, seeds = self.prompts(shapes)
            images, row["seconds_per_image"] = generate(pipe, [self.prompt_hook(p) for p in prompts], seeds,
                                                        settings, c.images_per_prompt)
            images = images[:c.n]
            row["n"] = len(images)
            if {"fid", "kid"} & set(c.metrics):
                feats = self.extractor(shapes)(images)
                ref = self.reference_features(shapes)
                row["features"] = self.extractor(shapes).name
                if "fid" in c.metrics:
                    row["fid"] = fid(feats, ref)
                if "kid" in c.metrics:
                    row["kid"], row["kid_std"] = kid(feats, ref)
            if "clip" in c.metrics:
                per_image = [p for p in prompts for _ in range(max(1, c.images_per_prompt))][:len(images)]
                row["clip"] = self._clip(images, per_image)
        if "judge" in c.metrics:
            if not shapes:
                self.log("[eval] judge skipped: not a shapes-world model")
            else:
                judged, judge_images = self._judge(pipe, settings)
                row.update(judged)
                if not len(images):
                    images = judge_images
        return row, images[:c.samples]

    def _judge(self, pipe, settings: dict) -> tuple[dict, np.ndarray]:
        from stablekit.shapes.evaluate import evaluate_images
        from stablekit.shapes.prompts import load_prompt_set

        items = judge_items(self.config.prompts) or load_prompt_set(self.config.judge_prompt_set)
        items = items[:self.config.judge_limit]
        images, seconds = generate(pipe, [self.prompt_hook(i.prompt) for i in items], [i.seed for i in items], settings)
        report = evaluate_images(items, images)
        out = {"adherence": report["adherence"], "diversity": report["diversity_overall"],
               "judge_n": report["n"], "no_object": report["no_object"], "judge_seconds_per_image": seconds}
        out.update({f"accuracy_{a}": v for a, v in report["accuracy"].items()})
        return out, images

    def _loss(self, components, shapes: bool) -> dict:
        from stablekit.evaluate.loss import heldout_loss

        ref = self.reference(shapes)
        n = min(self.config.loss_n, len(ref.images))
        rep = heldout_loss(components, ref.images[:n], ref.captions[:n], timesteps=self.config.loss_timesteps)
        return {"loss": rep.loss, "loss_per_timestep": rep.per_timestep, "loss_n": rep.n}


@dataclass(frozen=True)
class JudgedPrompt:
    """A prompt the judge can score: what evaluate_images reads of a shapes PromptItem."""

    id: int
    prompt: str
    seed: int
    named: dict


def judge_items(path) -> list[JudgedPrompt]:
    """Judge prompts from a .jsonl whose rows carry "named" attributes, e.g.
    {"prompt": "a red outline circle", "seed": 3, "named": {"shape": "circle", "color": "red", "hollow": true}};
    [] for any other prompt file (the judge then uses the eval-v1 set)."""
    if not path or Path(path).suffix != ".jsonl" or not Path(path).is_file():
        return []
    import json

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or not all(isinstance(r, dict) and isinstance(r.get("named"), dict) for r in rows):
        return []
    return [JudgedPrompt(i, str(r["prompt"]), int(r.get("seed", 1000 + i)), dict(r["named"])) for i, r in enumerate(rows)]


def row_key(row: dict) -> str:
    """A row's name: model label plus the swept settings."""
    extra = " ".join(f"{k}={v}" for k, v in row.get("settings", {}).items())
    return f"{row['model']} {extra}".strip()


def evaluate_components(evaluation: Evaluation, components, step: int, label: str = "") -> dict:
    """Eval-in-training hook: score the in-memory model at `step` and return its metrics
    ({metric: value}, first sweep setting). Build the Evaluation once per run so the reference
    set, its features and the scorers are computed once, then call this every N steps."""
    from stablekit.generate.pipeline import Pipeline

    was_training = components.unet.training
    rows, _ = evaluation.evaluate_pipeline(Pipeline(components, progress=False), label or f"step-{step}",
                                           step=step)
    components.unet.train(was_training)  # generation put the UNet in eval mode
    return {k: v for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate(config: EvalConfig, log=print, on_progress=None, done: dict | None = None) -> dict:
    """Run the evaluation; returns {"config", "rows", "samples"} (see Evaluation.run for the rest)."""
    return Evaluation(config, log).run(on_progress, done)
