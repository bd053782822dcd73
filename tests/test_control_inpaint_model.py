"""9-channel inpainting models (generate/inpaint_unet.py): equal to diffusers' StableDiffusionInpaintPipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint_module
from fixtures import tiny_components
from PIL import Image

from stablekit.errors import StablekitError
from stablekit.generate.pipeline import Pipeline

PROMPT, NEGATIVE = "a red circle", "blurry"


def inpainting_components(seed: int = 0):
    """tiny_components("sd1") with a seeded random 9-channel UNet of the same widths."""
    c = tiny_components("sd1", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        unet = UNet2DConditionModel.from_config({**dict(c.unet.config), "in_channels": 9})
        gen = torch.Generator().manual_seed(seed + 4)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    c.unet = unet.eval()
    return c


def images():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    return image, Image.fromarray(mask)


def test_inpainting_model_equals_diffusers(monkeypatch):
    c = inpainting_components()
    image, mask = images()
    # diffusers runs int(strength * steps) steps, A1111 int(strength * steps) + 1: 0.75 there = 0.5 here
    ours = Pipeline(c, progress=False).inpaint(image, mask, PROMPT, strength=0.5, negative_prompt=NEGATIVE, steps=4,
                                              cfg=5.0, sampler="Euler", schedule="Normal", seed=3, output="np")[0]
    # both sides encode with the VAE posterior mean (diffusers samples it by default)
    monkeypatch.setattr(inpaint_module, "retrieve_latents", lambda out, generator=None, sample_mode="sample":
                        out.latent_dist.mode())
    scheduler = EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"})
    pipe = StableDiffusionInpaintPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # given latents, diffusers starts from pure noise whatever the strength; its generator's first draw
    # is the seed's noise, as ours (ImageNoise: torch.randn on a CPU generator seeded with the seed)
    generator = torch.Generator().manual_seed(3)
    theirs = pipe(PROMPT, image=image, mask_image=mask, negative_prompt=NEGATIVE, strength=0.75, num_inference_steps=4,
                  guidance_scale=5.0, height=64, width=64, generator=generator, output_type="np").images[0]
    m = (np.asarray(mask) > 127)[:, :, None]
    theirs = np.where(m, theirs, np.asarray(image, dtype=np.float32) / 255)  # the paste-back every inpaint does
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - theirs)[m[:, :, 0]].size and np.abs(ours[m[:, :, 0]] - np.asarray(image)[m[:, :, 0]] / 255).max() > 1e-2


def test_inpainting_model_without_a_mask_is_one_line():
    pipe = Pipeline(inpainting_components(), progress=False)
    with pytest.raises(StablekitError, match="inpainting model"):
        pipe.generate(PROMPT, steps=2, width=64, height=64)
    with pytest.raises(StablekitError, match="inpainting model"):
        pipe.img2img(images()[0], PROMPT, steps=2)


def blurred_mask() -> np.ndarray:
    """A box mask Gaussian-blurred (sigma 4): grey levels on every edge, as a feathered mask from an editor."""
    from PIL import ImageFilter

    return np.asarray(images()[1].filter(ImageFilter.GaussianBlur(4)))


@pytest.mark.parametrize("options", [None, {"mask_blur": 4}, {"mask_blur": 0}])
def test_blurred_mask_is_binarised_as_diffusers_mask_processor(options, monkeypatch):
    """The 9-channel conditioning (mask channel and masked-image latents) equals diffusers' for the same
    blurred mask: VaeImageProcessor(do_binarize=True) at 0.5, then nearest-resized to latent size."""
    from diffusers.image_processor import VaeImageProcessor

    from stablekit.generate import inpaint_unet
    from stablekit.generate.inpaint_options import InpaintOptions

    c = inpainting_components()
    image, _ = images()
    seen = {}
    real = inpaint_unet.inpaint_conditioning

    def spy(components, init, mask):
        seen["mask"], seen["latents"] = real(components, init, mask)
        seen["repaint"] = mask
        return seen["mask"], seen["latents"]

    monkeypatch.setattr(inpaint_unet, "inpaint_conditioning", spy)
    settings = {} if options is None else {"inpaint_options": InpaintOptions(**options)}
    Pipeline(c, progress=False).inpaint(image, blurred_mask(), PROMPT, steps=1, seed=0, output="np", **settings)
    # diffusers gets the mask A1111 would hand on: the blurred one itself, or the option's re-blurred mask
    source = getattr(seen["repaint"], "blurred", None)
    source = blurred_mask() if source is None else np.rint(source * 255).astype(np.uint8)
    assert 0 < ((source > 0) & (source < 255)).mean()  # really soft
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    full = processor.preprocess(Image.fromarray(source), height=64, width=64)
    theirs = torch.nn.functional.interpolate(full, size=(8, 8))
    assert torch.equal(seen["mask"].float(), theirs)
    pixels = VaeImageProcessor(vae_scale_factor=8).preprocess(image, height=64, width=64)
    masked = pixels * (full < 0.5)
    with torch.no_grad():
        latents = c.vae.encode(masked).latent_dist.mode() * c.vae.config.scaling_factor
    assert torch.allclose(seen["latents"].float(), latents, atol=1e-5)
