"""A1111's seed extras: variation seed (slerp of two noises), variation strength, seed resize."""
from __future__ import annotations

import numpy as np
import torch
from fixtures import tiny_components

from stablekit.generate.noise import ImageNoise, batch_seeds, paste_centered, slerp
from stablekit.generate.params import GenerationParams
from stablekit.generate.pipeline import Pipeline
from stablekit.metadata import parse_parameters


def _draw(seed, shape):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def _reference_slerp(t, low, high):
    """A1111 modules/rng.py slerp, computed independently in float64 NumPy: unit vectors along
    axis 1 of [C, H, W], omega = arccos(cosine), sin-weighted sum; linear (t on low) if the mean
    cosine exceeds 0.9995."""
    low, high = low.double().numpy(), high.double().numpy()
    lu = low / np.linalg.norm(low, axis=1, keepdims=True)
    hu = high / np.linalg.norm(high, axis=1, keepdims=True)
    cos = (lu * hu).sum(1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = np.arccos(cos)
    return (np.sin((1 - t) * omega) / np.sin(omega))[:, None] * low + (np.sin(t * omega) / np.sin(omega))[:, None] * high


def test_slerp_is_a1111_arithmetic():
    a, b = _draw(1, (4, 8, 6)), _draw(2, (4, 8, 6))
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert np.allclose(slerp(t, a, b).numpy(), _reference_slerp(t, a, b), atol=1e-5)
    assert torch.equal(slerp(0.0, a, b), a)  # strength 0: the seed's own noise, exactly
    near = a + 1e-4 * b  # nearly parallel: A1111's linear fallback weighs `low` by t
    assert torch.allclose(slerp(0.3, a, near), a * 0.3 + near * 0.7)


def test_first_noise_is_a1111_create_random_tensors():
    shape = (4, 8, 8)
    plain = ImageNoise([5, 6]).first(shape)
    assert torch.equal(plain[1], _draw(6, shape))
    varied = ImageNoise([5, 5], [100, 101], 0.25).first(shape)
    assert torch.equal(varied[0], slerp(0.25, _draw(5, shape), _draw(100, shape)))
    assert torch.equal(varied[1], slerp(0.25, _draw(5, shape), _draw(101, shape)))
    # later draws (ancestral samplers) come from the seed's generator after its first full draw
    noise = ImageNoise([5], [100], 0.25)
    noise.first(shape)
    g = torch.Generator("cpu").manual_seed(5)
    torch.randn(shape, generator=g)
    assert torch.equal(noise(torch.empty(1, *shape))[0], torch.randn(shape, generator=g))


def test_seed_resize_pastes_the_small_noise_centred():
    resized = ImageNoise([7], seed_resize_from=(48, 32)).first((4, 8, 10))  # from 6x4 latents into 10x8
    small, full = _draw(7, (4, 4, 6)), _draw(7, (4, 8, 10))
    assert torch.equal(resized[0, :, 2:6, 2:8], small)  # offsets (8-4)//2, (10-6)//2
    assert torch.equal(resized[0, :, :2], full[:, :2]) and torch.equal(resized[0, :, :, :2], full[:, :, :2])
    bigger = ImageNoise([7], seed_resize_from=(96, 96)).first((4, 8, 8))  # from 12x12: centre crop
    assert torch.equal(bigger[0], _draw(7, (4, 12, 12))[:, 2:10, 2:10])
    assert torch.equal(paste_centered(torch.zeros(1, 4, 4), torch.ones(1, 2, 2))[0, 1:3, 1:3], torch.ones(2, 2))


def test_a1111_seed_numbering():
    assert batch_seeds(10, 50, 0.0, 2, 2) == ([12, 13], [50, 50])
    assert batch_seeds(10, 50, 0.3, 2, 2) == ([10, 10], [52, 53])  # A1111: with a strength, seeds stay


def test_pipeline_writes_and_reads_variation_fields():
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    settings = dict(steps=2, seed=3, subseed=40, subseed_strength=0.3, seed_resize_from_w=48, seed_resize_from_h=56,
                    batch_size=2)
    images = pipe.generate("a cat", **settings)
    fields = parse_parameters(images[1].info["parameters"])
    assert fields["Seed"] == "3" and fields["Variation seed"] == "41" and fields["Variation seed strength"] == "0.3"
    assert (fields["Seed resize from-1"], fields["Seed resize from-2"]) == ("48", "56")
    params = GenerationParams.from_a1111(fields)
    assert (params.subseed, params.subseed_strength, params.seed_resize_from_w, params.seed_resize_from_h) == (41, 0.3, 48, 56)
    plain = pipe.generate("a cat", steps=2, seed=3)[0]
    assert "Variation" not in plain.info["parameters"] and "Seed resize" not in plain.info["parameters"]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(plain))
    alone = pipe.generate("a cat", **{**settings, "subseed": 41, "batch_size": 1})[0]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(images[1], dtype=int)).max() <= 1
