"""`stablekit generate --controlnet ...`: unit groups, the PNG text, --from-png, saved control maps, errors."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import tiny_components, tiny_controlnet
from PIL import Image

from stablekit.cli import main
from stablekit.formats import save_model
from stablekit.formats.controlnet import save_controlnet
from stablekit.metadata import read_png_info


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("control_cli")
    model = save_model(tiny_components("sd1"), root / "tiny.safetensors", to="single-file") and root / "tiny.safetensors"
    nets = [save_controlnet(tiny_controlnet("sd1", s), root / f"cn{s}.safetensors") for s in (0, 3)]
    shape = np.zeros((64, 64, 3), np.uint8)
    shape[16:48, 20:44] = 255
    Image.fromarray(shape).save(root / "shape.png")
    Image.fromarray(255 - shape).save(root / "lines.png")
    return root, model, nets


def test_two_units_written_read_back_and_regenerated(files, tmp_path, capsys):
    root, model, nets = files
    out = tmp_path / "a.png"
    base = ["generate", "a red box", "--model", str(model), "--steps", "3", "--seed", "5", "--no-progress"]
    args = [*base, "--controlnet", str(nets[0]), "--control-image", str(root / "shape.png"), "--control-preprocessor",
            "canny", "--control-scale", "0.8", "--controlnet", str(nets[1]), "--control-image", str(root / "lines.png"),
            "--preprocessor", "invert", "--control-mode", "controlnet", "--control-end", "0.5", "--save-preprocessed",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(tmp_path / "a-control0.png"), str(tmp_path / "a-control1.png")]
    edges = np.asarray(Image.open(tmp_path / "a-control0.png"))
    assert set(np.unique(edges)) == {0, 255} and edges[32, 32].max() == 0 and edges[16:48, 20].max() == 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a-control1.png")), np.asarray(Image.open(root / "shape.png")))
    info = read_png_info(out)
    assert info["fields"]["ControlNet 0"].startswith("Module: canny, Model: cn0 [")
    assert "Control Mode: ControlNet is more important" in info["fields"]["ControlNet 1"]
    assert "Guidance End: 0.5" in info["fields"]["ControlNet 1"]
    assert [u["preprocessor"] for u in info["stablekit"]["controlnet"]] == ["canny", "invert"]
    plain = tmp_path / "plain.png"
    assert main([*base, "--out", str(plain)]) == 0
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain)))
    # --from-png needs the units again; with them the image is the same
    assert main(["generate", "--from-png", str(out), "--model", str(model), "--out", str(tmp_path / "b.png")]) == 2
    assert "made with 2 ControlNet unit(s)" in capsys.readouterr().err
    again = tmp_path / "c.png"
    assert main(["generate", "--from-png", str(out), *args[args.index("--controlnet"):-3], "--out", str(again),
                 "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


@pytest.mark.parametrize("args, words", [
    (["--control-image", "x.png"], "give --controlnet PATH before it"),
    (["--controlnet", "a", "--control-scale", "1", "--control-scale", "2"], "given twice for ControlNet unit 0"),
])
def test_flag_group_errors(args, words, capsys):
    assert main(["generate", "p", *args]) == 2
    assert words in capsys.readouterr().err


def test_unit_without_image_is_one_line(files, tmp_path, capsys):
    root, model, nets = files
    assert main(["generate", "p", "--model", str(model), "--controlnet", str(nets[0]), "--out",
                 str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ControlNet unit 0" in err and "has no --control-image FILE" in err and err.count("\n") == 1
