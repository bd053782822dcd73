"""9-channel inpainting models as LDM single files (formats/detect.py unet_in_channels): SD 1, SD 2 and
SDXL files whose input_blocks.0.0 takes 9 channels load as inpainting UNets; the full-size files in
the real layouts are under the slow marker (pytest -m slow tests/test_inpaint_single_file.py)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_control_inpaint_model import inpainting_components

from stablekit.errors import StablekitError
from stablekit.formats import load_model, save_model
from stablekit.formats.detect import FIRST_CONV, detect_arch, unet_in_channels
from stablekit.formats.single_file import resolve
from stablekit.formats.weights import open_weights
from stablekit.generate.inpaint_unet import is_inpainting_unet

# one key that marks each family (formats/detect.py), the rest of a file is not needed to detect it
FAMILY_KEYS = {"sd1": "cond_stage_model.transformer.text_model.final_layer_norm.bias",
               "sd2": "cond_stage_model.model.ln_final.bias",
               "sdxl": "conditioner.embedders.1.model.ln_final.bias"}


def marker_file(tmp_path, family: str, channels: int):
    path = tmp_path / f"{family}-{channels}.safetensors"
    save_file({FAMILY_KEYS[family]: torch.zeros(4), FIRST_CONV: torch.zeros(320, channels, 3, 3)}, str(path))
    return open_weights(path)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_nine_channels_detected_and_configured_as_inpainting(tmp_path, family):
    weights = marker_file(tmp_path, family, 9)
    assert unet_in_channels(weights) == 9
    arch, layout, configs = resolve(weights, None, None)
    assert arch.startswith(family) and configs["unet"]["in_channels"] == 9
    assert resolve(marker_file(tmp_path, family, 4), None, None)[2]["unet"]["in_channels"] == 4
    assert resolve(weights, arch, None)[2]["unet"]["in_channels"] == 9  # arch given: the file still decides


@pytest.mark.parametrize("channels", [8, 5])
def test_eight_or_five_channels_refused_in_one_line(tmp_path, channels):
    with pytest.raises(StablekitError) as info:
        detect_arch(marker_file(tmp_path, "sd1", channels))
    message = str(info.value)
    assert "\n" not in message and f"takes {channels} input channels" in message


def test_tiny_inpainting_model_round_trips_as_single_file(tmp_path):
    c = inpainting_components()
    path = save_model(c, tmp_path / "inpaint.safetensors")
    loaded = load_model(path)
    assert is_inpainting_unet(loaded.unet)
    a, b = c.unet.state_dict(), loaded.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("arch, dtype", [("sd1", torch.float32), ("sd2", torch.float32), ("sdxl", torch.bfloat16)])
def test_full_size_nine_channel_ldm_file_loads_as_inpainting_unet(tmp_path, arch, dtype):
    """Random weights in the real layout, written without stablekit's record (as a downloaded
    sd-v1-5-inpainting.ckpt converted to safetensors), loaded through key detection."""
    from test_formats_slow import random_full_size, write_foreign_ldm

    original = random_full_size(arch, dtype)
    unet = original.unet
    old = unet.conv_in
    conv = torch.nn.Conv2d(9, old.out_channels, old.kernel_size, padding=old.padding).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.02)
        conv.bias.copy_(old.bias)
    unet.conv_in = conv
    unet.register_to_config(in_channels=9)
    path = tmp_path / f"{arch}-inpainting.safetensors"
    write_foreign_ldm(original, path)
    weights = open_weights(path)
    assert tuple(weights.shape(FIRST_CONV))[1] == 9
    loaded = load_model(path, dtype=dtype)
    assert loaded.arch == arch and is_inpainting_unet(loaded.unet)
    sa, sb = unet.state_dict(), loaded.unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    del original
