"""img2img and inpainting with a plain (4-channel) model equal diffusers' pipelines on tiny random models.

Conventions bridged here, each stated where it is done: diffusers runs int(strength * steps) steps,
A1111 (us) int(strength * steps) + 1, so strength 0.75 there is 0.5 here at 4 steps; diffusers samples
the VAE posterior where A1111 takes its mean (patched to the mean on their side).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint_module
from fixtures import tiny_components
from PIL import Image

from stablekit.generate import pipeline as pipeline_module
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import InitImage, encode_image

PROMPT, NEGATIVE = "a photo of a cat on a sofa", "blurry, low quality"
OURS = dict(negative_prompt=NEGATIVE, steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=3)
THEIRS = dict(negative_prompt=NEGATIVE, strength=0.75, num_inference_steps=4, guidance_scale=5.0, height=64, width=64)


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _parts(c) -> dict:
    scheduler = EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"})
    return dict(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _mean(out, generator=None, sample_mode="sample"):
    return out.latent_dist.mode()


@pytest.mark.parametrize("arch", ["sd1", "sd2-v"])
def test_img2img_equals_diffusers_img2img_pipeline(arch, monkeypatch):
    c = tiny_components(arch)
    image = _image()
    ours = Pipeline(c, progress=False).img2img(image, PROMPT, strength=0.5, output="np", **OURS)[0]
    monkeypatch.setattr(img2img_module, "retrieve_latents", _mean)
    pipe = StableDiffusionImg2ImgPipeline(**_parts(c))
    pipe.set_progress_bar_config(disable=True)
    # its generator's first draw is the start noise, as ours (a CPU generator seeded with the seed)
    theirs = pipe(PROMPT, image=image, generator=torch.Generator().manual_seed(3), output_type="np", **THEIRS).images[0]
    # sd2-v: the tiny random v model amplifies float-order differences (tests/test_generate.py EQUALITY_TOLERANCE)
    assert np.abs(ours - theirs).max() <= (1e-4 if arch == "sd1" else 5e-3)
    assert np.abs(ours - np.asarray(image) / 255).max() > 5e-2  # the image was changed: not vacuous


def test_plain_model_inpainting_equals_diffusers_inpaint_pipeline_in_the_mask(monkeypatch):
    """A1111 resets x0 outside the mask after every model call; diffusers' legacy inpainting re-noises
    the image latents there after every step. With Euler both give the same latents inside the mask
    (outside, x_i = init + noise * sigma_i on both sides), except that diffusers' last step leaves the
    model's prediction outside where A1111 leaves the image's latents: so latents are compared inside
    the mask and ours must be the image's latents outside (up to rounding)."""
    c = tiny_components("sd1")
    image = _image()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255  # whole latent cells: both sides resize it to the same latent mask
    captured = {}
    decode = pipeline_module.decode

    def keep(components, latents):
        captured["latents"] = latents.clone()
        return decode(components, latents)

    monkeypatch.setattr(pipeline_module, "decode", keep)
    Pipeline(c, progress=False).inpaint(image, Image.fromarray(mask), PROMPT, strength=0.5, output="np", **OURS)
    monkeypatch.setattr(inpaint_module, "retrieve_latents", _mean)
    pipe = StableDiffusionInpaintPipeline(**_parts(c))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=image, mask_image=Image.fromarray(mask), generator=torch.Generator().manual_seed(3),
                  output_type="latent", **THEIRS).images
    inside = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    inside[..., 2:6, 1:5] = True
    ours = captured["latents"]
    assert (ours - theirs).abs()[inside.expand_as(ours)].max() <= 1e-4
    init = encode_image(c, InitImage.load(image, 64, 64))
    # the last Euler step lands on x0 = the image's latents outside, up to float rounding
    assert (ours - init).abs()[~inside.expand_as(ours)].max() <= 1e-6
    assert (ours - init).abs()[inside.expand_as(ours)].max() > 5e-2  # the masked part was repainted
