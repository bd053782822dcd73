"""`stablekit eval` end to end on tiny seeded models, the sweep parser and the report builder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import tiny_components
from PIL import Image

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.evaluate.report import markdown_summary, metric_table, write_report
from stablekit.evaluate.runner import checkpoint_step, parse_sweep


def test_parse_sweep_is_a_cartesian_product():
    grid = parse_sweep(["sampler=Euler,DPM++ 2M", "steps=10,20", "cfg=3,7.5"])
    assert len(grid) == 8
    assert grid[0] == {"sampler": "Euler", "steps": 10, "cfg": 3.0}
    assert grid[-1] == {"sampler": "DPM++ 2M", "steps": 20, "cfg": 7.5}
    assert parse_sweep([]) == [{}]
    for bad in (["steps=ten"], ["speed=1,2"], ["steps"], ["steps="]):
        with pytest.raises(StablekitError, match="--sweep"):
            parse_sweep(bad)


def test_checkpoint_step_from_names():
    assert checkpoint_step("runs/x/checkpoint-1500") == 1500
    assert checkpoint_step("step_200.safetensors") == 200
    assert checkpoint_step("000750.safetensors") == 750
    assert checkpoint_step("model.safetensors") is None and checkpoint_step(None) is None


def _rows():
    rows = []
    for step, fid in ((100, 30.0), (200, 20.0), (400, 12.5)):
        for steps in (10, 20):
            rows.append({"model": f"step-{step}", "step": step, "settings": {"steps": steps},
                         "fid": fid + steps / 10, "adherence": 0.5 + step / 1000, "seconds_per_image": steps / 20})
    return rows


def test_report_builder_writes_json_html_and_markdown(tmp_path):
    rows = _rows()
    samples = {"step-100 steps=10": np.zeros((3, 64, 64, 3), np.uint8)}
    paths = write_report({"rows": rows, "samples": samples, "config": {"n": 3}}, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["models"]["step-200 steps=20"]["fid"] == pytest.approx(22.0)
    assert data["models"]["step-400 steps=10"]["adherence"] == pytest.approx(0.9)
    page = paths["html"].read_text()
    # plots of metric vs checkpoint step and vs sampler steps, plus the sample grid, all inline
    assert "metrics vs checkpoint step" in page and "metrics vs sampler steps" in page
    assert page.count("data:image/png;base64,") >= 3 and "step-100 steps=10" in page
    from PIL import Image as _Image

    for name in ("metrics-vs-checkpoint-step.png", "metrics-vs-sampler-steps.png"):  # also as files
        assert _Image.open(tmp_path / name).size[0] > 200
    md = paths["markdown"]
    assert md.splitlines()[0].startswith("| model | settings | fid |")
    assert "| step-400 | steps=20 | 14.5 |" in md
    assert metric_table(rows)["step-100 steps=10"] == {"fid": 31.0, "adherence": 0.6, "seconds_per_image": 0.5}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny SD1 model folder, a captioned reference folder, a prompt file."""
    from stablekit.formats import save_model

    root = tmp_path_factory.mktemp("evalcli")
    save_model(tiny_components("sd1"), root / "step-100")
    save_model(tiny_components("sd1", seed=1), root / "step-200")
    ref = root / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(ref / f"{i:02d}.png")
        (ref / f"{i:02d}.txt").write_text(f"a photo number {i}")
    (root / "prompts.txt").write_text("# comment\na red circle\n\na blue square\na green star\n")
    return root


@pytest.fixture(scope="module")
def inception_weights(tiny_setup):
    """Random FID Inception weights in pytorch-fid's layout (building them costs seconds: only the slow test)."""
    import torch

    from stablekit.evaluate.inception import FIDInception

    torch.manual_seed(0)
    torch.save(FIDInception().state_dict(), tiny_setup / "inception.pth")
    return tiny_setup / "inception.pth"


