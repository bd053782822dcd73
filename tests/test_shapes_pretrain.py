"""`stablekit shapes pretrain` end to end at toy size: every stage runs, resumes, and exports a loadable model."""
from __future__ import annotations

import json

import pytest
import torch
from fixtures import one_thread

from stablekit.cli import main
from stablekit.formats import load_model

TOY = ["--n-images", "200", "--vae-steps", "3", "--vae-batch", "4", "--text-steps", "3", "--text-batch", "16",
       "--unet-steps", "4", "--unet-batch", "4", "--vae-edge-weight", "8", "--default-cfg", "5.5"]


def test_pretrain_recipe_runs_resumes_and_exports(tmp_path):
    out = tmp_path / "run"
    with one_thread():
        assert main(["shapes", "pretrain", "--out", str(out), "--until", "text", *TOY]) == 0
        assert (out / "vae" / "final.pt").exists() and (out / "text" / "final.pt").exists()
        assert not (out / "unet").exists()
        vae_mtime = (out / "vae" / "final.pt").stat().st_mtime_ns
        # rerunning skips finished stages and carries on to the end
        assert main(["shapes", "pretrain", "--out", str(out), *TOY]) == 0
    assert (out / "vae" / "final.pt").stat().st_mtime_ns == vae_mtime
    assert (out / "unet" / "loss.png").exists() and list((out / "unet" / "samples").glob("*.png"))
    single = load_model(out / "model" / "shapes.safetensors")
    folder = load_model(out / "model" / "diffusers")
    assert single.arch == "shapes" and single.prediction_type == "v_prediction"
    cache = torch.load(out / "cache.pt", weights_only=True)
    assert abs(single.vae.config.scaling_factor - float(cache["scaling_factor"])) < 1e-6
    a, b = single.unet.state_dict(), folder.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((out / "model" / "training.json").read_text())
    assert record["default_cfg"] == 5.5 and record["config"]["vae_edge_weight"] == 8.0
    assert single.extra["defaults"] == folder.extra["defaults"] == {"cfg": 5.5}  # what generate uses
    assert json.loads((out / "vae" / "config.json").read_text())["strategy"] == "vae-edge"


def test_edge_weight_is_on_outlines_only():
    """local_contrast: 0 inside the object and on the background, high on its outline."""
    from stablekit.shapes import ShapeSpec, render
    from stablekit.shapes.vae_loss import local_contrast

    img = render(ShapeSpec(shape="square", color="white", background="black", diameter=30.0))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    c = local_contrast(x)[0, 0]
    assert c[32, 32] == 0 and c[2, 2] == 0  # interior, background
    assert c[32, 21:24].max() > 0.8 and float(c.max()) <= 1.0  # the left edge (half-width about 10.6 px)


@pytest.mark.slow
def test_warm_start_reuses_stages_and_starts_from_init_weights(tmp_path):
    """--init-from: images, autoencoder and latents are the init run's; the text encoder and UNet
    start from its weights (at a negligible learning rate they end where the init run ended)."""
    import numpy as np

    from stablekit.shapes.pretrain import load_unet_from_checkpoint
    from stablekit.shapes.pretrain_init import text_strategy_state

    first, second = tmp_path / "first", tmp_path / "second"
    with one_thread():
        assert main(["shapes", "pretrain", "--out", str(first), "--until", "cache", *TOY]) == 0
        assert main(["shapes", "pretrain", "--out", str(first), "--until", "unet", *TOY]) == 0
        assert main(["shapes", "pretrain", "--out", str(second), "--init-from", str(first), *TOY,
                     "--text-lr", "1e-12", "--unet-lr", "1e-12"]) == 0
    a, b = np.load(first / "data.npz"), np.load(second / "data.npz")
    assert np.array_equal(a["images"], b["images"])
    assert (first / "vae" / "final.pt").read_bytes() == (second / "vae" / "final.pt").read_bytes()
    ca, cb = (torch.load(p / "cache.pt", weights_only=True) for p in (first, second))
    assert torch.equal(ca["latents"], cb["latents"])
    init_te = text_strategy_state(first)["text_encoder"]
    new_te = torch.load(second / "text" / "final.pt", weights_only=True)
    assert all(torch.allclose(init_te[k], new_te[k], atol=1e-6) for k in init_te)
    ua, ub = load_unet_from_checkpoint(first)[0].state_dict(), load_unet_from_checkpoint(second)[0].state_dict()
    assert all(torch.allclose(ua[k], ub[k], atol=1e-5) for k in ua)
    assert json.loads((second / "model" / "training.json").read_text())["config"]["init_from"] == str(first)


def test_warm_start_refuses_another_stream(tmp_path, capsys):
    first = tmp_path / "first"
    for name in ("data.npz", "vae/final.pt", "cache.pt"):
        (first / name).parent.mkdir(parents=True, exist_ok=True)
        (first / name).write_bytes(b"")
    (first / "pretrain.json").write_text(json.dumps({"seed": 0, "n_images": 200}))
    assert main(["shapes", "pretrain", "--out", str(tmp_path / "b"), "--init-from", str(first), *TOY, "--seed", "3"]) != 0
    assert "seed/n_images 0/200 differ from this run's 3/200" in capsys.readouterr().err
    assert main(["shapes", "pretrain", "--out", str(tmp_path / "c"), "--init-from", str(tmp_path), *TOY]) != 0
    assert "not a finished pretrain run" in capsys.readouterr().err


def test_autoencoder_stage_uses_bf16_only_with_native_kernels(monkeypatch):
    """bf16 autocast is emulated without oneDNN bf16 kernels (15x slower measured on an AVX2 CPU)."""
    from stablekit.generate import acceleration
    from stablekit.shapes.pretrain import vae_precision

    monkeypatch.setattr(acceleration, "bf16_supported", lambda: False)
    assert vae_precision() == "no"
    monkeypatch.setattr(acceleration, "bf16_supported", lambda: True)
    assert vae_precision() == "bf16"
