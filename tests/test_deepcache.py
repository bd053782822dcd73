"""generate/deepcache.py and generate/accelerators.py: DeepCache is opt-in, skips the deep blocks on
cached calls, reproduces a full call from its cache, and is recorded in the image's metadata."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components

from stablekit.errors import StablekitError
from stablekit.generate.deepcache import deepcache
from stablekit.generate.pipeline import Pipeline

SETTINGS = dict(steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64)


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        yield Pipeline(tiny_components("sd1"), progress=False)


def test_cached_call_reuses_deep_features_and_skips_deep_blocks(pipe):
    unet = pipe.components.unet
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    ran = []
    mid_forward = type(unet.mid_block).forward
    with one_thread(), torch.no_grad(), deepcache(unet, 3) as dc:
        type(unet.mid_block).forward = lambda self, *a, **k: (ran.append(1), mid_forward(self, *a, **k))[1]
        try:
            full = unet(x, torch.tensor([500.0, 500.0]), encoder_hidden_states=ctx).sample
            dc.last_t = 1000.0  # as if t=500 came after a higher step: the next call uses the cache
            cached = unet(x, torch.tensor([500.0, 500.0]), encoder_hidden_states=ctx).sample
        finally:
            type(unet.mid_block).forward = mid_forward
        assert dc.stats == {"full": 1, "cached": 1} and ran == [1]  # the mid block ran only in the full call
    assert torch.allclose(cached, full, atol=1e-6)  # same input: the shallow branch + cache is the full call
    assert "forward" not in unet.__dict__ and all("forward" not in m.__dict__ for m in unet.modules())


def test_generate_with_deepcache_is_opt_in_and_recorded(pipe):
    with one_thread():
        base = pipe.generate("a cat", **SETTINGS)[0]
        off = pipe.generate("a cat", deepcache=1, **SETTINGS)[0]
        fast = pipe.generate("a cat", deepcache=2, **SETTINGS)[0]
    a, b, c = (np.asarray(i, dtype=np.float64) for i in (base, off, fast))
    assert np.array_equal(a, b)  # N=1: every call full, the exact image
    assert not np.array_equal(a, c) and np.abs(a - c).mean() < 40  # lossy, but the same picture
    assert "DeepCache: 2" in fast.info["parameters"] and "DeepCache" not in base.info["parameters"]
    assert '"deepcache": 2' in fast.info["stablekit"]
    with pytest.raises(StablekitError, match="deepcache must be a whole number"):
        pipe.generate("a cat", deepcache=-2, **SETTINGS)


def test_new_image_refills_the_cache(pipe):
    """Each image (timesteps start high again) begins with a full call, so batches do not leak."""
    with one_thread(), deepcache(pipe.components.unet, 10) as dc:
        pipe.generate("a cat", batch_count=2, **SETTINGS)
    assert dc.stats == {"full": 2, "cached": 6}


def test_cli_deepcache_and_no_trace(tmp_path):
    from PIL import Image

    from stablekit.cli import main

    out = tmp_path / "x.png"
    with one_thread():
        assert main(["generate", "a red circle", "--steps", "3", "--seed", "1", "--deepcache", "2", "--no-trace",
                     "--no-progress", "--out", str(out)]) == 0
    assert "DeepCache: 2" in Image.open(out).info["parameters"]


def test_traced_deepcache_equals_eager_deepcache(pipe, tmp_path):
    from stablekit.generate import traced

    with one_thread():
        eager = np.asarray(pipe.generate("a cat", deepcache=2, **SETTINGS)[0])
        tf = traced.install(pipe.components.unet, tmp_path)
        try:
            fast = np.asarray(pipe.generate("a cat", deepcache=2, **SETTINGS)[0])
        finally:
            traced.uninstall(pipe.components.unet)
    assert {k[0] for k in tf.traces if isinstance(k[0], str)} == {"full", "shallow"}
    assert all(v is not None for v in tf.traces.values())
    assert np.array_equal(eager, fast)