@pytest.mark.slow  # 80 s: the full Inception network on CPU (the other eval tests cover the CLI quickly)
def test_eval_cli_two_checkpoints_with_inception_fid_and_loss(tiny_setup, inception_weights, tmp_path, capsys):
    r = tiny_setup
    code = main(["eval", "--model", str(r / "step-100"), "--model", str(r / "step-200"),
                 "--prompts", str(r / "prompts.txt"), "--reference", str(r / "ref"),
                 "--metrics", "fid,kid,loss", "--n", "3", "--steps", "2", "--loss-n", "2",
                 "--inception", str(inception_weights), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(data["models"]) == {"step-100 steps=2", "step-200 steps=2"}
    for row in data["rows"]:
        assert row["fid"] > 0 and np.isfinite(row["kid"]) and row["loss"] > 0
        assert row["n"] == 3 and row["features"] == "inception-2015-12-05" and row["seconds_per_image"] > 0
    assert [row["step"] for row in data["rows"]] == [100, 200]
    assert data["rows"][0]["loss"] != data["rows"][1]["loss"]  # different weights, different loss
    assert "| step-100 | steps=2 |" in out and "report.html" in out
    assert "metrics vs checkpoint step" in (tmp_path / "rep" / "report.html").read_text()


def test_eval_cli_sweep_rows_and_timing(tiny_setup, tmp_path, capsys):
    r = tiny_setup
    code = main(["eval", "--model", str(r / "step-100"), "--prompts", str(r / "prompts.txt"),
                 "--reference", str(r / "ref"), "--metrics", "fid", "--n", "2", "--features", "shapes",
                 "--out", str(tmp_path / "sw"),
                 "--sweep", "sampler=Euler,DPM++ 2M", "steps=1,2"])
    assert code == 0
    rows = json.loads((tmp_path / "sw" / "report.json").read_text())["rows"]
    assert [(x["settings"]["sampler"], x["settings"]["steps"]) for x in rows] == [
        ("Euler", 1), ("Euler", 2), ("DPM++ 2M", 1), ("DPM++ 2M", 2)]
    assert all(x["seconds_per_image"] > 0 and x["features"].startswith("shapes-features-v") for x in rows)
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "metrics vs sampler steps" in page and "metrics vs seconds per image" in page


def test_eval_cli_errors_are_one_line(tiny_setup, tmp_path, capsys):
    r = tiny_setup
    base = ["eval", "--model", str(r / "step-100"), "--prompts", str(r / "prompts.txt"), "--out", str(tmp_path / "e")]
    assert main(base + ["--metrics", "fid,speed"]) == 2
    assert "unknown metric(s) speed" in capsys.readouterr().err
    assert main(base + ["--metrics", "clip"]) == 2
    assert "needs a local CLIP model" in capsys.readouterr().err
    assert main(base + ["--metrics", "fid", "--reference", str(r / "ref")]) == 2
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--metrics", "fid"]) == 2  # no reference outside the shapes world
    assert "--reference DIR" in capsys.readouterr().err


def test_eval_cli_resume_keeps_finished_rows_and_checks_settings(tiny_setup, tmp_path, capsys, monkeypatch):
    r = tiny_setup
    out = tmp_path / "res"
    base = ["eval", "--prompts", str(r / "prompts.txt"), "--reference", str(r / "ref"), "--metrics", "fid",
            "--n", "2", "--features", "shapes", "--steps", "1", "--out", str(out)]
    assert main(base + ["--model", str(r / "step-100")]) == 0
    first = json.loads((out / "report.json").read_text())["rows"]
    assert (out / "samples.npz").is_file()
    # the second run resumes: step-100's row is reused (not regenerated), only step-200 is computed
    import stablekit

    loaded = []
    real_load = stablekit.load
    monkeypatch.setattr(stablekit, "load", lambda path=None, **kw: loaded.append(path) or real_load(path, **kw))
    assert main(base + ["--model", str(r / "step-100"), "--model", str(r / "step-200"), "--resume"]) == 0
    assert "resuming: 1 row(s)" in capsys.readouterr().out
    assert loaded == [str(r / "step-200")]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [x["model"] for x in rows] == ["step-100", "step-200"]
    assert rows[0]["fid"] == first[0]["fid"] and rows[0]["seconds_per_image"] == first[0]["seconds_per_image"]
    assert "<h3>step-100 steps=1</h3>" in (out / "report.html").read_text()  # its sample grid survived
    # resuming with another n would mix incomparable rows: one-line error naming the setting
    assert main([a if a != "2" else "3" for a in base] + ["--model", str(r / "step-100"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "n 2" in err and len(err.strip().splitlines()) == 1


def test_eval_writes_the_report_after_every_row(tiny_setup, tmp_path, monkeypatch):
    # a run cut off after its first row still leaves that row on disk
    from stablekit.evaluate import runner

    r = tiny_setup
    calls = {"n": 0}
    real_row = runner.Evaluation._row

    def dying_row(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_row(self, *a, **kw)

    monkeypatch.setattr(runner.Evaluation, "_row", dying_row)
    assert main(["eval", "--model", str(r / "step-100"), "--prompts", str(r / "prompts.txt"), "--reference",
              str(r / "ref"), "--metrics", "fid", "--n", "2", "--features", "shapes", "--out", str(tmp_path / "cut"),
              "--sweep", "steps=1,2"]) != 0  # the CLI reports the interrupt and exits non-zero
    rows = json.loads((tmp_path / "cut" / "report.json").read_text())["rows"]
    assert [x["settings"]["steps"] for x in rows] == [1]
