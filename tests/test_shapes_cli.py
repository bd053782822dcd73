"""`stablekit shapes ...` commands: render -> judge round trip, eval wiring over stablekit.load."""
import json

import stablekit
from stablekit.cli import main
from stablekit.shapes import render
from stablekit.shapes.prompts import load_prompt_set


def test_render_then_judge(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["shapes", "render", "--n", "12", "--out", str(out), "--seed", "3",
                 "--shapes", "hexagon", "cross", "--colors", "teal", "--hollow"]) == 0
    assert len(list(out.glob("*.png"))) == 12 and len(list(out.glob("*.txt"))) == 12
    capsys.readouterr()
    assert main(["shapes", "judge", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["adherence"] == 1.0 and result["accuracy"]["hollow"] == 1.0
    (out / "metadata.json").unlink()  # captions alone are enough
    assert main(["shapes", "judge", str(out)]) == 0
    assert "adherence       1.0000" in capsys.readouterr().out


def test_judge_empty_folder_is_a_user_error(tmp_path, capsys):
    assert main(["shapes", "judge", str(tmp_path)]) == 2
    assert "no .png files" in capsys.readouterr().err


def test_eval_uses_stablekit_load(tmp_path, monkeypatch, capsys):
    truth = {i.prompt: i.spec for i in load_prompt_set("eval-v1")}
    seen = {}

    class FakePipeline:
        def generate(self, prompt, seed, steps, width, height, **kw):
            from PIL import Image

            seen.update(steps=steps, size=(width, height), **kw)
            return [Image.fromarray(render(truth[prompt]))]

    loaded = {}

    def fake_load(*a, **k):
        loaded.update(k)
        return FakePipeline()

    monkeypatch.setattr(stablekit, "load", fake_load, raising=False)
    assert main(["shapes", "eval", "--model", "fake", "--steps", "5", "--sampler", "euler",
                 "--limit", "10", "--out", str(tmp_path)]) == 0
    assert seen == {"steps": 5, "size": (64, 64), "sampler": "euler"}
    assert loaded["backend"] == "torch"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["adherence"] == 1.0 and report["backend"] == "torch"
    assert "prompt adherence 1.000" in capsys.readouterr().out
    assert main(["shapes", "eval", "--model", "fake", "--backend", "openvino", "--limit", "2",
                 "--out", str(tmp_path / "ov")]) == 0
    assert loaded["backend"] == "openvino"
    assert json.loads((tmp_path / "ov" / "report.json").read_text())["backend"] == "openvino"
