"""A model's recorded generation defaults (its CFG) are saved, loaded back, read by diffusers-safe
layouts, and used by generate only when the user gives no CFG."""
from __future__ import annotations

import json

import pytest
from fixtures import one_thread, tiny_components
from PIL import Image

import stablekit
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import load_model, save_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    comps = tiny_components("sd1")
    comps.extra["defaults"] = {"cfg": 3.5}
    save_model(comps, root / "m.safetensors", to="single-file")
    save_model(comps, root / "folder", to="diffusers")
    return root


@pytest.mark.parametrize("name", ["m.safetensors", "folder"])
def test_defaults_round_trip_and_generate_uses_them_only_when_not_given(saved, name):
    assert load_model(saved / name).extra["defaults"] == {"cfg": 3.5}
    pipe = stablekit.load(saved / name, progress=False)
    with one_thread():
        default = pipe.generate("a red circle", steps=2, seed=1)[0]
        given = pipe.generate("a red circle", steps=2, seed=1, cfg=7)[0]
    assert json.loads(default.info["stablekit"])["cfg"] == 3.5
    assert "CFG scale: 3.5" in default.info["parameters"]
    assert json.loads(given.info["stablekit"])["cfg"] == 7


def test_a_model_without_defaults_keeps_cfg_7(tmp_path):
    save_model(tiny_components("sd1"), tmp_path / "m.safetensors", to="single-file")
    pipe = stablekit.load(tmp_path / "m.safetensors", progress=False)
    assert pipe.model_defaults == {}
    with one_thread():
        image = pipe.generate("x", steps=1, seed=1)[0]
    assert json.loads(image.info["stablekit"])["cfg"] == 7


def test_cli_uses_the_model_default_unless_cfg_is_given(saved, tmp_path):
    with one_thread():
        assert main(["generate", "a star", "--model", str(saved / "m.safetensors"), "--steps", "2",
                     "--out", str(tmp_path / "a.png"), "--no-progress"]) == 0
        assert main(["generate", "a star", "--model", str(saved / "m.safetensors"), "--steps", "2", "--cfg", "6",
                     "--out", str(tmp_path / "b.png"), "--no-progress"]) == 0
    assert "CFG scale: 3.5" in Image.open(tmp_path / "a.png").info["parameters"]
    assert "CFG scale: 6" in Image.open(tmp_path / "b.png").info["parameters"]


def test_diffusers_loads_a_folder_with_recorded_defaults(saved):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(saved / "folder", safety_checker=None)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"


def test_damaged_defaults_are_a_one_line_error(saved, tmp_path):
    index = json.loads((saved / "folder" / "model_index.json").read_text())
    assert index["_stablekit"]["defaults"] == {"cfg": 3.5}
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved / "folder", bad)
    index["_stablekit"]["defaults"] = {"cfg": "high"}
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(StablekitError, match="recorded default CFG scale 'high'") as err:
        load_model(bad)
    assert "\n" not in str(err.value)


def test_the_embedded_model_records_its_default_cfg():
    assert stablekit.load(progress=False).model_defaults == {"cfg": 7.0}


def test_cfg_rescale_default_is_read_and_bounded():
    """A zero-terminal-SNR model records its CFG rescale (Lin et al.'s phi) next to its CFG."""
    from stablekit.formats.model_defaults import read_defaults

    assert read_defaults({"defaults": {"cfg": 7, "cfg_rescale": 0.7}}, "m") == {"cfg": 7.0, "cfg_rescale": 0.7}
    with pytest.raises(StablekitError, match=r"recorded default CFG rescale 1.5 is not a finite number in \[0, 1\]"):
        read_defaults({"defaults": {"cfg_rescale": 1.5}}, "m")
    assert read_defaults({"defaults": {"cfg": 7, "clip_skip": 2}}, "m") == {"cfg": 7.0}  # unknown keys ignored


def test_a_recorded_cfg_rescale_is_used_unless_the_call_sets_one(tmp_path):
    """A zero-terminal-SNR model's recorded CFG rescale applies to generate and the CLI like its CFG:
    only when the user sets no CFG rescale."""
    comps = tiny_components("sd1")
    comps.extra["defaults"] = {"cfg_rescale": 0.7}
    save_model(comps, tmp_path / "m.safetensors", to="single-file")
    pipe = stablekit.load(tmp_path / "m.safetensors", progress=False)
    kw = dict(steps=2, seed=1, output="np")
    with one_thread():
        default = pipe.generate("a red circle", **kw)[0]
        explicit = pipe.generate("a red circle", guidance={"cfg_rescale": 0.7}, **kw)[0]
        off = pipe.generate("a red circle", guidance={"cfg_rescale": 0.0}, **kw)[0]
        with_freeu = pipe.generate("a red circle", guidance={"freeu": True}, **kw)[0]
        both = pipe.generate("a red circle", guidance={"freeu": True, "cfg_rescale": 0.7}, **kw)[0]
        assert main(["generate", "a star", "--model", str(tmp_path / "m.safetensors"), "--steps", "2",
                     "--out", str(tmp_path / "a.png"), "--no-progress"]) == 0
        assert main(["generate", "a star", "--model", str(tmp_path / "m.safetensors"), "--steps", "2",
                     "--cfg-rescale", "0", "--out", str(tmp_path / "b.png"), "--no-progress"]) == 0
    assert (default == explicit).all() and not (default == off).all()
    assert (with_freeu == both).all()
    assert "CFG Rescale: 0.7" in Image.open(tmp_path / "a.png").info["parameters"]
    assert "CFG Rescale" not in Image.open(tmp_path / "b.png").info["parameters"]
