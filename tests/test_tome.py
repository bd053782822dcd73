"""generate/tome.py: token merging (tomesd's math, A1111's deterministic destinations) merges and
restores tokens exactly where they are alike, shrinks only the highest-resolution self-attention,
is opt-in per call, recorded as A1111's "Token merging ratio", and leaves no hooks behind."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components

from stablekit.errors import StablekitError
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.tome import bipartite_soft_matching_2d, tome

SETTINGS = dict(steps=3, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64)


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        yield Pipeline(tiny_components("sd1"), progress=False)


def test_merge_then_unmerge_is_exact_for_cells_of_equal_tokens():
    g = torch.Generator().manual_seed(0)
    cells = torch.randn(2, 4, 3, 8, generator=g)  # B, 4x3 cells, C: every 2x2 cell holds one token 4 times
    x = cells[:, :, None, :, None, :].expand(2, 4, 2, 3, 2, 8).reshape(2, 8 * 6, 8)
    for r in (0, 12, 36):  # 36 = every non-destination token
        merge, unmerge = bipartite_soft_matching_2d(x, w=6, h=8, r=r)
        merged = merge(x)
        assert merged.shape == (2, 48 - r, 8)
        assert torch.allclose(unmerge(merged), x, atol=1e-6)
    merge, _ = bipartite_soft_matching_2d(torch.randn(1, 48, 8, generator=g), w=6, h=8, r=40)
    assert merge(torch.randn(1, 48, 8)).shape == (1, 12, 8)  # never more than the sources


def _attn1_tokens(unet, x, ctx) -> dict:
    """Tokens entering every self-attention in one call (hooks registered last, so after ToMe's)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(
        lambda m, a, k, name=name: seen.__setitem__(name, (a[0] if a else k["hidden_states"]).shape[1]),
        with_kwargs=True) for name, m in unet.named_modules() if name.endswith("attn1")]
    try:
        unet(x, torch.tensor([500.0, 500.0]), encoder_hidden_states=ctx)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_only_highest_resolution_self_attention_sees_fewer_tokens(pipe):
    unet = pipe.components.unet
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    with one_thread(), torch.no_grad():
        full = _attn1_tokens(unet, x, ctx)
        with tome(unet, 0.5) as state:
            merged = _attn1_tokens(unet, x, ctx)
    top = max(full.values())
    assert state["merged"] > 0 and min(full.values()) < top  # the fixture has attention at two resolutions
    for name, n in full.items():
        assert merged[name] == (n - n // 2 if n == top else n), name


def test_generate_with_tome_is_opt_in_recorded_and_removed(pipe):
    with one_thread():
        base = pipe.generate("a cat", **SETTINGS)[0]
        merged = pipe.generate("a cat", tome=0.5, **SETTINGS)[0]
        again = pipe.generate("a cat", **SETTINGS)[0]
    a, b, c = (np.asarray(i, dtype=np.float64) for i in (base, merged, again))
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 40  # lossy, the same picture
    assert np.array_equal(a, c)  # hooks gone
    assert "Token merging ratio: 0.5" in merged.info["parameters"] and '"tome": 0.5' in merged.info["stablekit"]
    unet = pipe.components.unet
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unet.modules())
    with pytest.raises(StablekitError, match="tome must be a ratio"):
        pipe.generate("a cat", tome=1.5, **SETTINGS)
