"""formats: `inspect` and `convert` accept the same inputs and refuse the rest with the same line.

Both run load_model's own detection and checks (inspect without reading the weights), so for
every input below the exit status and the error line are identical (issue 7 item 6c).
"""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures import tiny_components
from stablekit.cli import main
from stablekit.formats import inspect_model, save_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree")
    sd1 = save_model(tiny_components("sd1"), root / "sd1.safetensors")
    folder = save_model(tiny_components("sd1"), root / "folder")
    return root, sd1, folder


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def make_cases(root, sd1, folder):
    tensors, meta = _tensors(sd1)
    cases = {"good file": (sd1, []), "good folder": (folder, [])}
    cases["missing"] = (root / "nope.safetensors", [])
    (root / "plain").mkdir(exist_ok=True)
    cases["folder without model_index"] = (root / "plain", [])
    torch.save({"state_dict": tensors}, root / "m.ckpt")
    cases["pickle without flag"] = (root / "m.ckpt", [])
    (root / "bad.safetensors").write_bytes(b"garbage!" * 10)
    cases["corrupt"] = (root / "bad.safetensors", [])
    save_file({"lora_unet_down_blocks_0.alpha": torch.tensor(4.0)}, str(root / "lora.safetensors"))
    cases["lora"] = (root / "lora.safetensors", [])
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, str(root / "unet.safetensors"))
    cases["unet only"] = (root / "unet.safetensors", [])
    nine = dict(tensors, **{"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)})
    save_file(nine, str(root / "inpaint.safetensors"))
    cases["9 channels"] = (root / "inpaint.safetensors", [])
    save_file(tensors, str(root / "norecord.safetensors"))  # tiny widths do not fit the real sd1
    cases["tiny without record"] = (root / "norecord.safetensors", [])
    cases["forced arch"] = (sd1, ["--arch", "sd2"])
    short = {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.decoder.up.1.")}
    save_file(short, str(root / "short.safetensors"), metadata=meta)
    cases["missing tensors"] = (root / "short.safetensors", [])
    broken = root / "broken-folder"
    if not broken.exists():
        shutil.copytree(folder, broken)
        unet = broken / "unet" / "diffusion_pytorch_model.safetensors"
        weights, _ = _tensors(unet)
        weights.pop("conv_in.weight")
        save_file(weights, str(unet))
    cases["folder missing a tensor"] = (broken, [])
    novae = root / "folder-no-vae-weights"
    if not novae.exists():
        shutil.copytree(folder, novae)
        (novae / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    cases["folder without vae weights"] = (novae, [])
    damaged = root / "folder-damaged-side-file"
    if not damaged.exists():
        shutil.copytree(folder, damaged)
        save_file({"betas": torch.zeros(3)}, str(damaged / "stablekit_extra.safetensors"),
                  metadata={"stablekit_extra": "{broken"})
    cases["damaged side file"] = (damaged, [])
    return cases


def run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines()[-1:] if captured.err.strip() else []


def test_inspect_and_convert_agree(models, tmp_path, capsys):
    root, sd1, folder = models
    outcomes = {}
    for name, (path, flags) in make_cases(root, sd1, folder).items():
        inspected = run(["inspect", str(path), *flags], capsys)
        converted = run(["convert", str(path), str(tmp_path / f"out-{len(outcomes)}.safetensors"), *flags], capsys)
        assert inspected == converted, (name, inspected, converted)
        outcomes[name] = inspected
    assert outcomes["good file"] == (0, []) and outcomes["good folder"] == (0, [])
    refused = {k: v for k, v in outcomes.items() if not k.startswith("good")}
    assert all(status == 2 and len(err) == 1 and err[0].startswith("stablekit: error: ")
               for status, err in refused.values()), refused


def test_inspect_reports_what_it_refuses(models, capsys):
    root, sd1, folder = models
    tensors, _ = _tensors(sd1)
    save_file(tensors, str(root / "norecord2.safetensors"))
    info = inspect_model(root / "norecord2.safetensors")
    assert info["architecture"] == "sd1" and info["loadable"] is False
    assert "not a sd1 checkpoint" in info["problem"] and info["total_parameters"] > 0
    assert main(["inspect", str(root / "norecord2.safetensors")]) == 2
    out, err = capsys.readouterr()
    assert "loadable:         no" in out and "not a sd1 checkpoint" in err
    assert inspect_model(sd1)["loadable"] is True


def test_convert_checks_the_destination_before_loading(models, tmp_path, capsys, monkeypatch):
    root, sd1, folder = models
    calls = []
    monkeypatch.setattr("stablekit.formats.load_model", lambda *a, **k: calls.append(a))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for dst, flags, words in [(tmp_path / "x.ckpt", [], "a diffusers model is a folder"),
                              (tmp_path / "x.ckpt", ["--to", "single-file"], ".safetensors only"),
                              (tmp_path / "taken", [], "not a diffusers model folder"),
                              (tmp_path / "f.safetensors", ["--to", "diffusers"], "is a folder")]:
        assert main(["convert", str(sd1), str(dst), *flags]) == 2
        assert words in capsys.readouterr().err
    assert not calls
