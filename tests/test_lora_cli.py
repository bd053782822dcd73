"""`stablekit lora inspect` and `stablekit lora merge`."""
from __future__ import annotations

import json

import torch
from adapter_fixtures import random_peft_lora
from fixtures import tiny_components

from stablekit.adapters import apply_adapters
from stablekit.cli import main
from stablekit.formats import load_model, save_model
from stablekit.formats.lora_kohya import save_kohya_lora
from stablekit.formats.lora_peft import save_peft_lora


def test_inspect(tmp_path, capsys):
    c = tiny_components("sd1")
    u, t = random_peft_lora(c, rank=4, conv=True)
    save_kohya_lora(tmp_path / "k.safetensors", u, t, alpha=2.0, rank=4, arch="sd1", metadata={"ss_output_name": "k"})
    assert main(["lora", "inspect", str(tmp_path / "k.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "format:    kohya (lora 248)" in out and "arch:      sd1" in out and "rank:      4" in out
    assert "alpha:     2" in out and "layers:    text_encoder 12, unet 236" in out and "ss_output_name: k" in out
    save_peft_lora(tmp_path / "p.safetensors", u, t, alpha=8.0, rank=4)
    assert main(["lora", "inspect", "--json", str(tmp_path / "p.safetensors")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "peft" and info["alphas"] == {"8": 248} and info["ranks"] == {"4": 248}
    assert len(info["hash"]) == 12


def test_merge_equals_applied_weights(tmp_path, capsys):
    save_model(tiny_components("sd1"), tmp_path / "base.safetensors")
    c = load_model(tmp_path / "base.safetensors")
    for i in range(2):
        u, t = random_peft_lora(c, rank=2, seed=i, conv=True)
        save_kohya_lora(tmp_path / f"l{i}.safetensors", u, t, alpha=1.0, rank=2, arch="sd1")
    code = main(["lora", "merge", str(tmp_path / "base.safetensors"), str(tmp_path / "l0.safetensors"),
                 f"{tmp_path / 'l1.safetensors'}:-0.5", "--out", str(tmp_path / "merged.safetensors")])
    assert code == 0 and "l0:1, l1:-0.5" in capsys.readouterr().out
    merged = load_model(tmp_path / "merged.safetensors")
    apply_adapters(c, [(tmp_path / "l0.safetensors", 1.0), (tmp_path / "l1.safetensors", -0.5)])
    for name in ("unet", "text_encoder", "vae"):
        ours, theirs = getattr(c, name).state_dict(), getattr(merged, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    base = load_model(tmp_path / "base.safetensors").unet.state_dict()
    key = "down_blocks.0.resnets.0.conv1.weight"  # a LoCon layer: the merge changed it
    assert not torch.allclose(base[key], merged.unet.state_dict()[key], atol=1e-4)


def test_merge_wrong_architecture_is_one_line(tmp_path, capsys):
    save_model(tiny_components("sd1"), tmp_path / "base.safetensors")
    xl = tiny_components("sdxl")
    u, t = random_peft_lora(xl, rank=2)
    save_kohya_lora(tmp_path / "xl.safetensors", u, t, alpha=1.0, rank=2, arch="sdxl")
    code = main(["lora", "merge", str(tmp_path / "base.safetensors"), str(tmp_path / "xl.safetensors"),
                 "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a LoRA for SDXL" in err
    assert not (tmp_path / "m.safetensors").exists()
