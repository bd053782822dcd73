"""The public generation steps (generate/steps.py), each on its own and composed without a Pipeline."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from fixtures import tiny_components
from PIL import Image

from stablekit.errors import StablekitError
from stablekit.generate import steps
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import InitImage, InpaintMask, StepConditioning
from stablekit.prompts import ParsedPrompt
from stablekit.samplers import resolve_sampling


def _image(seed=0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_ksampler_style_call_without_pipeline_equals_generate(tiny_pipe):
    """What a ComfyUI KSampler node does: given latents + conditioning, sample() then decode()."""
    c = tiny_pipe.components
    sampling = resolve_sampling("euler_ancestral", "karras")
    sigmas = sampling.sigmas(5, tiny_pipe.denoiser)
    cond = steps.condition(tiny_pipe.prompts, "a red circle", "blurry", 5, 1, 6.0, size=(64, 64))
    latents = steps.sample(tiny_pipe.denoiser, steps.empty_latents(c, 64, 64), sigmas, sampling, cond, ImageNoise([4, 5]))
    ours = steps.decode(c, latents)
    ref = tiny_pipe.generate("a red circle", negative_prompt="blurry", steps=5, cfg=6, sampler="Euler a",
                        schedule="Karras", seed=4, batch_size=2, width=64, height=64, output="np")
    assert np.array_equal(ours, np.stack(ref))


def test_sample_on_already_noisy_latents(tiny_pipe):
    """A hires-fix-style second pass adds its own noise: add_noise=False takes latents as they are."""
    c = tiny_pipe.components
    sampling = resolve_sampling("Euler")
    sigmas = sampling.sigmas(4, tiny_pipe.denoiser)
    cond = steps.condition(tiny_pipe.prompts, "a cat", "", 4, 1, 5.0)
    clean = steps.empty_latents(c, 64, 64)
    a = steps.sample(tiny_pipe.denoiser, clean, sigmas, sampling, cond, ImageNoise([9]))
    noisy = clean + ImageNoise([9]).first(tuple(clean.shape[1:])) * sigmas[0]
    b = steps.sample(tiny_pipe.denoiser, noisy, sigmas, sampling, cond, ImageNoise([9]), add_noise=False)
    assert torch.equal(a, b)
    with pytest.raises(StablekitError, match="resolved sampler"):
        steps.sample(tiny_pipe.denoiser, clean, sigmas, "Euler", cond, ImageNoise([9]))


def test_sample_reports_steps_and_keeps_latents_outside_mask(tiny_pipe):
    c = tiny_pipe.components
    sampling = resolve_sampling("DPM++ 2M")
    sigmas = sampling.sigmas(3, tiny_pipe.denoiser)
    cond = steps.condition(tiny_pipe.prompts, "a cat", "", 3, 1, 7.0)
    start = steps.encode_image(c, InitImage.load(_image(1)))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    seen = []
    out = steps.sample(tiny_pipe.denoiser, start, sigmas, sampling, cond, ImageNoise([1]), seen.append, mask=mask)
    assert [info.i for info in seen] == [0, 1, 2]
    keep = mask.expand_as(out) == 0
    assert torch.allclose(out[keep], start.expand_as(out)[keep], atol=1e-5)
    assert not torch.allclose(out[~keep], start.expand_as(out)[~keep], atol=1e-2)


def test_conditioning_schedule_and_sdxl_size_ids():
    sd1 = Pipeline(tiny_components("sd1"), progress=False)
    plain = steps.condition(sd1.prompts, "a cat", "ugly", 10)
    assert plain.constant and plain.added_time_ids is None
    cond, uncond = sd1.prompts.encode_pair("a cat", "ugly")
    assert torch.equal(plain.at(0)[0].hidden_states, cond.hidden_states)
    assert torch.equal(plain.at(9)[1].hidden_states, uncond.hidden_states)
    edited = steps.condition(sd1.prompts, "a [cat:dog:5]", "ugly", 10)
    assert not edited.constant and [end for end, _ in edited.cond] == [5, 10]
    dog = sd1.prompts.encode("a dog").hidden_states
    assert torch.equal(edited.at(6)[0].hidden_states, dog) and not torch.equal(edited.at(5)[0].hidden_states, dog)
    xl = Pipeline(tiny_components("sdxl"), progress=False)
    with pytest.raises(StablekitError, match="size"):
        steps.condition(xl.prompts, "a cat", "", 4)
    c = steps.condition(xl.prompts, "a cat", "", 4, size=(96, 64))
    assert c.added_time_ids.tolist() == [[64, 96, 0, 0, 64, 96]]
    assert not c.at(0)[1].hidden_states.any()  # SDXL: an empty negative is zeros


def test_one_pairing_rule_for_plain_and_edited_prompts(tiny_pipe):
    """encode_pair_schedule (prompt editing) pads and zeroes exactly as encode_pair does."""
    long_negative = "word " * 90  # two chunks: the prompt is padded to match
    conds, unconds = tiny_pipe.prompts.encode_pair_schedule("a [cat|dog]", long_negative, 4)
    cat, neg = tiny_pipe.prompts.encode_pair("a cat", long_negative)
    assert conds[0][1].hidden_states.shape[1] == unconds[0][1].hidden_states.shape[1] == 154
    assert torch.equal(conds[0][1].hidden_states, cat.hidden_states)
    assert torch.equal(unconds[0][1].hidden_states, neg.hidden_states)


def test_extra_network_tags_parsed_once_per_prompt(tiny_pipe, monkeypatch, capsys):
    import stablekit.prompts.parse as parse

    calls = []
    real = parse.extract_extra_networks
    monkeypatch.setattr(parse, "extract_extra_networks", lambda p: calls.append(p) or real(p))
    tiny_pipe.generate("a [cat:dog:0.5] <hypernet:watercolor:0.8>", negative_prompt="ugly", steps=2, seed=1, output="np")
    assert sorted(calls) == ["a [cat:dog:0.5] <hypernet:watercolor:0.8>", "ugly"]
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "<hypernet:watercolor:0.8>" in err and "not applied" in err
    assert ParsedPrompt.parse("x <lora:a:1> <hypernet:b>").networks[1].kind == "hypernet"


def test_init_image_and_mask_are_typed_and_identified(tmp_path):
    path = tmp_path / "in.png"
    _image(2, (70, 50)).save(path)
    init = InitImage.load(path)
    assert (init.width, init.height) == (64, 48)  # own size rounded down to multiples of 8
    assert InitImage.load(init) is init
    resized = InitImage.load(init, 32, 32)
    assert resized.identity() == {"sha256": hashlib.sha256(resized.rgb.tobytes()).hexdigest(), "width": 32, "height": 32}
    m = np.zeros((48, 64), np.float32)
    m[10:30, 5:40] = 1
    mask = InpaintMask.load(m, 64, 48)
    assert mask.identity()["sha256"] == hashlib.sha256((m * 255).astype(np.uint8).tobytes()).hexdigest()
    assert mask.latent(8).shape == (1, 1, 6, 8) and set(mask.latent(8).unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(StablekitError, match="cannot read mask"):
        InpaintMask.load(tmp_path / "missing.png", 64, 48)


def test_paste_back_and_decode():
    c = tiny_components("sd1")
    init = InitImage.load(_image(3))
    pixels = np.full((1, 64, 64, 3), 0.5, np.float32)
    assert steps.paste_back(pixels, init, None) is pixels
    m = np.zeros((64, 64), np.float32)
    m[:32] = 1
    out = steps.paste_back(pixels, init, InpaintMask.load(m, 64, 64))
    assert np.array_equal(out[0, 32:], init.pixels[32:]) and np.all(out[0, :32] == 0.5)
    with pytest.raises(StablekitError, match="needs an image"):
        steps.paste_back(pixels, None, InpaintMask.load(m, 64, 64))
    decoded = steps.decode(c, torch.zeros(2, 4, 8, 8))
    assert isinstance(decoded, np.ndarray) and decoded.shape == (2, 64, 64, 3)


def test_step_conditioning_without_guidance():
    cond = StepConditioning([(4, "c")], None)
    assert cond.constant and cond.at(3) == ("c", None)
