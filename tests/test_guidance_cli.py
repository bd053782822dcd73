"""`stablekit generate --cfg-rescale/--freeu/--pag-scale/--fix-steps`: recorded, replayed, refused when bad."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.metadata import read_png_info


@pytest.fixture(scope="module")
def model(tiny_model_file):
    return tiny_model_file  # tests/conftest.py


def test_flags_change_the_image_are_recorded_and_replay(model, tmp_path):
    base = ["generate", "a red box", "--model", str(model), "--steps", "3", "--seed", "5", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "--cfg-rescale", "0.7", "--freeu", "--out", str(tmp_path / "g.png")]) == 0
    plain, guided = (np.asarray(Image.open(tmp_path / n)) for n in ("plain.png", "g.png"))
    assert not np.array_equal(plain, guided)
    fields = read_png_info(tmp_path / "g.png")["fields"]
    assert float(fields["CFG Rescale"]) == pytest.approx(0.7)
    assert main(["generate", "--from-png", str(tmp_path / "g.png"), "--model", str(model), "--no-progress",
                 "--out", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), guided)


def test_bad_value_is_one_line_before_loading(model, tmp_path, capsys):
    code = main(["generate", "a red box", "--model", str(tmp_path / "missing.safetensors"), "--cfg-rescale", "3",
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "rescale" in err.lower(), err


def test_freeu_v2_flag_is_recorded_and_needs_freeu(model, tmp_path, capsys):
    out = tmp_path / "v2.png"
    assert main(["generate", "a cat", "--model", str(model), "--steps", "2", "--freeu", "--freeu-v2",
                 "--out", str(out), "--no-progress"]) == 0
    assert read_png_info(out)["fields"]["freeu_version"] == "2"
    code = main(["generate", "a cat", "--model", str(model), "--steps", "2", "--freeu-v2",
                 "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "freeu" in err.lower(), err
