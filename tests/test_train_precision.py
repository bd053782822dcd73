"""Training precision: auto's choice, and the frozen UNet layers kept in bf16 under mixed precision."""
from __future__ import annotations

import torch
from safetensors.torch import load_file
from train_fixtures import TinyImages, tiny

import stablekit.train
from stablekit.train import precision
from stablekit.train.strategies.lora import LoraStrategy

FAST = dict(steps=2, batch_size=2, sample_every=0, progress=False, tensorboard=False)


def test_cast_frozen_casts_only_layers_without_trainable_weights():
    comps = tiny()
    LoraStrategy(comps, rank=4, alpha=4.0)
    unet = comps.unet
    cast = precision.cast_frozen(unet)
    assert cast > 0
    dtypes = {n: p.dtype for n, p in unet.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)  # what trains stays fp32
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert precision.cast_frozen(unet) == 0  # a second call finds nothing left to cast


def test_cast_layers_return_the_callers_dtype_outside_autocast():
    comps = tiny()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = comps.unet(x, t, ctx).sample
        comps.unet.requires_grad_(False)
        assert precision.cast_frozen(comps.unet) == sum(p.numel() for p in comps.unet.parameters())  # all of it
        got = comps.unet(x, t, ctx).sample
    assert got.dtype == torch.float32
    assert not torch.equal(got, ref)  # computed in bf16 ...
    assert torch.allclose(got, ref, atol=0.1, rtol=0.1)  # ... the same model up to bf16 rounding


def test_a_fully_trained_unet_has_nothing_to_cast():
    comps = tiny()
    comps.unet.requires_grad_(True)
    assert precision.cast_frozen(comps.unet) == 0


def test_auto_follows_the_probe(monkeypatch):
    from stablekit.generate import acceleration

    cfg = {"down_block_types": ["CrossAttnDownBlock2D"], "block_out_channels": [320]}
    monkeypatch.setattr(acceleration, "choose", lambda *a, **k: acceleration.Acceleration(torch.bfloat16, reason="auto: x"))
    assert precision.resolve("auto", "cpu", cfg)[0] == "bf16"
    monkeypatch.setattr(acceleration, "choose", lambda *a, **k: acceleration.Acceleration(torch.float32, reason="auto: y"))
    assert precision.resolve("auto", "cpu", cfg) == ("no", "auto: y")
    assert precision.resolve("auto", "cpu", None)[0] == "no"  # nothing to probe (autoencoder, text stages)
    assert precision.resolve("bf16", "cpu", None) == ("bf16", "requested")


def test_auto_is_fp32_when_stablekit_dtype_says_so(monkeypatch):
    monkeypatch.setenv("STABLEKIT_DTYPE", "fp32")
    assert precision.resolve("auto", "cpu", dict(tiny().unet.config))[0] == "no"


def test_lora_trains_in_bf16_with_fp32_adapters_and_export(tmp_path):
    comps = tiny()
    result = stablekit.train("lora", components=comps, dataset=TinyImages(), out=tmp_path, name="b", rank=4,
                             lr=1e-2, mixed_precision="bf16", **FAST)
    assert result["mixed_precision"] == "bf16 (requested)"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result["history"])
    base = [p for n, p in comps.unet.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    saved = load_file(result["artefact"])
    assert saved and all(v.dtype == torch.float32 for k, v in saved.items() if "lora_" in k)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_up" in k)  # B trained from zero


def test_finetune_under_bf16_keeps_every_unet_weight_fp32(tmp_path):
    comps = tiny()
    stablekit.train("finetune", components=comps, dataset=TinyImages(), out=tmp_path, name="f", lr=1e-3,
                    mixed_precision="bf16", **FAST)
    assert all(p.dtype == torch.float32 for p in comps.unet.parameters())
