"""Hires fix (generate/hires.py): the public steps composed, A1111's text, --from-png of A1111 hires PNGs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import a1111_text_only_png, tiny_components
from PIL import Image

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import save_model
from stablekit.generate.hires import HiresFix, upscale_latents
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import condition, decode, empty_latents, encode_image, sample
from stablekit.metadata import read_png_info
from stablekit.samplers import resolve_sampling

SETTINGS = dict(negative_prompt="blurry", steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64,
                height=64)


def _by_hand(pipe, hires: HiresFix, prompt="a red circle"):
    """A1111's two passes written out with the public steps."""
    c = pipe.components
    sampling = resolve_sampling("Euler", "Normal")
    cond = condition(pipe.prompts, prompt, "blurry", 4, 1, 5.0, size=(64, 64))
    first = sample(pipe.denoiser, empty_latents(c, 64, 64), sampling.sigmas(4, pipe.denoiser), sampling, cond,
                   ImageNoise([11]))
    w, h = int(64 * hires.scale), int(64 * hires.scale)
    if hires.upscaler == "Latent":
        start = upscale_latents(first, w, h, "Latent")
    else:
        pixels = (decode(c, first)[0] * 255).round().astype(np.uint8)
        up = np.asarray(Image.fromarray(pixels).resize((w, h), Image.LANCZOS), dtype=np.float32)[None] / 255
        start = encode_image(c, up)
    steps = hires.steps or 4
    # A1111's setup_img2img_steps with the hires step count given: exactly `steps` steps, the last
    # ones of an int(steps / denoise)-step schedule (t_enc = steps - 1; sigmas[full - t_enc - 1:])
    full = int(steps / min(hires.denoise, 0.999))
    sigmas = sampling.sigmas(full, pipe.denoiser)[full - steps:]
    assert len(sigmas) - 1 == steps
    cond2 = condition(pipe.prompts, prompt, "blurry", steps, 1, 5.0, size=(w, h))
    return decode(c, sample(pipe.denoiser, start, sigmas, sampling, cond2, ImageNoise([11])))[0]


@pytest.mark.parametrize("hires", [HiresFix(2.0, 3, 0.6, "Latent"), HiresFix(1.5, 0, 0.4, "Lanczos")])
def test_hires_is_the_public_steps_composed(hires):
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    ours = pipe.generate("a red circle", hires=hires, output="np", **SETTINGS)[0]
    expected = _by_hand(pipe, hires)
    assert ours.shape == (int(64 * hires.scale), int(64 * hires.scale), 3)
    assert np.array_equal(ours, expected)


def test_hires_runs_on_sdxl_and_denoise_matters():
    pipe = Pipeline(tiny_components("sdxl"), progress=False)
    a = pipe.generate("a red circle", hires=HiresFix(1.5, 2, 0.3), output="np", **SETTINGS)[0]
    b = pipe.generate("a red circle", hires=HiresFix(1.5, 2, 0.9), output="np", **SETTINGS)[0]
    assert a.shape == (96, 96, 3) and np.abs(a - b).max() > 1e-3


def test_hires_text_is_a1111s_and_bad_settings_fail():
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    image = pipe.generate("a red circle", hires=HiresFix(2, 3, 0.55, "lanczos"), **SETTINGS)[0]
    text = image.info["parameters"].splitlines()[-1]
    assert "Size: 64x64" in text and image.size == (128, 128)
    assert "Denoising strength: 0.55" in text and "Hires upscale: 2, Hires steps: 3, Hires upscaler: Lanczos" in text
    for bad, words in ((HiresFix(scale=0.5), "hires scale"), (HiresFix(denoise=1.5), "denoising strength"),
                       (HiresFix(upscaler="4x-UltraSharp"), "unknown hires upscaler")):
        with pytest.raises(StablekitError, match=words):
            pipe.generate("x", hires=bad, **SETTINGS)


def test_upscale_latents_modes():
    z = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(upscale_latents(z, 64, 64, "Latent (nearest)"), z.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert upscale_latents(z, 48, 64, "Latent").shape == (1, 1, 8, 6)


def test_cli_hires_and_from_png_of_an_a1111_hires_png(tmp_path, capsys):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_components("sd1"), model, to="single-file")
    out = tmp_path / "hr.png"
    base = ["generate", "a red circle", "--model", str(model), "--steps", "3", "--seed", "4", "--width", "64",
            "--height", "64", "--no-progress"]
    assert main([*base, "--hires-scale", "1.5", "--hires-steps", "2", "--hires-strength", "0.5",
                 "--hires-upscaler", "latent (bicubic)", "--out", str(out)]) == 0
    fields = read_png_info(out)["fields"]
    assert (fields["Hires upscale"], fields["Hires steps"], fields["Hires upscaler"], fields["Denoising strength"]) == (
        "1.5", "2", "Latent (bicubic)", "0.5")
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--model", str(model), "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    # an A1111 PNG: its text alone (no stablekit record) gives the same image
    a1111 = a1111_text_only_png(out, tmp_path / "a1111.png")
    third = tmp_path / "third.png"
    assert main(["generate", "--from-png", str(a1111), "--model", str(model), "--out", str(third), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(third)))
    assert main([*base, "--hires-steps", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "--hires-steps needs --hires-scale X" in capsys.readouterr().err


def test_controlnet_units_act_in_the_hires_pass_too(monkeypatch):
    from fixtures import tiny_controlnet

    from stablekit.generate.control import ControlNetControl, ControlUnit

    sizes = []
    original = ControlNetControl._run

    def spy(prepared, inputs, first):
        sizes.append((inputs.sample.shape[-1], prepared.hint.shape[-1]))
        return original(prepared, inputs, first)

    monkeypatch.setattr(ControlNetControl, "_run", staticmethod(spy))
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    hint = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    image = pipe.generate("a red circle", controlnets=[ControlUnit(tiny_controlnet("sd1"), hint)],
                          hires=HiresFix(1.5, 2, 0.6), **SETTINGS)[0]
    # 4 first-pass steps at 8x8 latents, then int(0.6 * 2) + 1 = 2 second-pass steps at 12x12 with the hint fitted
    assert sizes == [(8, 64)] * 4 + [(12, 96)] * 2
    text = image.info["parameters"]
    assert image.size == (96, 96) and "ControlNet 0: " in text and "Hires upscale: 1.5" in text
