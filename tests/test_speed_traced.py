"""generate/traced.py: traced UNet calls are bit-exact, see in-place weight patches, step aside for
calls and module changes they do not cover, and are reused from the cache folder between runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components

from stablekit.generate import traced
from stablekit.generate.pipeline import Pipeline

SETTINGS = dict(steps=3, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64, output="np")


@pytest.fixture(scope="module")
def setup():
    with one_thread():
        c = tiny_components("sd1")
        pipe = Pipeline(c, progress=False)
        reference = pipe.generate("a cat", **SETTINGS)[0]
        yield c, pipe, reference


def test_traced_generation_is_bit_exact_and_sees_patched_weights(setup, tmp_path):
    c, pipe, reference = setup
    fwd = traced.install(c.unet, tmp_path)
    try:
        with one_thread():
            assert np.array_equal(pipe.generate("a cat", **SETTINGS)[0], reference)
            assert [v is not None for v in fwd.traces.values()] == [True]  # one shape, traced once
            assert len(list(tmp_path.glob("unet-*.pt"))) == 1
            with torch.no_grad():
                c.unet.conv_in.weight.mul_(1.5)  # as adapters/apply.py patches LoRA weights in place
            patched = pipe.generate("a cat", **SETTINGS)[0]
            traced.uninstall(c.unet)
            assert np.array_equal(pipe.generate("a cat", **SETTINGS)[0], patched)
            assert not np.array_equal(patched, reference)
    finally:
        traced.uninstall(c.unet)
        with torch.no_grad():
            c.unet.conv_in.weight.div_(1.5)


def test_saved_trace_is_reused_with_the_live_weights(setup, tmp_path):
    c, pipe, reference = setup
    with one_thread():
        traced.install(c.unet, tmp_path)
        pipe.generate("a cat", **SETTINGS)
        traced.uninstall(c.unet)
        other = tiny_components("sd1", seed=3)  # same architecture, other weights
        fwd = traced.install(other.unet, tmp_path)
        fwd._trace = lambda *a: pytest.fail("traced again although a saved trace exists")
        ours = Pipeline(other, progress=False).generate("a cat", **SETTINGS)[0]
        traced.uninstall(other.unet)
        assert np.array_equal(ours, Pipeline(other, progress=False).generate("a cat", **SETTINGS)[0])


def test_uncovered_calls_and_changed_modules_run_eagerly(setup):
    c, _, _ = setup
    fwd = traced.install(c.unet)
    try:
        x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32)
        with torch.no_grad():
            c.unet(x, t[0], encoder_hidden_states=ctx)  # a scalar timestep (diffusers' pipelines)
            c.unet(x, t, encoder_hidden_states=ctx, cross_attention_kwargs={"scale": 1.0})
        assert fwd.traces == {}
        with torch.enable_grad():
            out = c.unet(x, t, encoder_hidden_states=ctx).sample
        assert out.requires_grad and fwd.traces == {}  # training keeps autograd
        with torch.no_grad():
            base = c.unet(x, t, encoder_hidden_states=ctx).sample
            assert len(fwd.traces) == 1
            seen = []
            hook = c.unet.down_blocks[0].register_forward_hook(lambda *a: seen.append(1))
            assert torch.equal(c.unet(x, t, encoder_hidden_states=ctx).sample, base)
            hook.remove()
        assert seen == [1]  # the trace stepped aside: the hook ran
        import copy

        original = c.unet.conv_in
        c.unet.conv_in = copy.deepcopy(original)
        with torch.no_grad():
            c.unet.conv_in.weight.mul_(2)  # a swapped child (peft-style wrapping) is not in the trace
            swapped = c.unet(x, t, encoder_hidden_states=ctx).sample
        c.unet.conv_in = original
        assert not torch.equal(swapped, base)
    finally:
        traced.uninstall(c.unet)


def test_freeu_values_key_their_own_trace(setup, tmp_path):
    """diffusers-math FreeU sets plain numbers on the up blocks; a trace recorded without them must not
    run with them (it once did: FreeU was silently a no-op on the traced default path)."""
    c, _, _ = setup
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32)
    try:
        with torch.no_grad():
            c.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
            eager_freeu = c.unet(x, t, encoder_hidden_states=ctx).sample
            c.unet.disable_freeu()
            eager_plain = c.unet(x, t, encoder_hidden_states=ctx).sample
            assert not torch.equal(eager_freeu, eager_plain)
            fwd = traced.install(c.unet, tmp_path)
            assert torch.equal(c.unet(x, t, encoder_hidden_states=ctx).sample, eager_plain)
            c.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
            assert torch.equal(c.unet(x, t, encoder_hidden_states=ctx).sample, eager_freeu)
            assert sum(v is not None for v in fwd.traces.values()) == 2  # FreeU runs traced too
            c.unet.disable_freeu()
            assert torch.equal(c.unet(x, t, encoder_hidden_states=ctx).sample, eager_plain)
            assert len(list(tmp_path.glob("unet-*.pt"))) == 2
    finally:
        c.unet.disable_freeu()
        traced.uninstall(c.unet)
