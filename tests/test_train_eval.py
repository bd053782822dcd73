"""Evaluation inside training (`--eval-every`, `--eval-metrics`, `--keep-best`) on tiny models."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from fixtures import tiny_components
from safetensors.torch import load_file
from train_fixtures import FolderImages, TinyImages, write_folder

import stablekit.train
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.evaluate import in_training
from stablekit.evaluate.in_training import EvalHook, TrainingEvalSettings

COMMON = dict(sample_every=0, progress=False, tensorboard=False, batch_size=2, lr=1e-2, checkpoint_every=100, rank=2)


@pytest.fixture
def reference(tmp_path):
    return write_folder(tmp_path / "ref", n=4, seed=5)


def test_eval_every_logs_metrics_beside_the_loss_and_keeps_the_best(tmp_path, reference):
    run = stablekit.train("lora", components=tiny_components("sd1"), dataset=TinyImages(), out=tmp_path / "o",
                          steps=4, eval_every=2, eval_metrics="loss", eval_reference=str(reference), eval_n=2,
                          keep_best="loss", **COMMON)
    rows = run["history"]
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]
    assert all("eval/loss" not in r for r in rows if r["step"] in (1, 3))
    logged = [json.loads(line) for line in (tmp_path / "o" / "lora-training" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("eval/loss") for r in logged] == [r.get("eval/loss") for r in rows]
    assert rows[1]["eval/loss"] != rows[3]["eval/loss"]  # the LoRA in training is what gets evaluated
    best = json.loads((tmp_path / "o" / "lora-training" / "best.json").read_text())
    evals = {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    assert best["step"] == min(evals, key=evals.get) and best["value"] == min(evals.values())
    assert any("lora" in k for k in load_file(tmp_path / "o" / "lora-best.safetensors"))
    assert (tmp_path / "o" / "lora-training" / "eval.png").stat().st_size > 1000
    assert not list((tmp_path / "o").glob(".*tmp"))  # the temporary export folder is gone


def test_evaluation_does_not_change_the_training_run(tmp_path, reference):
    # LoRA dropout draws from torch's global generator (the loop seeds it per step); seed it
    # alike before both runs; evaluation must then leave the dropout masks unchanged
    torch.manual_seed(0)
    plain = stablekit.train("lora", components=tiny_components("sd1"), dataset=TinyImages(), out=tmp_path / "a",
                            steps=2, dropout=0.2, **COMMON)
    torch.manual_seed(0)
    evald = stablekit.train("lora", components=tiny_components("sd1"), dataset=TinyImages(), out=tmp_path / "b",
                            steps=2, dropout=0.2, eval_every=1, eval_metrics="loss", eval_reference=str(reference),
                            eval_n=2, **COMMON)
    assert [h["loss"] for h in evald["history"]] == [h["loss"] for h in plain["history"]]
    a, b = load_file(plain["artefact"]), load_file(evald["artefact"])
    assert all(torch.equal(a[k], b[k]) for k in a)


class _FakeEval:
    """Stands in for runner.Evaluation: evaluate_components is patched to read values from a list."""


def test_keep_best_follows_the_metric_direction_and_survives_resume(tmp_path, monkeypatch):
    values = iter([0.5, 0.7, 0.6, 0.9])
    monkeypatch.setattr("stablekit.evaluate.runner.evaluate_components",
                        lambda evaluation, components, step: {"adherence": next(values), "step": step})
    saved = []
    settings = TrainingEvalSettings(every=1, metrics=("judge",), keep_best="adherence")
    strategy = types.SimpleNamespace(components=None)
    hook = EvalHook(settings, _FakeEval(), tmp_path, last_step=10, save_best=lambda: saved.append(1) or tmp_path / "x",
                    log=lambda *_: None)
    for step in (1, 2, 3):
        hook(step, {"step": step}, strategy)
    assert len(saved) == 2  # 0.5 (first) and 0.7; 0.6 is worse
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 2
    resumed = EvalHook(settings, _FakeEval(), tmp_path, last_step=10, save_best=lambda: saved.append(1),
                       log=lambda *_: None)
    assert resumed.best["value"] == 0.7
    resumed(4, {"step": 4}, strategy)
    assert len(saved) == 3 and json.loads((tmp_path / "best.json").read_text())["value"] == 0.9


def test_direction_and_metric_names():
    assert in_training.direction("fid") == -1 and in_training.direction("eval/accuracy_hollow") == 1
    with pytest.raises(StablekitError, match="keep the best"):
        in_training.direction("speed")
    with pytest.raises(StablekitError, match="subset of fid,kid,clip,loss,judge"):
        in_training.parse_metrics("loss,bleu")


def test_judge_prompts_from_a_jsonl_with_named_attributes(tmp_path):
    from stablekit.evaluate.runner import judge_items

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red outline circle", "seed": 4, "named": {"shape": "circle", "hollow": true}}\n'
                    '{"prompt": "a blue square", "named": {"shape": "square", "color": "blue"}}\n')
    items = judge_items(path)
    assert [(i.prompt, i.seed, i.named) for i in items] == [
        ("a red outline circle", 4, {"shape": "circle", "hollow": True}), ("a blue square", 1001, {"shape": "square", "color": "blue"})]
    (tmp_path / "plain.jsonl").write_text('{"prompt": "a circle"}\n')
    assert judge_items(tmp_path / "plain.jsonl") == [] and judge_items(None) == []


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    try:
        import stablekit.data  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("stablekit.data")
        stand_in.load_dataset = lambda source, config=None: FolderImages(source)
        monkeypatch.setitem(sys.modules, "stablekit.data", stand_in)
    return write_folder(tmp_path / "data", n=4)


def test_cli_eval_flags_and_one_line_errors(tmp_path, data_dir, reference, capsys):
    from stablekit.formats import save_model

    model = tmp_path / "tiny.safetensors"
    save_model(tiny_components("sd1"), model)
    base = ["train", "lora", "--model", str(model), "--data", str(data_dir), "--out", str(tmp_path / "out"),
            "--steps", "2", "--batch-size", "2", "--sample-every", "0", "--no-tensorboard", "--rank", "2"]
    assert main(base + ["--keep-best", "loss"]) == 2
    assert "needs evaluation during training" in capsys.readouterr().err
    assert main(base + ["--eval-every", "1", "--eval-metrics", "loss,bleu"]) == 2
    assert "bleu" in capsys.readouterr().err
    assert main(base + ["--eval-every", "1", "--eval-metrics", "fid"]) == 2  # no reference outside the shapes world
    assert "--reference" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lora-training" / "checkpoints").exists()  # failed before training
    assert main(base + ["--eval-every", "1", "--eval-metrics", "loss", "--eval-reference", str(reference),
                        "--eval-n", "2", "--keep-best", "loss"]) == 0
    assert (tmp_path / "out" / "lora-best.safetensors").is_file()
    rows = [json.loads(x) for x in (tmp_path / "out" / "lora-training" / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/loss" in r for r in rows)
