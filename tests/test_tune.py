"""`stablekit tune`: Optuna search over training settings on a tiny model (2 trials), resumable."""
from __future__ import annotations

import json
import sys
import types

import pytest
from fixtures import tiny_components
from train_fixtures import FolderImages, write_folder

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.evaluate.tune import Param, TuneConfig, baseline_params, check, parse_settings, parse_space


def test_parse_space_and_settings():
    space = parse_space(["lr=1e-5..1e-2:log", "rank=2,4,8", "steps=10..40", "conv=true,false"])
    assert space == [Param("lr", 1e-5, 1e-2, True), Param("rank", choices=(2, 4, 8)), Param("steps", 10, 40),
                     Param("conv", choices=(True, False))]
    for bad in ["lr", "lr=..", "lr=0..1:log", "lr=3..1", "rank=2,4:log"]:
        with pytest.raises(StablekitError, match="bad --space"):
            parse_space([bad])
    assert parse_settings(["steps=20", "eval-metrics=judge,loss", "lr=1e-3"]) == {
        "steps": 20, "eval_metrics": "judge,loss", "lr": 1e-3}


def test_baseline_is_the_method_defaults_and_bad_names_fail():
    cfg = TuneConfig("lora", parse_space(["lr=1e-5..1e-2:log", "rank=2,4"]), "adherence", base={"steps": 7})
    # the embedded model is a tiny model: its LoRA recipe (train/methods.py TINY_RECIPES) is the baseline
    assert baseline_params(cfg) == {"lr": 3e-3, "rank": 8}
    sd15 = TuneConfig("lora", cfg.space, "adherence", base={"steps": 7, "model": "runs/sd15.safetensors"})
    assert baseline_params(sd15) == {"lr": 1e-4, "rank": 8}  # an SD model keeps the reference defaults
    with pytest.raises(StablekitError, match="unknown training setting"):
        check(TuneConfig("lora", parse_space(["learning_rate=1..2"]), "loss"))
    with pytest.raises(StablekitError, match="keep the best"):
        check(TuneConfig("lora", parse_space(["lr=1..2"]), "speed"))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from stablekit.formats import save_model

    try:
        import stablekit.data  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("stablekit.data")
        stand_in.load_dataset = lambda source, config=None: FolderImages(source)
        monkeypatch.setitem(sys.modules, "stablekit.data", stand_in)
    save_model(tiny_components("sd1"), tmp_path / "tiny.safetensors")
    write_folder(tmp_path / "data", n=4)
    write_folder(tmp_path / "ref", n=2, seed=5)
    return tmp_path


def _tune_args(r, trials: int) -> list[str]:
    return ["tune", "lora", "--model", str(r / "tiny.safetensors"), "--data", str(r / "data"), "--out", str(r / "t"),
            "--metric", "loss", "--space", "lr=1e-4..1e-1:log", "rank=1,2",
            "--set", "steps=2", "batch_size=2", "sample_every=0", "tensorboard=false", "checkpoint_every=100",
            f"eval_reference={r / 'ref'}", "eval_n=2", "--trials", str(trials)]


def test_tune_one_trial_writes_the_study_and_a_rerun_does_nothing(setup, capsys):
    # the quick path (one training): the baseline trial, its artefact and the reports; the full
    # search-and-resume test below is slow (three trainings, about 10 s of CPU)
    r = setup
    assert main(_tune_args(r, 1)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary = json.loads((r / "t" / "tune.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete"] and summary["trials"][0]["baseline"]
    assert summary["trials"][0]["params"] == {"lr": 3e-3, "rank": 8} and summary["best"]["number"] == 0
    assert (r / "t" / "trials" / "trial-0000" / "lora.safetensors").is_file()
    assert "| 0 (defaults) |" in out and (r / "t" / "study.db").is_file() and (r / "t" / "tune.md").is_file()
    assert main(_tune_args(r, 1)) == 0  # complete already: nothing runs, the summary stays
    assert json.loads((r / "t" / "tune.json").read_text())["trials"] == summary["trials"]


@pytest.mark.slow  # three trainings (about 10 s of CPU); the one-trial test above covers the quick path
def test_tune_two_trials_then_resume_adds_one(setup, capsys):
    r = setup
    args = ["tune", "lora", "--model", str(r / "tiny.safetensors"), "--data", str(r / "data"), "--out", str(r / "t"),
            "--metric", "loss", "--space", "lr=1e-4..1e-1:log", "rank=1,2",
            "--set", "steps=2", "batch_size=2", "sample_every=0", "tensorboard=false", "checkpoint_every=100",
            f"eval_reference={r / 'ref'}", "eval_n=2", "--trials", "2"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary = json.loads((r / "t" / "tune.json").read_text())
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"] and summary["direction"] == "minimize"
    # the defaults come first (the tiny model's LoRA recipe: TINY_RECIPES)
    assert trials[0]["baseline"] and trials[0]["params"] == {"lr": 3e-3, "rank": 8}
    assert trials[0]["value"] != trials[1]["value"] and trials[1]["params"]["rank"] in (1, 2, 8)
    assert summary["best"]["value"] == min(t["value"] for t in trials)
    for t in trials:
        assert (r / "t" / "trials" / f"trial-{t['number']:04d}" / "lora.safetensors").is_file()
    assert "| 0 (defaults) |" in out and "best (minimize loss)" in out
    assert (r / "t" / "study.db").is_file() and (r / "t" / "tune.png").stat().st_size > 1000
    # the same command with --trials 3 resumes: the two finished trials stay, one more runs
    assert main(args[:-1] + ["3"]) == 0
    again = json.loads((r / "t" / "tune.json").read_text())["trials"]
    assert len(again) == 3 and again[:2] == trials and again[2]["state"] == "complete"
    assert again[2]["params"] != trials[1]["params"]  # the resumed session draws new settings
    assert main(args[:-1] + ["3"]) == 0  # nothing left to do
    assert len(json.loads((r / "t" / "tune.json").read_text())["trials"]) == 3


def test_tune_errors_are_one_line(setup, capsys):
    r = setup
    base = ["tune", "lora", "--data", str(r / "data"), "--out", str(r / "e"), "--metric", "loss"]
    assert main(base + ["--space", "lr=1e-4..abc"]) == 2
    assert "bad --space" in capsys.readouterr().err
    assert main(base + ["--space", "lr=1e-4..1e-3", "--prune"]) == 2
    assert "eval_every" in capsys.readouterr().err
    assert main(base + ["--space", "lr=1e-4..1e-3", "--storage", "nosuchdb://x"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the study storage" in err and len(err.strip().splitlines()) == 1


def test_a_retried_trial_reuses_the_dead_trials_folder(tmp_path):
    """A trial whose process died is re-run (Optuna's heartbeat retry marks it "failed_trial");
    it must train in the dead trial's folder, so the training resumes from its checkpoint."""
    import optuna

    from stablekit.evaluate.tune import trial_folder

    study = optuna.create_study()
    fresh = study.ask()
    study.tell(fresh, 1.0)
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params={"lr": 1e-3},
                                        distributions={"lr": dist}, system_attrs={"failed_trial": 0}))
    retry = study.ask()
    cfg = TuneConfig("lora", [Param("lr", 1e-4, 1e-2, True)], "loss", out=str(tmp_path))
    assert retry.number == 1 and trial_folder(cfg, retry) == tmp_path / "trials" / "trial-0000"
    assert trial_folder(cfg, study.ask()) == tmp_path / "trials" / "trial-0002"
