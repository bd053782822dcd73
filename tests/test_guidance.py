"""Guidance options (generate/guidance.py): CFG rescale, FreeU and PAG equal diffusers' implementations
on tiny random models; all off is bit-identical to plain generation; fix steps follows A1111."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPAGPipeline, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from fixtures import tiny_components
from PIL import Image

from stablekit.errors import StablekitError
from stablekit.generate.guidance import GuidanceOptions, pag_modules, rescale_cfg
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import img2img_schedule
from stablekit.samplers import resolve_sampling

PROMPT, NEGATIVE = "a photo of a cat on a sofa", "blurry, low quality"
SETTINGS = dict(negative_prompt=NEGATIVE, steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64,
                height=64, output="np")


def _diffusers(c, pag_layers=None):
    # Normal schedule == diffusers' "linspace" spacing when 999 / (steps - 1) is whole (steps = 4)
    scheduler = EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"})
    kwargs = dict(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=scheduler,
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline(**kwargs) if pag_layers is None else \
        StableDiffusionPAGPipeline(**kwargs, pag_applied_layers=pag_layers)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(c, pag_layers=None, **kwargs):
    latents = ImageNoise([11]).initial_latents(4, 8, 8)
    return _diffusers(c, pag_layers)(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0,
                                     height=64, width=64, latents=latents, output_type="np", **kwargs).images[0]


def test_rescale_math_is_diffusers_rescale_noise_cfg():
    g = torch.Generator().manual_seed(0)
    guided, cond = torch.randn(2, 4, 8, 8, generator=g) * 3, torch.randn(2, 4, 8, 8, generator=g)
    assert torch.equal(rescale_cfg(guided, cond, 0.7), rescale_noise_cfg(guided, cond, guidance_rescale=0.7))


@pytest.mark.parametrize("arch", ["sd1", "sd2-v"])
def test_cfg_rescale_equals_diffusers_guidance_rescale(arch):
    c = tiny_components(arch)
    pipe = Pipeline(c, progress=False)
    ours = pipe.generate(PROMPT, guidance=GuidanceOptions(cfg_rescale=0.7), **SETTINGS)[0]
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    theirs = _theirs(c, guidance_rescale=0.7)
    # sd2-v: the tiny random v model amplifies float-order differences (tests/test_generate.py EQUALITY_TOLERANCE)
    assert np.abs(ours - theirs).max() <= (1e-4 if arch == "sd1" else 5e-3)
    assert np.abs(ours - plain).max() > 2e-2  # the rescale changed the image: the comparison is not vacuous


def test_freeu_equals_diffusers_enable_freeu_and_is_removed_after():
    c = tiny_components("sd1")
    values = (1.3, 1.4, 0.8, 0.3)  # b1, b2, s1, s2
    ours = Pipeline(c, progress=False).generate(PROMPT, guidance=GuidanceOptions(freeu=values), **SETTINGS)[0]
    assert all(getattr(b, "b1", None) is None for b in c.unet.up_blocks)  # nothing left on the UNet
    plain = Pipeline(c, progress=False).generate(PROMPT, **SETTINGS)[0]
    c.unet.enable_freeu(s1=0.8, s2=0.3, b1=1.3, b2=1.4)
    try:
        theirs = _theirs(c)
    finally:
        c.unet.disable_freeu()
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - plain).max() > 2e-2


# "mid" (diffusers' default) is a 1x1 map in the tiny UNet at 64 px, where self-attention is the
# identity already: equal, but unchanged; the second set changes the image.
@pytest.mark.parametrize("layers, changes", [(["mid"], False), (["down_blocks.1", "up_blocks.1.attentions.0"], True)])
def test_pag_equals_diffusers_pag_pipeline(layers, changes):
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    before = {name: type(p) for name, p in c.unet.attn_processors.items()}
    ours = pipe.generate(PROMPT, guidance=GuidanceOptions(pag_scale=3.0, pag_layers=tuple(layers)), **SETTINGS)[0]
    assert {name: type(p) for name, p in c.unet.attn_processors.items()} == before  # processors restored
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    theirs = _theirs(c, pag_layers=layers, pag_scale=3.0)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (np.abs(ours - plain).max() > 2e-2) == changes


def test_pag_with_rescale_and_without_cfg_equal_diffusers():
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    both = GuidanceOptions(pag_scale=2.0, cfg_rescale=0.5, pag_layers=("down_blocks.1",))
    ours = pipe.generate(PROMPT, guidance=both, **SETTINGS)[0]
    theirs = _theirs(c, pag_layers=["down_blocks.1"], pag_scale=2.0, guidance_rescale=0.5)
    assert np.abs(ours - theirs).max() <= 1e-4
    # CFG 1: diffusers runs [cond, perturbed] only; so do we
    no_cfg = {**SETTINGS, "cfg": 1.0}
    ours = pipe.generate(PROMPT, guidance=GuidanceOptions(pag_scale=2.0, pag_layers=("down_blocks.1",)), **no_cfg)[0]
    latents = ImageNoise([11]).initial_latents(4, 8, 8)
    theirs = _diffusers(c, ["down_blocks.1"])(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=1.0,
                                    pag_scale=2.0, height=64, width=64, latents=latents, output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 1e-4


def test_all_off_is_bit_identical_to_plain_generation():
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    for off in (None, GuidanceOptions(), {"cfg_rescale": 0.0, "pag_scale": 0.0, "freeu": None}):
        assert np.array_equal(pipe.generate(PROMPT, guidance=off, **SETTINGS)[0], plain)
    init = Image.fromarray((plain * 255).astype(np.uint8))
    a = pipe.img2img(init, PROMPT, strength=0.5, **SETTINGS)[0]
    assert np.array_equal(pipe.img2img(init, PROMPT, strength=0.5, guidance=GuidanceOptions(), **SETTINGS)[0], a)


def test_fix_steps_schedule_is_a1111_setup_img2img_steps():
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    sampling = resolve_sampling("Euler", "Normal")
    # A1111: steps = int(10 / 0.3) = 33, t_enc = 9: sigmas[33 - 9 - 1:] -> 10 steps
    fixed = img2img_schedule(sampling, pipe.denoiser, 10, 0.3, fix_steps=True)
    assert torch.equal(fixed, sampling.sigmas(33, pipe.denoiser)[23:]) and len(fixed) == 11
    assert len(img2img_schedule(sampling, pipe.denoiser, 10, 0.3)) == 5  # int(0.3 * 10) + 1 = 4 steps
    assert torch.equal(img2img_schedule(sampling, pipe.denoiser, 10, 1.0, fix_steps=True), sampling.sigmas(10, pipe.denoiser))
    init = Image.new("RGB", (64, 64))
    seen = []
    pipe.img2img(init, PROMPT, strength=0.3, guidance={"fix_steps": True}, callback=lambda i: seen.append(i["step"]),
                 **{**SETTINGS, "steps": 6})
    assert seen == [1, 2, 3, 4, 5, 6]


def test_metadata_records_the_options_and_freeu_defaults_follow_the_architecture():
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    settings = {k: v for k, v in SETTINGS.items() if k != "output"}
    image = pipe.generate(PROMPT, guidance=GuidanceOptions(cfg_rescale=0.7, freeu=True, pag_scale=3.0), **settings)[0]
    text = image.info["parameters"]
    for part in ("CFG Rescale: 0.7", "freeu_enabled: True", "freeu_b1: 1.5", "freeu_b2: 1.6", "freeu_s1: 0.9",
                 "freeu_s2: 0.2", "PAG Scale: 3,", "PAG Applied Layers: mid"):
        assert part in text
    assert GuidanceOptions(freeu=True).resolved("sdxl").freeu == (1.3, 1.4, 0.9, 0.2)


def test_bad_options_are_one_line_errors():
    for bad, match in ((dict(cfg_rescale=1.5), "CFG rescale"), (dict(freeu=(1, 2)), "FreeU takes 4"),
                       (dict(pag_scale=-1), "PAG scale"), (dict(pag_layers=("mid(",), pag_scale=1), "PAG layer"),
                       (dict(fix_steps="yes"), "fix_steps")):
        with pytest.raises(StablekitError, match=match):
            GuidanceOptions(**bad).validate()
    with pytest.raises(StablekitError, match="matches PAG layer 'nowhere'"):
        pag_modules(tiny_components("sd1").unet, ["nowhere"])
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    with pytest.raises(StablekitError, match="guidance must be"):
        pipe.generate(PROMPT, guidance=3, **SETTINGS)
