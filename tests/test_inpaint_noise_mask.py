"""InpaintOptions(noise_mask=True) / --noise-mask: A1111's latent blend for 9-channel inpainting models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_control_inpaint_model import PROMPT, images, inpainting_components

from stablekit.errors import StablekitError
from stablekit.generate.inpaint_options import InpaintOptions
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.replay import replay
from stablekit.generate.steps import InitImage, InpaintMask, encode
from stablekit.metadata import read_png_info, save_png

SETTINGS = dict(steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=3)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(inpainting_components(), progress=False)


def _run(pipe, options):
    """The x0 estimates of every step and the output."""
    image, mask = images()
    seen = []
    extra = {} if options is None else {"inpaint_options": options}
    out = pipe.inpaint(image, mask, PROMPT, callback=lambda info: seen.append(info["denoised"].clone()),
                       output="np", **extra, **SETTINGS)[0]
    return seen, out


def test_noise_mask_resets_the_latents_outside_the_mask_every_step(pipe):
    image, mask = images()
    c = pipe.components
    init = encode(c, InitImage.load(image, 64, 64).pixels[None])
    keep = InpaintMask.load(mask, 64, 64).latent(c.vae_scale_factor) < 0.5
    keep = keep.expand_as(init)
    blended, out_on = _run(pipe, InpaintOptions(noise_mask=True))
    plain, out_off = _run(pipe, InpaintOptions())
    assert len(blended) == SETTINGS["steps"]
    for x0 in blended:  # outside the mask the estimate is the image's latents at every step
        assert torch.allclose(x0[keep], init[keep], atol=1e-6)
    assert all((x0[keep] - init[keep]).abs().max() > 1e-2 for x0 in plain)  # diffusers' path leaves it alone
    assert np.abs(out_on - out_off).max() > 1e-3  # and the picture inside the mask changes with it


def test_noise_mask_off_is_the_default_output(pipe):
    _, default = _run(pipe, None)
    _, off = _run(pipe, InpaintOptions())
    assert np.array_equal(default, off)  # None is tested equal to diffusers (test_control_inpaint_model.py)


def test_noise_mask_is_written_and_replayed(pipe, tmp_path):
    image, mask = images()
    out = pipe.inpaint(image, mask, PROMPT, inpaint_options={"noise_mask": True}, **SETTINGS)[0]
    assert "Noise mask: True" in out.info["parameters"]
    save_png(out, tmp_path / "a.png", out.info["parameters"], json.loads(out.info["stablekit"]))
    again = replay(read_png_info(tmp_path / "a.png"))
    assert again.inpaint.noise_mask is True and again.mask
    text = PngInfo()
    text.add_text("parameters", out.info["parameters"])  # the A1111-style text alone
    Image.new("RGB", (64, 64)).save(tmp_path / "b.png", pnginfo=text)
    from_text = replay(read_png_info(tmp_path / "b.png"))
    assert from_text.inpaint.noise_mask is True and from_text.mask is True and "Noise mask" not in from_text.ignored
    plain = pipe.inpaint(image, mask, PROMPT, inpaint_options={"fill": "fill"}, **SETTINGS)[0]
    assert "Noise mask" not in plain.info["parameters"]
    assert json.loads(plain.info["stablekit"])["inpaint"]["noise_mask"] is False


def test_bad_noise_mask_value_is_one_line():
    with pytest.raises(StablekitError, match="noise_mask must be True or False"):
        InpaintOptions(noise_mask="yes").validate()


def test_cli_flag_sets_the_option_and_needs_a_mask():
    from stablekit.cli import build_parser
    from stablekit.cli.generate import _inpaint_options
    from stablekit.generate.replay import Replay

    args = build_parser().parse_args(["generate", PROMPT, "--init-image", "i.png", "--mask", "m.png", "--noise-mask"])
    assert _inpaint_options(args, "m.png", Replay(None)).noise_mask is True
    args = build_parser().parse_args(["generate", PROMPT, "--init-image", "i.png", "--mask", "m.png"])
    assert _inpaint_options(args, "m.png", Replay(None)) is None  # no flag: the plain path, as before
    args = build_parser().parse_args(["generate", PROMPT, "--init-image", "i.png", "--noise-mask"])
    with pytest.raises(StablekitError, match="--noise-mask need --mask FILE"):
        _inpaint_options(args, None, Replay(None))


@pytest.mark.slow  # two CLI runs that load a model: about 10 s on a shared CPU
def test_cli_flag_reaches_the_png(pipe, tmp_path):
    from stablekit.cli import main
    from stablekit.formats import save_model

    save_model(pipe.components, tmp_path / "inp", to="diffusers")  # a folder loads faster than a single file
    image, mask = images()
    image.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    assert main(["generate", PROMPT, "--model", str(tmp_path / "inp"), "--init-image", str(tmp_path / "init.png"),
                 "--mask", str(tmp_path / "mask.png"), "--steps", "2", "--seed", "1", "--no-progress", "--noise-mask",
                 "--out", str(tmp_path / "b.png")]) == 0
    out = Image.open(tmp_path / "b.png")
    assert "Noise mask: True" in out.info["parameters"]
    keep = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(out.convert("RGB"))[keep], np.asarray(image)[keep])
