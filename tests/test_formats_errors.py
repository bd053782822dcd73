"""formats: every user mistake is one clear StablekitError line (and exit status 2 in the CLI)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures import tiny_components
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import inspect_model, load_model, save_model


class NotATensor:
    """A custom object: torch.load(weights_only=True) must refuse to rebuild it."""


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    return save_model(tiny_components("sd1"), tmp_path_factory.mktemp("err") / "tiny.safetensors")


def tensors_and_metadata(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def load_error(*args, **kwargs) -> str:
    with pytest.raises(StablekitError) as info:
        load_model(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_nonexistent_path(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nope.safetensors")
    with pytest.raises(StablekitError, match="does not exist"):
        inspect_model(tmp_path / "nope")


def test_folder_without_model_index(tmp_path):
    assert "without model_index.json" in load_error(tmp_path)


def test_pickle_refused_by_default(sd1_file, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors_and_metadata(sd1_file)[0]}, path)
    message = load_error(path)
    assert "pickle" in message and "--allow-pickle" in message and "model.ckpt" in message
    with pytest.raises(StablekitError, match="--allow-pickle"):
        inspect_model(path)


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": NotATensor()}, path)
    message = load_error(path, allow_pickle=True)
    assert message.startswith(f"cannot load pickle {path}")


@pytest.mark.parametrize("content, words", [
    (b"", "empty or truncated"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not JSON"),
    (b"\xff" * 64, "header length"),
])
def test_corrupt_safetensors(tmp_path, content, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    message = load_error(path)
    assert "not a valid safetensors file" in message and words in message


def test_truncated_safetensors(sd1_file, tmp_path):
    data = sd1_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    message = load_error(path)
    assert "truncated or corrupt" in message


def test_unknown_layout(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.tensor(4.0)}, str(path))
    message = load_error(path)
    assert "unknown checkpoint layout" in message and "lora_unet_down_blocks_0.alpha" in message


def test_unet_only_and_refiner_files(tmp_path):
    unet_only = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, str(unet_only))
    assert "UNet-only" in load_error(unet_only)
    refiner = tmp_path / "refiner.safetensors"
    save_file({"conditioner.embedders.0.model.text_projection": torch.zeros(4, 4)}, str(refiner))
    assert "refiner" in load_error(refiner)


@pytest.mark.parametrize("channels, kind", [(8, "instruct-pix2pix"), (5, "depth"), (7, "not a model kind")])
def test_unet_input_channels_other_than_4_or_9_refused(sd1_file, tmp_path, channels, kind):
    tensors, _ = tensors_and_metadata(sd1_file)
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, channels, 3, 3)
    path = tmp_path / "pix2pix.safetensors"
    save_file(tensors, str(path))  # no stablekit record: detection runs
    message = load_error(path)
    assert f"{channels} input channels" in message and kind in message and "inpainting (9" in message


def test_missing_keys_are_counted_and_named(sd1_file, tmp_path):
    tensors, metadata = tensors_and_metadata(sd1_file)
    gone = sorted(k for k in tensors if k.startswith("first_stage_model.decoder.up.1."))
    for key in gone:
        del tensors[key]
    path = tmp_path / "missing.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    message = load_error(path)
    assert f"{len(gone)} of " in message and "expected tensors are missing" in message
    assert gone[0] in message


def test_misshaped_key_is_named_with_both_shapes(sd1_file, tmp_path):
    tensors, metadata = tensors_and_metadata(sd1_file)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    tensors[key] = torch.zeros(32, 32, 1, 1)
    path = tmp_path / "misshaped.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    message = load_error(path)
    assert "1 tensors have the wrong shape" in message
    assert f"{key} is [32, 32, 1, 1], expected [32, 32, 3, 3]" in message


def test_tiny_file_without_record_does_not_fit_the_reference_arch(sd1_file, tmp_path):
    tensors, _ = tensors_and_metadata(sd1_file)
    path = tmp_path / "foreign.safetensors"
    save_file(tensors, str(path))
    message = load_error(path)
    assert message.startswith(f"{path}: not a sd1 checkpoint:")
    assert "wrong shape" in message and "--arch" in message


def test_damaged_stablekit_record(sd1_file, tmp_path):
    tensors, metadata = tensors_and_metadata(sd1_file)
    metadata["stablekit"] = "{broken"
    path = tmp_path / "record.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    assert "metadata is damaged" in load_error(path)


def test_bad_arguments(sd1_file, tmp_path):
    assert "unknown architecture 'sd3'" in load_error(sd1_file, arch="sd3")
    assert "unknown prediction type" in load_error(sd1_file, prediction_type="x0")
    assert "unknown dtype" in load_error(sd1_file, dtype="int8")
    comps = tiny_components("sd1")
    with pytest.raises(StablekitError, match="unknown save format"):
        save_model(comps, tmp_path / "x", to="ckpt")
    with pytest.raises(StablekitError, match=r"\.safetensors only"):
        save_model(comps, tmp_path / "x.ckpt", to="single-file")
    with pytest.raises(StablekitError, match="is a folder"):
        save_model(comps, tmp_path / "x.safetensors", to="diffusers")


def test_cli_errors_are_one_line(sd1_file, tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    torch.save({"x": torch.zeros(1)}, ckpt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"garbage!" * 10)
    cases = [
        ["inspect", str(tmp_path / "missing.safetensors")],
        ["convert", str(ckpt), str(tmp_path / "out")],
        ["convert", str(garbage), str(tmp_path / "out")],
        ["convert", str(sd1_file), str(tmp_path / "out.ckpt")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("stablekit: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert json.loads(json.dumps({"ok": True}))
