"""FreeU_V2 (ComfyUI's node math) beside diffusers-style FreeU: the math, where it acts, metadata."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.unets import unet_2d_blocks
from diffusers.utils.torch_utils import fourier_filter as diffusers_fourier_filter
from fixtures import tiny_components

from stablekit.errors import StablekitError
from stablekit.generate.guidance import (GuidanceOptions, fourier_filter, freeu_v2_features, freeu_v2_hooks,
                                         up_resnet_inputs)
from stablekit.generate.pipeline import Pipeline

PROMPT = "a photo of a cat on a sofa"
SETTINGS = dict(negative_prompt="blurry", steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64,
                height=64, output="np")


def test_v2_features_are_comfyui_formula():
    gen = torch.Generator().manual_seed(0)
    h, skip = torch.randn(2, 4, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    new_h, new_skip = freeu_v2_features(h, skip, 1.5, 0.5)
    hn = h.numpy()
    for b in range(2):
        mean = hn[b].mean(0)
        m = (mean - mean.min()) / (mean.max() - mean.min())
        expected = hn[b].copy()
        expected[:2] *= 0.5 * m + 1  # (b - 1) * m + 1 on the first half of the channels
        assert np.allclose(new_h[b].numpy(), expected, atol=1e-6)
    assert new_h[:, :2].sub(h[:, :2]).abs().max() > 0.1 and torch.equal(new_h[:, 2:], h[:, 2:])
    assert torch.allclose(new_skip, diffusers_fourier_filter(skip, 1, 0.5), atol=1e-6)  # the FreeU filter
    assert torch.allclose(fourier_filter(skip, 1, 1.0), skip, atol=1e-6)
    # the strongest place gets b, the weakest 1
    ratio = (new_h[0, 0] / h[0, 0]).flatten()
    assert torch.isclose(ratio.max(), torch.tensor(1.5)) and torch.isclose(ratio.min(), torch.tensor(1.0))
    flat, _ = freeu_v2_features(h[:, :, :1, :1], skip[:, :, :1, :1], 1.5, 0.5)  # 1x1 map: ComfyUI's 0/0
    assert torch.equal(flat, h[:, :, :1, :1])


def test_split_is_the_backbone_features_diffusers_concatenates(monkeypatch):
    unet = tiny_components("sd1").unet
    seen = []
    real = unet_2d_blocks.apply_freeu

    def spy(index, hidden, skip, **kwargs):
        seen.append(hidden.shape[1])
        return real(index, hidden, skip, **kwargs)

    monkeypatch.setattr(unet_2d_blocks, "apply_freeu", spy)
    unet.enable_freeu(s1=1.0, s2=1.0, b1=1.0, b2=1.0)
    try:
        with torch.no_grad():
            unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, 32))
    finally:
        unet.disable_freeu()
    assert seen == [channels for _, channels in up_resnet_inputs(unet)]
    first = unet.config.block_out_channels[0]
    hooks = freeu_v2_hooks(unet, 1.1, 1.2, 0.9, 0.2)
    assert len(hooks) == sum(c in (2 * first, 4 * first) for c in seen) > 0
    for hook in hooks:
        hook.remove()


def test_v2_changes_the_image_unlike_v1_and_is_removed_after():
    c = tiny_components("sd1")
    pipe = Pipeline(c, progress=False)
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    identity = pipe.generate(PROMPT, guidance=GuidanceOptions(freeu=(1, 1, 1, 1), freeu_v2=True), **SETTINGS)[0]
    values = (1.3, 1.4, 0.8, 0.3)
    v2 = pipe.generate(PROMPT, guidance=GuidanceOptions(freeu=values, freeu_v2=True), **SETTINGS)[0]
    v1 = pipe.generate(PROMPT, guidance=GuidanceOptions(freeu=values), **SETTINGS)[0]
    assert all(not r._forward_pre_hooks for r, _ in up_resnet_inputs(c.unet))  # nothing left on the UNet
    assert np.abs(identity - plain).max() <= 1e-5
    assert np.abs(v2 - plain).max() > 1e-2 and np.abs(v2 - v1).max() > 1e-3
    assert np.array_equal(pipe.generate(PROMPT, **SETTINGS)[0], plain)


def test_v2_is_recorded_and_read_back():
    options = GuidanceOptions(freeu=(1.3, 1.4, 0.9, 0.2), freeu_v2=True).validate()
    fields = options.fields()
    assert fields["freeu_version"] == 2 and fields["freeu_b1"] == 1.3
    assert GuidanceOptions.from_fields({k: str(v) for k, v in fields.items()}) == options
    assert GuidanceOptions.from_record(options.record()) == options
    v1 = GuidanceOptions(freeu=(1.3, 1.4, 0.9, 0.2)).validate()
    assert "freeu_version" not in v1.fields() and GuidanceOptions.from_fields(v1.fields()).freeu_v2 is False
    with pytest.raises(StablekitError, match="FreeU_V2 needs FreeU"):
        GuidanceOptions(freeu_v2=True).validate()
