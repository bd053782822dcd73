"""Guidance options and inpainting settings read back from PNGs (generate/replay.py) and from the
`generate` flags (cli/generate_guidance.py): the same image again, A1111's text understood."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stablekit.cli.generate_guidance import add_arguments, options_from_args
from stablekit.errors import StablekitError
from stablekit.generate.guidance import GuidanceOptions
from stablekit.generate.inpaint_options import InpaintOptions
from stablekit.generate.replay import inpaint_options, replay
from stablekit.metadata import read_png_info, save_png

SETTINGS = dict(steps=3, cfg=5.0, sampler="Euler", seed=5, width=64, height=64)


def _saved(image, path):
    save_png(image, path, image.info["parameters"], json.loads(image.info["stablekit"]))
    return read_png_info(path)


def _a1111(tmp_path, text):
    png, info = tmp_path / "a1111.png", PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    return read_png_info(png)


def test_stablekit_png_replays_its_guidance_exactly(tiny_pipe, tmp_path):
    options = GuidanceOptions(cfg_rescale=0.6, freeu=(1.2, 1.3, 0.9, 0.2), pag_scale=2.0, pag_layers=("down_blocks.1",))
    image = tiny_pipe.generate("a red circle", guidance=options, **SETTINGS)[0]
    found = replay(_saved(image, tmp_path / "g.png"))
    assert found.guidance == options.validate() and "guidance" not in found.ignored
    again = tiny_pipe.generate(found.params.prompt, guidance=found.guidance,
                          **{k: v for k, v in found.params.to_dict().items() if k not in ("prompt", "denoising_strength")})[0]
    assert np.array_equal(np.asarray(image), np.asarray(again))


def test_a1111_guidance_fields_are_applied_not_ignored(tmp_path):
    info = _a1111(tmp_path, "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, CFG Rescale phi: 0.7, "
                            "freeu_enabled: True, freeu_b1: 1.3, freeu_b2: 1.4, freeu_s1: 0.9, freeu_s2: 0.2, "
                            "PAG Scale: 3, PAG Applied Layers: mid up_blocks.1, Version: v1.10.1")
    found = replay(info)
    assert found.guidance == GuidanceOptions(0.7, (1.3, 1.4, 0.9, 0.2), 3.0, ("mid", "up_blocks.1"))
    assert found.ignored == []
    plain = replay(_a1111(tmp_path, "a cat\nSteps: 20, Seed: 1, Size: 64x64, Rescale CFG: 0"))
    assert plain.guidance is None


def test_inpainting_settings_replay_from_the_record_and_from_a1111_text(tiny_pipe, tmp_path):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 8:40] = 1
    options = InpaintOptions(mask_blur=3, fill="latent noise", invert=True)
    image = tiny_pipe.inpaint(init, mask, "a cat", strength=0.9, inpaint_options=options, **SETTINGS)[0]
    found = replay(_saved(image, tmp_path / "i.png"))
    assert found.inpaint == options.validate() and "inpaint" not in found.ignored
    settings = {k: v for k, v in found.params.to_dict().items() if k not in ("prompt", "denoising_strength")}
    again = tiny_pipe.inpaint(init, mask, "a cat", strength=found.params.denoising_strength, inpaint_options=found.inpaint,
                         **settings)[0]
    assert np.array_equal(np.asarray(image), np.asarray(again))
    # A1111's inpainting text: every mask setting read; flags override it
    text = ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.75, "
            "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 48, Mask mode: Inpaint not masked, "
            "Masked content: latent nothing, Version: v1.10.1")
    found = replay(_a1111(tmp_path, text))
    assert found.mask is True and found.init_image is True and found.ignored == []
    assert found.inpaint == InpaintOptions(4, True, "latent nothing", True, 48)
    assert inpaint_options(found.inpaint, {"mask_blur": 0}) == InpaintOptions(0, True, "latent nothing", True, 48)
    assert inpaint_options(None, {}) is None
    img2img = replay(_a1111(tmp_path, "a cat\nSteps: 20, Seed: 1, Size: 64x64, Denoising strength: 0.4"))
    assert img2img.init_image is True and img2img.mask is None and img2img.inpaint is None


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_flags_make_options_over_the_pngs():
    assert options_from_args(_args()) is None
    options = options_from_args(_args("--cfg-rescale", "0.7", "--freeu", "--pag-scale", "3", "--pag-layers", "mid",
                                      "down_blocks.1", "--fix-steps"))
    assert options == GuidanceOptions(0.7, True, 3.0, ("mid", "down_blocks.1"), True)
    assert options_from_args(_args("--freeu", "1.1,1.2,0.5,0.6")).freeu == (1.1, 1.2, 0.5, 0.6)

    class Png:  # a Replay with guidance
        guidance = GuidanceOptions(cfg_rescale=0.5, pag_scale=2.0)

    merged = options_from_args(_args("--pag-scale", "0"), Png)
    assert merged == GuidanceOptions(cfg_rescale=0.5)
    for argv, match in ((("--freeu", "1,2"), "4 numbers"), (("--freeu", "a,b,c,d"), "B1,B2,S1,S2"),
                        (("--cfg-rescale", "2"), "CFG rescale"), (("--pag-layers", "mid"), "needs --pag-scale")):
        with pytest.raises(StablekitError, match=match):
            options_from_args(_args(*argv))
