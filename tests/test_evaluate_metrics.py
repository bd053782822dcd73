"""Held-out loss and CLIP score on tiny seeded models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import tiny_components

from stablekit.errors import StablekitError
from stablekit.evaluate.loss import fixed_timesteps, heldout_loss


def _images(n=3, seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_fixed_timesteps_cover_the_schedule():
    assert fixed_timesteps(1000, 4) == [125, 375, 625, 875]
    assert fixed_timesteps(1000, 1) == [500]


@pytest.mark.parametrize("arch", ["sd1", "sd2-v"])
def test_heldout_loss_is_deterministic_and_matches_a_diffusers_recomputation(arch):
    from diffusers import DDPMScheduler

    c = tiny_components(arch)
    images, captions = _images(), ["a red circle", "a blue square", ""]
    a = heldout_loss(c, images, captions, timesteps=3, seed=5, batch_size=2)
    b = heldout_loss(c, images, captions, timesteps=3, seed=5, batch_size=3)  # batching must not matter
    assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.n == 3 and len(a.per_timestep) == 3
    assert heldout_loss(c, images, captions, timesteps=3, seed=6).loss != pytest.approx(a.loss, rel=1e-6)
    # image 1 at the middle timestep, recomputed with diffusers' own forward process and target
    sched = DDPMScheduler.from_config(c.scheduler_config)
    t = a.timesteps[1]
    x = torch.from_numpy(images[1:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = c.vae.encode(x).latent_dist.mean * c.vae.config.scaling_factor
        noise = torch.randn((3, *z.shape[1:]), generator=torch.Generator().manual_seed(5 * 1_000_003 + 1))[1][None]
        tt = torch.tensor([t])
        noisy = sched.add_noise(z, noise, tt)
        target = sched.get_velocity(z, noise, tt) if arch == "sd2-v" else noise
        from stablekit.prompts.encode import PromptEncoder

        ctx = PromptEncoder(c).encode("a blue square").hidden_states
        pred = c.unet(noisy, tt, encoder_hidden_states=ctx).sample
        single = heldout_loss(c, images[1:2], ["a blue square"], timesteps=[t], seed=5)
    # the single-image run uses index 0's noise; rebuild that one too
    noise0 = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(5 * 1_000_003))
    with torch.no_grad():
        noisy0 = sched.add_noise(z, noise0, tt)
        target0 = sched.get_velocity(z, noise0, tt) if arch == "sd2-v" else noise0
        pred0 = c.unet(noisy0, tt, encoder_hidden_states=ctx).sample
    assert single.loss == pytest.approx(float(((pred0 - target0) ** 2).mean()), rel=1e-4)
    assert float(((pred - target) ** 2).mean()) > 0


def test_heldout_loss_rejects_bad_input():
    c = tiny_components("sd1")
    with pytest.raises(StablekitError, match="one caption per image"):
        heldout_loss(c, _images(2), ["x"])
    with pytest.raises(StablekitError, match="multiple of"):
        heldout_loss(c, _images(1, size=60), ["x"])
    with pytest.raises(StablekitError, match="timesteps must lie"):
        heldout_loss(c, _images(1), ["x"], timesteps=[5000])


def test_heldout_loss_of_the_embedded_model_prefers_true_captions():
    """A trained model denoises a rendered image better given its own caption than another's."""
    import stablekit
    from stablekit.shapes.captions import make_batch

    comps = stablekit.load(progress=False).components
    images, captions, _ = make_batch(8, seed=424242)
    true = heldout_loss(comps, images, captions, timesteps=5).loss
    wrong = heldout_loss(comps, images, captions[1:] + captions[:1], timesteps=5).loss
    assert true < wrong


# ---- CLIP score ----

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from stablekit.formats import clip_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).eval().save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


def test_clip_score_matches_the_definition(tiny_clip):
    from transformers import CLIPModel

    from stablekit.evaluate.clip_score import ClipScorer
    from stablekit.formats import clip_tokenizer

    scorer = ClipScorer(tiny_clip)
    images, prompts = _images(3, size=48), ["a red circle", "a photo of a cat", "x"]
    got = scorer.scores(images, prompts)
    assert got.shape == (3,) and np.all(got >= 0) and np.all(got <= 100)
    assert scorer(images, prompts) == pytest.approx(got.mean())
    # independent: transformers' own model forward (logits_per_image = scale * cosine)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok = clip_tokenizer()(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                    pixel_values=scorer.preprocess(images))
    cos = torch.diagonal(out.logits_per_image).numpy() / model.logit_scale.exp().item()
    assert np.allclose(got, 100 * np.clip(cos, 0, None), atol=1e-3)
    # float input in [0, 1] is quantised first, so it scores as its uint8 form
    assert np.allclose(scorer.scores(images / 255.0, prompts), got, atol=1e-4)


def test_clip_preprocess_resizes_shortest_side_and_centre_crops(tiny_clip):
    from stablekit.evaluate.clip_score import CLIP_MEAN, CLIP_STD, ClipScorer

    scorer = ClipScorer(tiny_clip)
    img = np.zeros((1, 40, 80, 3), np.uint8)
    img[:, :, 20:60] = 255  # white middle half: what the centre crop keeps
    x = scorer.preprocess(img)
    assert x.shape == (1, 3, 32, 32)
    white = (1 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    assert np.allclose(x[0, :, 16, 16].numpy(), white, atol=1e-5)


def test_clip_missing_model_is_one_line(tmp_path):
    from stablekit.evaluate.clip_score import ClipScorer

    with pytest.raises(StablekitError, match="no CLIP model at"):
        ClipScorer(tmp_path)
