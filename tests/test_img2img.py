"""img2img on the same generation core: A1111's step semantics, seeds, metadata, CLI, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.generate.params import GenerationParams
from stablekit.generate.pipeline import img2img_sigmas
from stablekit.metadata import parse_parameters, read_png_info


def _image(seed=0, size=64):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_a1111_step_count():
    import torch

    sigmas = torch.linspace(10, 0, 21)
    assert len(img2img_sigmas(sigmas, 20, 0.3)) - 1 == 7  # int(0.3 * 20) + 1 steps, the last ones
    assert img2img_sigmas(sigmas, 20, 0.3)[-2] == sigmas[-2]
    assert len(img2img_sigmas(sigmas, 20, 1.0)) - 1 == 20  # strength 1 runs the whole schedule
    assert len(img2img_sigmas(sigmas, 20, 0.0)) - 1 == 1


def test_img2img_runs_strength_share_of_steps_and_is_seeded(tiny_pipe):
    steps = []
    a = tiny_pipe.img2img(_image(), "a cat", strength=0.5, steps=10, seed=3, sampler="Euler",
                     callback=lambda info: steps.append(info["step"]), output="np")[0]
    b = tiny_pipe.img2img(_image(), "a cat", strength=0.5, steps=10, seed=3, sampler="Euler", output="np")[0]
    c = tiny_pipe.img2img(_image(), "a cat", strength=0.5, steps=10, seed=4, sampler="Euler", output="np")[0]
    assert steps == [1, 2, 3, 4, 5, 6] and np.array_equal(a, b) and not np.array_equal(a, c)


def test_size_follows_the_image_and_metadata_records_strength(tiny_pipe):
    out = tiny_pipe.img2img(_image(size=72).resize((72, 56)), "a cat", strength=0.3, steps=4, seed=1)[0]
    assert out.size == (72, 56)
    text = out.info["parameters"]
    assert "Denoising strength: 0.3" in text and "Size: 72x56" in text
    params = GenerationParams.from_a1111(parse_parameters(text))
    assert params.denoising_strength == 0.3 and params.width == 72
    resized = tiny_pipe.img2img(_image(), "a cat", strength=0.3, steps=2, seed=1, width=32, height=48)[0]
    assert resized.size == (32, 48)


def test_bad_strength_and_unreadable_image_are_one_line_errors(tiny_pipe, tmp_path):
    with pytest.raises(StablekitError, match="denoising strength must be between 0 and 1"):
        tiny_pipe.img2img(_image(), "a cat", strength=1.5, steps=2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(StablekitError, match="cannot read init image") as err:
        tiny_pipe.img2img(bad, "a cat", steps=2)
    assert "\n" not in str(err.value)


def test_cli_img2img(tmp_path, capsys, tiny_model_file):
    model = tiny_model_file
    init = tmp_path / "init.png"
    _image(size=64).resize((64, 48)).save(init)
    out = tmp_path / "out.png"
    assert main(["generate", "a cat", "--model", str(model), "--init-image", str(init), "--strength", "0.4",
                 "--steps", "5", "--seed", "2", "--out", str(out), "--no-progress"]) == 0
    info = read_png_info(out)
    assert info["fields"]["Denoising strength"] == "0.4" and info["fields"]["Size-1"] == "64"
    assert Image.open(out).size == (64, 48)
    again = tmp_path / "again.png"  # regenerating from the PNG needs the init image again
    assert main(["generate", "--from-png", str(out), "--model", str(model), "--init-image", str(init),
                 "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    capsys.readouterr()
    assert main(["generate", "--from-png", str(out), "--model", str(model), "--no-progress"]) == 2
    assert "means img2img: give --init-image" in capsys.readouterr().err
    assert main(["generate", "a cat", "--model", str(model), "--init-image", str(tmp_path / "nope.png"),
                 "--no-progress"]) == 2


# ----------------------------------------------------------------------------- inpainting
def test_inpaint_changes_only_the_masked_pixels(tiny_pipe):
    image = _image(5)
    mask = np.zeros((64, 64), np.float32)
    mask[16:40, 20:48] = 1
    out = np.asarray(tiny_pipe.inpaint(image, mask, "a cat", steps=4, seed=1)[0])
    src = np.asarray(image)
    assert np.array_equal(out[mask == 0], src[mask == 0])  # exactly, not approximately
    assert np.abs(out[mask == 1].astype(int) - src[mask == 1]).mean() > 5
    assert "Denoising strength: 1," in tiny_pipe.inpaint(image, mask, "a cat", steps=2, seed=1)[0].info["parameters"]


def test_inpaint_errors(tiny_pipe, tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(StablekitError, match="cannot read mask"):
        tiny_pipe.inpaint(_image(), bad, "a cat", steps=2)
    with pytest.raises(StablekitError, match="a mask needs an image"):
        tiny_pipe.inpaint(None, np.ones((64, 64)), "a cat", steps=2)


def test_cli_inpaint(tmp_path, capsys, tiny_model_file):
    model = tiny_model_file
    init, mask, out = tmp_path / "init.png", tmp_path / "mask.png", tmp_path / "out.png"
    _image(7).save(init)
    m = np.zeros((64, 64), np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(mask)
    assert main(["generate", "a cat", "--model", str(model), "--init-image", str(init), "--mask", str(mask),
                 "--steps", "3", "--seed", "2", "--out", str(out), "--no-progress"]) == 0
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(init))
    assert np.array_equal(a[m == 0], b[m == 0]) and not np.array_equal(a, b)
    capsys.readouterr()
    assert main(["generate", "a cat", "--model", str(model), "--mask", str(mask), "--no-progress"]) == 2
    assert "--mask needs --init-image" in capsys.readouterr().err
