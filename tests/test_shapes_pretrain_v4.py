"""Recipe v4: off-palette recolouring for the autoencoder, noise schedules, and how a rerun
resolves its options against the run's pretrain.json (old runs keep their recipe)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stablekit.errors import StablekitError
from stablekit.shapes import ShapeSpec, render
from stablekit.shapes.pretrain_config import PretrainConfig, config_from_record, resolve
from stablekit.shapes.render import render_alpha
from stablekit.shapes.vae_recolour import background_and_object, recolour


class FixedDraws:
    """A BatchRandom stand-in whose rand() returns queued tensors (and counts calls)."""

    def __init__(self, *draws):
        self.draws, self.calls = list(draws), 0

    def rand(self, n, *shape):
        self.calls += 1
        return self.draws.pop(0)


def _pixels(*specs):
    return torch.from_numpy(np.stack([render(s) for s in specs])).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_recolour_re_renders_the_same_shape_in_the_drawn_colours():
    specs = [ShapeSpec(shape="star", color="red", background="blue", size="small", diameter=15.0, position="left"),
             ShapeSpec(shape="square", color="white", background="black", diameter=34.0)]
    x = _pixels(*specs)
    bg, obj = background_and_object(x)
    assert torch.allclose(bg[0], torch.tensor([40, 80, 220]) / 127.5 - 1)
    assert torch.allclose(obj[0], torch.tensor([220, 40, 40]) / 127.5 - 1)
    teal, yellow = np.array([0, 160, 160]), np.array([240, 210, 40])
    colours = torch.from_numpy(np.stack([yellow, teal]) / 255.0).float()  # (background, object) in [0, 1]
    rng = FixedDraws(torch.tensor([0.1, 0.9]), torch.stack([colours, colours]))
    y = recolour(x, rng, share=0.5)
    assert torch.equal(y[1], x[1])  # not picked: unchanged
    alpha = render_alpha(specs[0])[..., None]
    want = np.rint(yellow + (teal - yellow) * alpha)  # what the renderer would draw in teal on yellow
    got = ((y[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    assert np.abs(got - want).max() <= 2.0  # 8-bit rounding of the source render and of the result
    assert np.abs(got - want).mean() < 0.3


def test_recolour_share_zero_draws_nothing():
    x = _pixels(ShapeSpec())
    rng = FixedDraws()
    assert recolour(x, rng, share=0.0) is x and rng.calls == 0


def test_new_run_takes_v4_defaults_and_old_record_keeps_its_recipe(tmp_path):
    cfg, changes = resolve({"out": str(tmp_path / "new"), "vae_random_colours": None})
    assert cfg.vae_random_colours == 0.3 and changes == []
    old = tmp_path / "v3"
    old.mkdir()
    record = {k: v for k, v in vars(PretrainConfig(out=str(old), unet_steps=77)).items()
              if k not in ("vae_random_colours", "unet_noise_schedule")}
    (old / "pretrain.json").write_text(json.dumps(record))
    cfg, changes = resolve({"out": str(old)})
    assert cfg.vae_random_colours == 0.0 and cfg.unet_noise_schedule == "sd" and cfg.unet_steps == 77
    (old / "vae").mkdir()  # the autoencoder stage has started: its options are fixed
    with pytest.raises(StablekitError, match="vae stage already ran with --vae-random-colours 0.0"):
        resolve({"out": str(old), "vae_random_colours": 0.3})
    # a stage not yet started takes new options, and more steps are always allowed
    cfg, changes = resolve({"out": str(old), "unet_noise_schedule": "zero-snr", "vae_steps": 4000})
    assert cfg.unet_noise_schedule == "zero-snr" and cfg.vae_steps == 4000
    assert changes == ["unet_noise_schedule: 'sd' -> 'zero-snr'", "vae_steps: 3000 -> 4000"]


def test_record_from_a_newer_version_is_refused():
    with pytest.raises(StablekitError, match="unknown options warp_factor"):
        config_from_record({"warp_factor": 9})


def test_zero_snr_schedule_reaches_pure_noise():
    from stablekit.generate.denoiser import alphas_cumprod_from_config
    from stablekit.shapes.schedules import generation_defaults, scheduler_config

    sd, zero = (alphas_cumprod_from_config(scheduler_config(n)) for n in ("sd", "zero-snr"))
    assert float(sd[-1]) > 0.004 and float(zero[-1]) == 0.0
    assert torch.allclose(sd[0], zero[0], atol=1e-3)
    assert generation_defaults(PretrainConfig(default_cfg=6.0)) == {"cfg": 6.0}
    assert generation_defaults(PretrainConfig(unet_noise_schedule="zero-snr")) == {"cfg": 7.0}
    with pytest.raises(StablekitError, match="unknown noise schedule 'cosine'"):
        scheduler_config("cosine")


def test_zero_snr_model_saves_loads_and_samples_from_pure_noise(tmp_path):
    """A zero-SNR shapes model keeps its schedule and defaults through the single file, and samples."""
    import stablekit
    from stablekit.formats import load_model, save_model
    from stablekit.shapes import architecture as arch
    from stablekit.shapes.pretrain import build_components
    from stablekit.shapes.schedules import generation_defaults

    comps = build_components(arch.build_vae(), arch.build_text_encoder(), arch.build_unet(), 0.4, "zero-snr")
    comps.extra["defaults"] = {**generation_defaults(PretrainConfig(unet_noise_schedule="zero-snr")),
                               "cfg_rescale": 0.7}  # recordable (formats/model_defaults), not recorded by default
    save_model(comps, tmp_path / "m.safetensors", to="single-file")
    back = load_model(tmp_path / "m.safetensors")
    assert back.scheduler_config["rescale_betas_zero_snr"] is True and back.prediction_type == "v_prediction"
    assert back.extra["defaults"] == {"cfg": 7.0, "cfg_rescale": 0.7}
    pipe = stablekit.load(tmp_path / "m.safetensors", progress=False)
    image = pipe.generate("a red circle", steps=2, seed=1, output="np")[0]
    assert np.isfinite(image).all() and image.shape == (64, 64, 3)
