"""Outpainting (generate/outpaint.py): pad + border mask on the inpainting path, CLI and --from-png."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import tiny_components
from PIL import Image

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import save_model
from stablekit.generate.outpaint import outpaint_inputs
from stablekit.generate.pipeline import Pipeline


def photo():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_pads_round_to_latents_and_the_original_is_kept_exactly():
    init, mask = outpaint_inputs(photo(), (10, 0, 16, 8))
    assert (init.width, init.height) == (16 + 64 + 16, 48 + 8)
    assert mask.repaint[:, :16].all() and mask.repaint[48:].all() and not mask.repaint[:48, 16:80].any()
    out = Pipeline(tiny_components("sd1"), progress=False).outpaint(photo(), "10,0,16,8", "a red circle", steps=3,
                                                                   seed=2)[0]
    pixels = np.asarray(out)
    assert out.size == (96, 56) and np.array_equal(pixels[:48, 16:80], np.asarray(photo()))
    assert np.abs(pixels[:, :16].astype(int) - init.rgb[:, :16]).max() > 10  # the border was repainted


@pytest.mark.parametrize("pads", ["1,2,3", "0,0,0,0", "a,b,c,d", "-8,0,0,0"])
def test_bad_pads(pads):
    with pytest.raises(StablekitError, match="LEFT,TOP,RIGHT,BOTTOM"):
        outpaint_inputs(photo(), pads)


def test_cli_outpaint_and_from_png(tmp_path, capsys):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_components("sd1"), model, to="single-file")
    photo().save(tmp_path / "photo.png")
    out = tmp_path / "o.png"
    base = ["generate", "a red circle", "--model", str(model), "--steps", "3", "--seed", "4", "--no-progress"]
    assert main([*base, "--init-image", str(tmp_path / "photo.png"), "--outpaint", "8,8,8,8", "--out", str(out)]) == 0
    assert Image.open(out).size == (80, 64)
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--model", str(model), "--init-image", str(tmp_path / "photo.png"),
                 "--outpaint", "8,8,8,8", "--out", str(again), "--no-progress"]) == 0
    assert "differs" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    assert main([*base, "--outpaint", "8,8,8,8", "--out", str(tmp_path / "x.png")]) == 2
    assert "--outpaint needs --init-image FILE" in capsys.readouterr().err
