"""data/: validation grids come from the public generation API; array datasets and encoders."""
from __future__ import annotations

import numpy as np
import torch
from fixtures import one_thread, tiny_components

from stablekit.data import LatentData, PixelData, encode_text, image_grid, to_pixels, to_u8
from stablekit.data.validation import grid_sampler, sample_grid
from stablekit.generate.pipeline import Pipeline


def test_sample_grid_is_exactly_what_generate_makes():
    comps = tiny_components("sd1")
    prompts = ["a red circle", "a blue square", "a star"]
    with one_thread():
        grid = sample_grid(comps, prompts, seed=7, steps=3, cfg=4.0, cols=2)
        want = [Pipeline(comps, progress=False).generate(p, seed=7 + i, steps=3, cfg=4.0, sampler="Euler")[0]
                for i, p in enumerate(prompts)]
    w, h = want[0].size
    assert grid.size == (2 * w, 2 * h)
    g = np.asarray(grid)
    for i, im in enumerate(want):
        r, c = divmod(i, 2)
        assert np.array_equal(g[r * h:(r + 1) * h, c * w:(c + 1) * w], np.asarray(im))
    assert (g[h:, w:] == 128).all()  # the empty cell stays grey
    # the same grid every step (fixed seeds), so steps compare like for like
    with one_thread():
        assert np.array_equal(np.asarray(grid_sampler(comps, prompts, seed=7, steps=3, cfg=4.0, cols=2)(5)), g)


def test_pixels_round_trip_and_grid():
    u8 = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    x = to_pixels(u8)
    assert x.shape == (3, 3, 4, 5) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.stack(to_u8(x)), u8)
    assert image_grid(list(u8), cols=2).size == (10, 8)


def test_array_datasets_index_captions():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    images[2] = 255
    ids = torch.arange(6).reshape(2, 3)
    data = PixelData(images, np.array([1, 0, 1, 0]), ids)
    b = data.get_batch(np.array([2, 1]))
    assert len(data) == 4 and torch.equal(b["input_ids"], ids[[1, 0]]) and (b["pixels"][0] == 1).all()
    lat = LatentData(torch.arange(4.0).view(4, 1, 1, 1), np.array([0, 1, 1, 0]), torch.tensor([[[1.0]], [[2.0]]]),
                     torch.zeros(1, 1))
    b = lat.get_batch(np.array([3, 1]))
    assert b["latents"].flatten().tolist() == [3.0, 1.0] and b["text"].flatten().tolist() == [1.0, 2.0]


def test_encode_text_matches_the_text_encoder_at_77_tokens():
    comps = tiny_components("sd1")
    got = encode_text(comps.text_encoder, comps.tokenizer, ["a cat", ""], batch=1)
    ids = comps.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = comps.text_encoder(input_ids=ids).last_hidden_state
    assert got.shape == (2, 77, 32) and torch.equal(got[:1], want)
