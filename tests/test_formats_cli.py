"""`stablekit inspect` and `stablekit convert` through stablekit.cli.main."""
from __future__ import annotations

import json

import pytest
import torch

from fixtures import tiny_components
from stablekit.cli import main
from stablekit.formats import load_model, save_model


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    return save_model(tiny_components("sdxl"), tmp_path_factory.mktemp("cli") / "tiny-xl.safetensors")


def run_json(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_json(sdxl_file, capsys):
    info = run_json(["inspect", str(sdxl_file), "--json"], capsys)
    assert info["architecture"] == "sdxl"
    assert info["dtype"] == "fp32"
    assert set(info["parameters"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert len(info["hash"]) == 10 and len(info["legacy_hash"]) == 8


def test_inspect_text(sdxl_file, capsys):
    assert main(["inspect", str(sdxl_file)]) == 0
    out = capsys.readouterr().out
    assert "architecture:     sdxl (epsilon)" in out and "model hash:" in out and "text_encoder_2:" in out


def test_convert_both_ways(sdxl_file, tmp_path, capsys):
    folder = tmp_path / "xl"
    assert main(["convert", str(sdxl_file), str(folder), "--dtype", "fp16"]) == 0
    assert "-> " in capsys.readouterr().out
    info = run_json(["inspect", str(folder), "--json"], capsys)
    assert info["format"] == "diffusers" and info["dtype"] == "fp16" and info["architecture"] == "sdxl"

    back = tmp_path / "back.safetensors"
    assert main(["convert", str(folder), str(back), "--to", "single-file"]) == 0
    original = load_model(sdxl_file)
    converted = load_model(back, dtype=None)
    assert converted.unet.dtype == torch.float16
    for a, b in zip(original.unet.state_dict().values(), converted.unet.state_dict().values()):
        assert torch.equal(a.half(), b)


def test_convert_without_dtype_is_bit_exact(sdxl_file, tmp_path):
    half = save_model(tiny_components("sd1"), tmp_path / "half.safetensors", dtype="bf16")
    out = tmp_path / "copy.safetensors"
    assert main(["convert", str(half), str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(half), "pt") as a, safe_open(str(out), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) and a.get_tensor(k).dtype == torch.bfloat16
                   for k in a.keys())


def test_convert_arch_and_prediction_overrides(tmp_path, capsys):
    path = save_model(tiny_components("sd2"), tmp_path / "sd2.safetensors")
    out = tmp_path / "v.safetensors"
    assert main(["convert", str(path), str(out), "--prediction-type", "v_prediction"]) == 0
    assert "(sd2, v_prediction)" in capsys.readouterr().out
    assert load_model(out).prediction_type == "v_prediction"


def test_convert_pickle_needs_flag(tmp_path, capsys):
    comps = tiny_components("sd1")
    src = save_model(comps, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        ckpt_state = {k: f.get_tensor(k) for k in f.keys()}
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": ckpt_state}, ckpt)
    assert main(["convert", str(ckpt), str(tmp_path / "o.safetensors")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    # with the flag it is read; without a stablekit record its tiny widths do not fit real sd1
    assert main(["convert", str(ckpt), str(tmp_path / "o.safetensors"), "--allow-pickle"]) == 2
    assert "wrong shape" in capsys.readouterr().err
