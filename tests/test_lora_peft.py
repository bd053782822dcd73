"""diffusers/PEFT LoRA files: alpha kept, diffusers reads ours and we read diffusers' (LoRA and DoRA)."""
from __future__ import annotations

import json

import pytest
import torch
from adapter_fixtures import IDS, UNET_LAYERS, diffusers_pipe, random_peft_lora, text_out, unet_inputs, unet_out
from fixtures import tiny_components

from stablekit.adapters import apply_adapters
from stablekit.formats.lora_keys import load_lora_file
from stablekit.formats.lora_kohya import adapter_to_kohya, write_kohya_lora
from stablekit.formats.lora_peft import read_peft_lora, save_peft_lora, write_peft_lora
from stablekit.formats.weights import open_weights


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_peft_export_keeps_alpha_and_loads_in_diffusers(tmp_path, arch):
    ours, theirs = tiny_components(arch), tiny_components(arch)
    unet_lora, text_lora = random_peft_lora(ours, rank=4)
    save_peft_lora(tmp_path / "p.safetensors", unet_lora, text_lora, alpha=12.0, rank=4)
    meta = json.loads(open_weights(tmp_path / "p.safetensors").metadata["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 12.0 and meta["unet.r"] == 4 and meta["text_encoder.lora_alpha"] == 12.0
    adapter = load_lora_file(tmp_path / "p.safetensors")
    assert adapter.format == "peft" and {p.scale() for p in adapter.patches.values()} == {3.0}

    inputs = unet_inputs(ours)
    apply_adapters(ours, [(tmp_path / "p.safetensors", 1.0)])
    pipe = diffusers_pipe(theirs)
    pipe.load_lora_weights(str(tmp_path), weight_name="p.safetensors")
    assert theirs.unet.peft_config["default_0"].lora_alpha == 12.0
    assert torch.allclose(unet_out(theirs, inputs), unet_out(ours, inputs), atol=1e-4, rtol=0)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(ours, name) is not None:
            a, b = text_out(getattr(theirs, name), IDS), text_out(getattr(ours, name), IDS)
            assert torch.allclose(a, b, atol=1e-4, rtol=0), name


def test_peft_round_trip_bit_exact_and_via_kohya(tmp_path):
    c = tiny_components("sd1")
    unet_lora, text_lora = random_peft_lora(c, rank=4)
    save_peft_lora(tmp_path / "p.safetensors", unet_lora, text_lora, alpha=3.0, rank=4)
    first = read_peft_lora(tmp_path / "p.safetensors")
    write_peft_lora(tmp_path / "q.safetensors", first)
    a, b = open_weights(tmp_path / "p.safetensors"), open_weights(tmp_path / "q.safetensors")
    assert a.keys() == b.keys() and a.metadata == b.metadata
    assert all(torch.equal(a.get(k), b.get(k)) for k in a.keys())
    # PEFT -> kohya -> PEFT keeps every tensor and alpha
    write_kohya_lora(tmp_path / "k.safetensors", adapter_to_kohya(first, c))
    kohya = load_lora_file(tmp_path / "k.safetensors")
    assert {p.alpha_float for p in kohya.patches.values()} == {3.0}
    from stablekit.formats.lora_keys import resolve

    back = {f"{comp}.{path}": patch for (comp, path), patch in resolve(kohya, c).matched.items()}
    assert set(back) == set(first.patches)
    for name, patch in first.patches.items():
        assert all(torch.equal(patch.tensors[k], back[name].tensors[k]) for k in ("up", "down"))


def _diffusers_written(tmp_path, use_dora: bool):
    """A LoRA trained the TRAIN way (peft on the diffusers UNet) and saved by diffusers itself."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    theirs = tiny_components("sd1")
    config = LoraConfig(r=4, lora_alpha=6, target_modules=list(UNET_LAYERS), init_lora_weights=False, use_dora=use_dora)
    theirs.unet.add_adapter(config)
    with torch.no_grad():  # a trained magnitude differs from the initial ||W||
        for name, p in theirs.unet.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(theirs.unet),
        unet_lora_adapter_metadata=config.to_dict(), weight_name="d.safetensors")
    return theirs


@pytest.mark.parametrize("use_dora", [False, True])
def test_diffusers_written_lora_and_dora_apply_as_peft_computes(tmp_path, use_dora):
    theirs = _diffusers_written(tmp_path, use_dora)
    ours = tiny_components("sd1")
    inputs = unet_inputs(ours)
    base = unet_out(ours, inputs)
    adapter = load_lora_file(tmp_path / "d.safetensors")
    assert adapter.format == "peft"
    assert all((p.dora is not None) == use_dora and p.dora_kind == ("peft" if use_dora else None)
               for p in adapter.patches.values())
    applied = apply_adapters(ours, [(adapter, 1.0)])
    expected = unet_out(theirs, inputs)
    assert not torch.allclose(expected, base, atol=1e-2)
    assert torch.allclose(unet_out(ours, inputs), expected, atol=1e-4, rtol=0)
    # a half-strength adapter matches PEFT's adapter weight 0.5 (DoRA: scaling inside the norm)
    applied.set_scales([0.5])
    theirs.unet.set_adapters(["default"], weights=[0.5])
    assert torch.allclose(unet_out(ours, inputs), unet_out(theirs, inputs), atol=1e-4, rtol=0)
