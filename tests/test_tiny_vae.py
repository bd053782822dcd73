"""generate/tiny_vae.py: a TAESD decoder (diffusers' AutoencoderTiny) decodes exactly as diffusers'
own AutoencoderTiny.decode, from a diffusers folder or the original taesd_decoder layout, is opt-in
per call, recorded in the PNG, and refuses what it cannot use with one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components
from safetensors.torch import save_file

from stablekit.errors import StablekitError
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import decode
from stablekit.generate.tiny_vae import load_tiny_vae, preview, tiny_vae_decoding

SETTINGS = dict(steps=3, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised AutoencoderTiny (small blocks: fast), as a diffusers folder and as the
    original TAESD decoder file (index 0 is the parameterless Clamp, so layer N is key N+1)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16))
    root = tmp_path_factory.mktemp("taesd")
    model.save_pretrained(root / "folder")
    original = {f"{int(k.split('.')[2]) + 1}.{'.'.join(k.split('.')[3:])}": v.contiguous()
                for k, v in model.state_dict().items() if k.startswith("decoder.layers.")}
    (root / "orig").mkdir()
    save_file(original, root / "orig" / "taesd_decoder.safetensors")
    return model.eval(), root


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        yield Pipeline(tiny_components("sd1"), progress=False)


def _reference(model, latents):
    """diffusers' own path: StableDiffusionPipeline divides by vae.config.scaling_factor (1.0 for
    AutoencoderTiny), decodes, and its image processor maps [-1, 1] to [0, 1]."""
    with torch.no_grad():
        x = model.decode(latents / model.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("layout", ["folder", "orig", "orig/taesd_decoder.safetensors"])
def test_decode_equals_diffusers_autoencoder_tiny(pipe, tiny, layout):
    model, root = tiny
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with one_thread(), tiny_vae_decoding(pipe.components, root / layout):
        ours = decode(pipe.components, latents)
    assert ours.shape == (2, 64, 64, 3)
    reference = _reference(model, latents)
    assert reference.std() > 0.01  # a decoder whose output depends on its input
    np.testing.assert_allclose(ours, reference, atol=1e-6)  # 1e-7: stablekit divides by the SD scaling factor first
    assert type(pipe.components.vae).__name__ != "TinyDecodingVAE"  # the model's VAE is back
    np.testing.assert_allclose(preview(pipe.components, latents, root / layout), reference, atol=1e-6)


def test_generate_with_tiny_vae_is_opt_in_and_recorded(pipe, tiny):
    _, root = tiny
    with one_thread():
        base = pipe.generate("a cat", **SETTINGS)[0]
        fast = pipe.generate("a cat", tiny_vae=str(root / "folder"), **SETTINGS)[0]
        again = pipe.generate("a cat", **SETTINGS)[0]
    assert not np.array_equal(np.asarray(base), np.asarray(fast))  # another decoder, another image
    assert np.array_equal(np.asarray(base), np.asarray(again))  # the model's VAE is back afterwards
    text = fast.info["parameters"]
    assert "Tiny VAE: folder" in text and "Tiny VAE hash: " in text and "Tiny VAE" not in base.info["parameters"]
    assert '"tiny_vae"' in fast.info["stablekit"]


def test_bad_tiny_vae_paths_are_one_line_errors(pipe, tiny, tmp_path):
    _, root = tiny
    with pytest.raises(StablekitError, match="does not exist"):
        pipe.generate("a cat", tiny_vae=str(tmp_path / "nope.safetensors"), **SETTINGS)
    (tmp_path / "taesd_decoder.pth").write_bytes(b"x")
    with pytest.raises(StablekitError, match="only .safetensors"):
        load_tiny_vae(tmp_path / "taesd_decoder.pth")
    save_file({"0.weight": torch.zeros(16, 3, 3, 3)}, tmp_path / "taesd_encoder.safetensors")
    with pytest.raises(StablekitError, match="TAESD encoder"):
        load_tiny_vae(tmp_path / "taesd_encoder.safetensors")
    from diffusers import AutoencoderTiny

    AutoencoderTiny(decoder_block_out_channels=(8, 8, 8), encoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1)).save_pretrained(tmp_path / "x4")
    with pytest.raises(StablekitError, match="upscales latents 4x but this model's VAE 8x"):
        with tiny_vae_decoding(pipe.components, tmp_path / "x4"):
            pass
    save_file({"decoder.layers.0.weight": torch.zeros(16, 16, 3, 3)}, tmp_path / "wide.safetensors")
    with pytest.raises(StablekitError, match="not a complete TAESD decoder|latent"):
        with tiny_vae_decoding(pipe.components, tmp_path / "wide.safetensors"):
            pass
