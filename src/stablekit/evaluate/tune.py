"""Hyper-parameter search over training settings with Optuna: the library behind `stablekit tune`.

Each trial is one `stablekit.train.run(method, ...)` in its own folder `<out>/trials/trial-NNNN/`,
scored by an eval metric of the trained model (evaluation inside training, at the last step; with
eval_every set also along the way, which `prune` uses to stop poor trials early). The study lives
in an Optuna storage: SQLite at `<out>/study.db` by default, or any database URL Optuna accepts
(PostgreSQL, MySQL), so several machines can run trials of one study.

Resuming: run the same command again. Completed trials are kept and only the missing ones run
(`trials` is the number of completed trials wanted). A trial whose process died is noticed by
its stopped heartbeat (after GRACE seconds), marked failed and re-run with the same settings in
the same folder, where the training itself resumes from its last checkpoint.

The baseline (on by default): the first trial uses the method's defaults (plus `base` settings)
for every searched parameter, so the table shows whether the search beat the defaults.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from stablekit.errors import StablekitError

HEARTBEAT, GRACE = 20, 60  # seconds: a trial with no heartbeat for GRACE is taken for dead and re-run
UNTIL_LAST_STEP = 10**9  # eval_every when the user gives none: only the final evaluation runs


@dataclass
class Param:
    """One searched setting: a float or int range (optionally log-scaled) or a list of choices."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


@dataclass
class TuneConfig:
    method: str
    space: list  # of Param
    metric: str  # an eval metric: fid, kid, loss, clip, adherence, diversity, accuracy_<attr>
    out: str = "runs/tune"
    trials: int = 10  # completed trials wanted in the study (resuming counts the ones done)
    base: dict = field(default_factory=dict)  # fixed training settings for every trial
    config: str | None = None  # a training TOML (as `stablekit train --config`)
    storage: str | None = None  # Optuna storage URL; None: sqlite:///<out>/study.db
    study_name: str | None = None  # None: "<method>-<metric>"
    seed: int = 0  # TPE sampler seed
    prune: bool = False  # median pruning on the intermediate evaluations (needs eval_every in base)
    baseline: bool = True  # first trial = the defaults


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return _number(text.strip())
    except ValueError:
        return text.strip()


def parse_space(specs: list[str]) -> list[Param]:
    """["lr=1e-5..1e-3:log", "rank=2,4,8", "steps=100..400"] -> Params (int range when both ends are ints)."""
    params = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        name = name.strip().replace("-", "_")
        log = rest.endswith(":log")
        rest = rest.removesuffix(":log").strip()
        try:
            if not sep or not name or not rest:
                raise ValueError
            if ".." in rest:
                low, high = (_number(x.strip()) for x in rest.split("..", 1))
                if not low < high or (log and low <= 0):
                    raise ValueError
                params.append(Param(name, low, high, log))
            else:
                choices = tuple(_value(v) for v in rest.split(",") if v.strip())
                if not choices or log:
                    raise ValueError
                params.append(Param(name, choices=choices))
        except ValueError:
            raise StablekitError(f"bad --space {spec!r}; write NAME=LOW..HIGH, NAME=LOW..HIGH:log (LOW > 0) "
                                 f"or NAME=A,B,C (e.g. lr=1e-5..1e-3:log rank=2,4,8 steps=100..400)") from None
    if not params:
        raise StablekitError("nothing to search: give --space NAME=LOW..HIGH or NAME=A,B,C")
    return params


def parse_settings(specs: list[str]) -> dict:
    """["steps=200", "eval_metrics=judge"] -> {"steps": 200, "eval_metrics": "judge"}."""
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise StablekitError(f"bad --set {spec!r}; write NAME=VALUE with a training setting's name")
        out[key.strip().replace("-", "_")] = _value(value)
    return out


def metric_sources(metric: str) -> str:
    """The eval metrics that produce `metric` (judge gives adherence, diversity and accuracy_*)."""
    name = metric.removeprefix("eval/")
    if name in ("fid", "kid", "loss", "clip"):
        return name
    return "judge"


def study_direction(metric: str) -> str:
    from stablekit.evaluate.in_training import direction

    return "maximize" if direction(metric) > 0 else "minimize"


def baseline_params(cfg: TuneConfig) -> dict:
    """The searched settings' values in a run with the base settings only (method defaults filled in)."""
    from dataclasses import asdict

    from stablekit.train.methods import resolve

    s, tc = resolve(cfg.method, cfg.config, check=False, **cfg.base)
    known = {**asdict(s), **tc.to_dict()}
    return {p.name: known[p.name] for p in cfg.space}


def check(cfg: TuneConfig) -> None:
    """Fail before any trial on an unknown setting or metric."""
    from stablekit.train.methods import setting_fields

    study_direction(cfg.metric)
    own, loop = setting_fields(cfg.method)
    names = {f.name for f in own + loop}
    unknown = sorted(({p.name for p in cfg.space} | set(cfg.base)) - names)
    if unknown:
        raise StablekitError(f"unknown training setting(s) {unknown} for {cfg.method}; see "
                             f"'stablekit train {cfg.method} --print-config'")
    if cfg.trials < 1:
        raise StablekitError(f"--trials must be >= 1 (got {cfg.trials})")
    if cfg.prune and not cfg.base.get("eval_every"):
        raise StablekitError("--prune needs intermediate evaluations: add --set eval_every=N")


