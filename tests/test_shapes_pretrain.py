"""`stablekit shapes pretrain` end to end at toy size: every stage runs, resumes, and exports a loadable model."""
from __future__ import annotations

import torch
from fixtures import one_thread

from stablekit.cli import main
from stablekit.formats import load_model

TOY = ["--n-images", "200", "--vae-steps", "3", "--vae-batch", "4", "--text-steps", "3", "--text-batch", "16",
       "--unet-steps", "4", "--unet-batch", "4"]


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
