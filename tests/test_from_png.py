"""`generate --from-png` through the CLI: batch images identical, every field applied or named,
inputs the PNG needs refused when missing, a differing init image warned about."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stablekit.cli import main
from stablekit.metadata import read_png_info


@pytest.fixture(scope="module")
def model(tiny_model_file):
    return tiny_model_file  # tests/conftest.py


def _pixels(path):
    return np.asarray(Image.open(path))


def _run(*args):
    return main(["generate", *map(str, args), "--no-progress"])


def test_from_png_of_a_batch_image_is_identical(model, tmp_path, capsys):
    out = tmp_path / "batch"
    assert _run("a red circle", "--model", model, "--steps", 3, "--seed", 20, "--batch-size", 3, "--sampler", "Euler a",
                "--out", out) == 0
    files = sorted(out.glob("*.png"))
    record = read_png_info(files[2])["stablekit"]
    assert (record["seed"], record["batch_size"], record["batch_index"]) == (22, 3, 2)
    for i in (0, 2):
        again = tmp_path / f"again{i}.png"
        assert _run("--from-png", files[i], "--model", model, "--out", again) == 0
        assert np.array_equal(_pixels(files[i]), _pixels(again))
        assert read_png_info(again)["stablekit"]["batch_index"] == i
    assert "warning" not in capsys.readouterr().err


def test_from_png_with_variation_seeds_is_identical(model, tmp_path):
    out = tmp_path / "v"
    assert _run("a cat", "--model", model, "--steps", 2, "--seed", 3, "--batch-size", 2, "--out", out) == 0  # CLI
    first = sorted(out.glob("*.png"))[1]
    import json

    import stablekit
    from stablekit.metadata import save_png

    pipe = stablekit.load(model, device="cpu", progress=False)  # no CLI flag for variation seeds: Python API
    image = pipe.generate("a cat", steps=2, seed=3, subseed=8, subseed_strength=0.4, batch_size=2)[1]
    save_png(image, first, image.info["parameters"], json.loads(image.info["stablekit"]))
    again = tmp_path / "v2.png"
    assert _run("--from-png", first, "--model", model, "--out", again) == 0
    assert np.array_equal(_pixels(first), _pixels(again))
    assert read_png_info(again)["fields"]["Variation seed"] == "9"


def test_inpainting_png_needs_its_mask(model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    init, other, mask, out = tmp_path / "init.png", tmp_path / "other.png", tmp_path / "mask.png", tmp_path / "out.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(init)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(other)
    m = np.zeros((64, 64), np.uint8)
    m[8:40, 8:40] = 255
    Image.fromarray(m).save(mask)
    assert _run("a cat", "--model", model, "--init-image", init, "--mask", mask, "--steps", 2, "--seed", 1, "--out", out) == 0
    record = read_png_info(out)["stablekit"]
    assert record["mask"]["width"] == 64 and len(record["init_image"]["sha256"]) == 64
    capsys.readouterr()
    assert _run("--from-png", out, "--model", model, "--init-image", init, "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err.strip()
    assert "made by inpainting: give its mask with --mask FILE" in err and "\n" not in err
    again = tmp_path / "again.png"
    assert _run("--from-png", out, "--model", model, "--init-image", init, "--mask", mask, "--out", again) == 0
    assert np.array_equal(_pixels(out), _pixels(again))
    capsys.readouterr()
    assert _run("--from-png", out, "--model", model, "--init-image", other, "--mask", mask, "--out", tmp_path / "o.png") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-image differs from the image the PNG was made with" in err[0]


def test_a1111_png_fields_applied_or_named_in_one_line(model, tmp_path, capsys):
    png = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", "a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6, "
                  "Seed: 7, Size: 64x64, Model hash: abc, Variation seed: 9, Variation seed strength: 0.2, "
                  "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 5, ENSD: 31337, RNG: CPU, "
                  "Lora hashes: \"x: 1234\", Version: v1.10.0")
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    out = tmp_path / "out.png"
    assert _run("--from-png", png, "--model", model, "--out", out) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stablekit: warning: --from-png")
    assert "ENSD" in err[0]
    # Lora hashes is read (generate/networks_replay.py: the prompt's <lora:> tags are checked against it);
    # the hires fix is applied (tests/test_hires.py): 64x64 upscaled by 2
    assert "RNG" not in err[0] and "Variation seed" not in err[0] and "Lora hashes" not in err[0]
    assert "Hires" not in err[0]
    assert Image.open(out).size == (128, 128)
    fields = read_png_info(out)["fields"]
    assert (fields["Sampler"], fields["Schedule type"], fields["Seed"], fields["Steps"]) == ("DPM++ 2M", "Karras", "7", "3")
    assert (fields["Variation seed"], fields["Variation seed strength"], fields["Negative prompt"]) == ("9", "0.2", "blurry")
