"""ControlNet inference (generate/control.py): equal to diffusers' ControlNet pipelines, A1111's unit
semantics (weight, window, control modes), several nets, errors, infotext and record."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline
from fixtures import tiny_components, tiny_controlnet
from PIL import Image

from stablekit.errors import StablekitError
from stablekit.generate.control import ControlNetControl, ControlUnit, active, block_scales
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline
from stablekit.metadata import parse_parameters

PROMPT, NEGATIVE = "a photo of a cat on a sofa", "blurry, low quality"
SETTINGS = dict(negative_prompt=NEGATIVE, steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64,
                height=64, output="np")


def control_image(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _diffusers(c, nets):
    scheduler = EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"})
    net = nets if len(nets) > 1 else nets[0]
    if c.is_sdxl:
        pipe = StableDiffusionXLControlNetPipeline(vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2,
                                                   tokenizer=c.tokenizer, tokenizer_2=c.tokenizer_2, unet=c.unet,
                                                   controlnet=net, scheduler=scheduler)
    else:
        pipe = StableDiffusionControlNetPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                                 controlnet=net, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_controlnet_equals_diffusers_pipeline(arch):
    c = tiny_components(arch)
    net = tiny_controlnet(arch)
    image = control_image()
    ours = Pipeline(c, progress=False).generate(PROMPT, controlnets=[ControlUnit(net, image, scale=0.7)], **SETTINGS)[0]
    plain = Pipeline(c, progress=False).generate(PROMPT, **SETTINGS)[0]
    latents = ImageNoise([11]).initial_latents(c.unet.config.in_channels, 8, 8)
    theirs = _diffusers(c, [net])(PROMPT, image=image, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0,
                                  height=64, width=64, latents=latents, controlnet_conditioning_scale=0.7,
                                  output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-2  # the net changed the image: the comparison is not vacuous


def test_two_controlnets_sum_as_diffusers_multicontrolnet():
    c = tiny_components("sd1")
    nets, images = [tiny_controlnet("sd1", 0), tiny_controlnet("sd1", 5)], [control_image(0), control_image(1)]
    units = [ControlUnit(nets[0], images[0], scale=0.5), ControlUnit(nets[1], images[1], scale=1.2)]
    ours = Pipeline(c, progress=False).generate(PROMPT, controlnets=units, **SETTINGS)[0]
    latents = ImageNoise([11]).initial_latents(4, 8, 8)
    theirs = _diffusers(c, nets)(PROMPT, image=images, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0,
                                 height=64, width=64, latents=latents, controlnet_conditioning_scale=[0.5, 1.2],
                                 output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 1e-4


def test_scale_zero_and_empty_window_equal_no_controlnet_exactly():
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    net = tiny_controlnet("sd1")
    zero = pipe.generate(PROMPT, controlnets=[ControlUnit(net, control_image(), scale=0.0)], **SETTINGS)[0]
    assert np.array_equal(plain, zero)


def test_start_end_window_follows_a1111(monkeypatch):
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    net = tiny_controlnet("sd1")
    seen = []
    original = ControlNetControl._run

    def spy(prepared, inputs, first):
        seen.append(float(inputs.sigma[0]))
        return original(prepared, inputs, first)

    monkeypatch.setattr(ControlNetControl, "_run", staticmethod(spy))
    steps = 10
    pipe.generate(PROMPT, controlnets=[ControlUnit(net, control_image(), start=0.3, end=0.6)],
                  **{**SETTINGS, "steps": steps})
    from stablekit.samplers import resolve_sampling

    schedule = resolve_sampling("Euler", "Normal").sigmas(steps, pipe.denoiser)
    ran = [int(np.argmin(np.abs(schedule.numpy() - s))) for s in seen]
    # A1111: step k sees fraction max(k-1, 0)/10; 0.3 <= f <= 0.6 -> steps 4..7
    assert ran == [4, 5, 6, 7]
    assert [k for k in range(steps) if active(ControlUnit(None, None, start=0.3, end=0.6), k, steps)] == ran


def test_control_modes_scale_blocks_and_guess_mode_leaves_the_negative_half():
    unit = ControlUnit(None, None, scale=0.8, mode="prompt").validate()
    scales = block_scales(unit, 13)
    assert scales[-1] == pytest.approx(0.8) and scales[0] == pytest.approx(0.8 * 0.825**12)
    assert block_scales(unit, 10) == scales[:10]  # SDXL: the extension takes the first ten
    assert block_scales(ControlUnit(None, None, scale=0.8).validate(), 13) == [0.8] * 13
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    net = tiny_controlnet("sd1")
    from stablekit.generate.control import prepare_units

    prepared = prepare_units([ControlUnit(net, control_image(), mode="controlnet")], c, 64, 64)
    control = ControlNetControl(prepared, torch.tensor([14.6, 1.0, 0.0]), images=1)
    from stablekit.generate.denoiser import UNetInput

    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, sigma, states = torch.tensor([999.0] * 3), torch.tensor([14.6] * 3), torch.randn(3, 77, 32)
    residuals = control(UNetInput(x[:2], t[:2], states[:2], None, sigma[:2], uncond_rows=1))
    assert all(torch.count_nonzero(r[0]) == 0 and torch.count_nonzero(r[1]) > 0 for r in [*residuals.down, residuals.mid])
    # PAG's batch [uncond, cond, perturbed]: only the negative prompt's row goes without
    residuals = control(UNetInput(x, t, states, None, sigma, uncond_rows=1))
    assert all(r.shape[0] == 3 and torch.count_nonzero(r[0]) == 0 and torch.count_nonzero(r[1]) > 0
               and torch.count_nonzero(r[2]) > 0 for r in [*residuals.down, residuals.mid])
    # without CFG (no negative rows) every row gets the residuals
    residuals = control(UNetInput(x[1:2], t[:1], states[:1], None, sigma[:1]))
    assert all(torch.count_nonzero(r[0]) > 0 for r in [*residuals.down, residuals.mid])
    assert pipe  # the pipeline path runs the same Control (test_controlnet_equals_diffusers_pipeline)


def test_infotext_and_record_name_the_units(tmp_path):
    from stablekit.formats.controlnet import save_controlnet

    c = tiny_components("sd1")
    path = save_controlnet(tiny_controlnet("sd1"), tmp_path / "control_tiny.safetensors")
    unit = ControlUnit(str(path), control_image(), scale=0.75, end=0.9, preprocessor="canny", mode="prompt")
    image = Pipeline(c, progress=False).generate(PROMPT, controlnets=[unit], **{**SETTINGS, "output": "pil"})[0]
    fields = parse_parameters(image.info["parameters"])
    assert fields["ControlNet 0"].startswith("Module: canny, Model: control_tiny [")
    assert fields["ControlNet 0"].endswith(
        "], Weight: 0.75, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, "
        "Guidance Start: 0.0, Guidance End: 0.9, Pixel Perfect: False, Control Mode: My prompt is more important")
    import json

    record = json.loads(image.info["stablekit"])["controlnet"][0]
    assert record["source"] == str(path) and record["preprocessor"] == "canny" and record["end"] == 0.9
    assert len(record["image"]["sha256"]) == 64


def test_bad_units_fail_in_one_line(tmp_path):
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    net = tiny_controlnet("sd1")
    for unit, words in ((ControlUnit(net, control_image(), scale=3), "scale must be between"),
                        (ControlUnit(net, control_image(), start=0.8, end=0.2), "after its end"),
                        (ControlUnit(net, control_image(), mode="loud"), "unknown control mode"),
                        (ControlUnit(net, control_image(), preprocessor="openpose"), "unknown ControlNet preprocessor"),
                        (ControlUnit(tiny_controlnet("sdxl"), control_image()), "another architecture"),
                        (ControlUnit(net, tmp_path / "missing.png"), "cannot read control image")):
        with pytest.raises(StablekitError, match=words) as err:
            pipe.generate(PROMPT, controlnets=[unit], **SETTINGS)
        assert "\n" not in str(err.value)


def test_control_image_of_another_size_is_fitted_with_a_note(capsys):
    c = tiny_components("sd1")
    out = Pipeline(c, progress=False).generate(
        PROMPT, controlnets=[ControlUnit(tiny_controlnet("sd1"), control_image(size=96))], **SETTINGS)
    assert out[0].shape == (64, 64, 3)
    assert "control image 0 is 96x96; fitted to 64x64 (Crop and Resize)" in capsys.readouterr().err