def open_study(cfg: TuneConfig):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    url = cfg.storage or f"sqlite:///{Path(cfg.out).resolve() / 'study.db'}"
    try:
        storage = RDBStorage(url, heartbeat_interval=HEARTBEAT, grace_period=GRACE,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # a bad URL or unreachable database: one line, not a SQLAlchemy trace
        raise StablekitError(f"cannot open the study storage {url!r}: {str(exc).splitlines()[0]}") from None
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if cfg.prune else optuna.pruners.NopPruner()
    return optuna.create_study(storage=storage, study_name=cfg.study_name or f"{cfg.method}-{cfg.metric}",
                               direction=study_direction(cfg.metric), load_if_exists=True, pruner=pruner)


def trial_folder(cfg: TuneConfig, trial) -> Path:
    """A retried trial (its first process died) reuses its folder, so its training resumes."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return Path(cfg.out) / "trials" / f"trial-{(first if first is not None else trial.number):04d}"


def objective(cfg: TuneConfig, log=print):
    import optuna

    import stablekit.train
    from stablekit.train.loop import TrainHooks

    key = f"eval/{cfg.metric.removeprefix('eval/')}"

    def run_trial(trial) -> float:
        params = {p.name: p.suggest(trial) for p in cfg.space}
        folder = trial_folder(cfg, trial)
        settings = {"eval_every": UNTIL_LAST_STEP, "eval_metrics": metric_sources(cfg.metric), **cfg.base, **params,
                    "out": str(folder)}
        trial.set_user_attr("folder", str(folder))
        log(f"[tune] trial {trial.number}: {params}")
        pruned = {"step": None}

        def on_step(step, row, strategy):
            if key in row:
                trial.report(row[key], step)
                if trial.should_prune():
                    pruned["step"] = step

        hooks = TrainHooks(on_step=on_step, should_stop=lambda: pruned["step"] is not None)
        t0 = time.time()
        result = stablekit.train.run(cfg.method, config=cfg.config, progress=False, hooks=hooks, **settings)
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        if result["stopped"]:
            raise optuna.TrialPruned(f"pruned at step {pruned['step']}")
        values = [row[key] for row in result["history"] if key in row]
        if not values or not math.isfinite(values[-1]):
            raise StablekitError(f"the trials' evaluation gives no {cfg.metric}; set --set eval_metrics=... to a "
                                 f"metric set that produces it (now {settings['eval_metrics']})")
        trial.set_user_attr("artefact", result["artefact"])
        return float(values[-1])

    return run_trial


def tune(cfg: TuneConfig, log=print) -> dict:
    """Run (or resume) the study until it holds cfg.trials completed trials; returns the summary
    (also written to <out>/tune.json, tune.md and tune.png)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    import warnings

    check(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    study = open_study(cfg)
    # a resumed (or second-machine) session must not replay the first session's random draws
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    if cfg.baseline:
        defaults = baseline_params(cfg)
        for p in cfg.space:  # the default is always a candidate, or Optuna could not replay the baseline
            if p.choices and defaults[p.name] not in p.choices:
                p.choices = (*p.choices, defaults[p.name])
        if not any(t.user_attrs.get("baseline") for t in study.trials):
            study.enqueue_trial(defaults, user_attrs={"baseline": True})
    done = sum(t.state == TrialState.COMPLETE for t in study.trials)
    summary = None
    if done < cfg.trials:
        def write(study, _trial):
            nonlocal summary
            summary = write_summary(study, cfg)

        # MaxTrialsCallback counts the whole study, so several machines stop together at `trials`
        study.optimize(objective(cfg, log), n_trials=cfg.trials - done, catch=(),
                       callbacks=[MaxTrialsCallback(cfg.trials, states=(TrialState.COMPLETE,)), write])
    return write_summary(study, cfg) if summary is None or done >= cfg.trials else summary


def write_summary(study, cfg: TuneConfig) -> dict:
    """tune.json (every trial, the best), tune.md (the table) and tune.png (value per trial)."""
    from optuna.trial import TrialState

    from stablekit.evaluate.tune_report import markdown, plot

    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
               "baseline": bool(t.user_attrs.get("baseline")), "seconds": t.user_attrs.get("seconds"),
               "folder": t.user_attrs.get("folder"), "artefact": t.user_attrs.get("artefact")}
              for t in study.trials]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params, "artefact": b.user_attrs.get("artefact")}
    base = next((t for t in trials if t["baseline"] and t["state"] == "complete"), None)
    summary = {"study": study.study_name, "method": cfg.method, "metric": cfg.metric,
               "direction": study_direction(cfg.metric), "base_settings": cfg.base, "trials": trials, "best": best,
               "baseline": base}
    out = Path(cfg.out)
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "tune.md").write_text(markdown(summary))
    if complete:
        plot(summary, out / "tune.png")
    return summary
