"""formats: single file -> diffusers folder -> single file keeps every key, value and dtype.

Files in the layout of the released checkpoints (tests/fixtures.py `tiny_ldm_file`): besides the
weights they hold position_ids, the schedule buffers, SD 2's last OpenCLIP block, text_projection
and logit_scale, SDXL's logit_scale and model-spec metadata; the folder keeps them in its side file.
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures import ldm_extras, tiny_components, tiny_configs, tiny_ldm_file
from stablekit.formats import inspect_model, load_model, save_model
from stablekit.formats.side_file import EXTRA_FILE


def tensors_and_metadata(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys(), (sorted(a.keys() - b.keys())[:5], sorted(b.keys() - a.keys())[:5])
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("arch", ["sd1", "sd2-v", "sdxl"])
def test_file_folder_file_is_lossless(arch, tmp_path):
    src = tiny_ldm_file(arch, tmp_path / "src.safetensors")
    original, meta = tensors_and_metadata(src)
    extras = ldm_extras(arch, tiny_configs(arch))
    assert extras.keys() <= original.keys()
    save_model(load_model(src, dtype=None), tmp_path / "folder")
    assert (tmp_path / "folder" / EXTRA_FILE).is_file()
    back = save_model(load_model(tmp_path / "folder", dtype=None), tmp_path / "back.safetensors")
    final, final_meta = tensors_and_metadata(back)
    assert_same_tensors(original, final)
    assert {k: v for k, v in final_meta.items() if k != "stablekit"} == {k: v for k, v in meta.items() if k != "stablekit"}
    # the folder trip gives the very file a direct file -> file save gives
    direct = save_model(load_model(src, dtype=None), tmp_path / "direct.safetensors")
    assert back.read_bytes() == direct.read_bytes()
    # a folder -> folder save keeps the side file too
    save_model(load_model(tmp_path / "folder", dtype=None), tmp_path / "folder2")
    assert_same_tensors(tensors_and_metadata(tmp_path / "folder" / EXTRA_FILE)[0],
                        tensors_and_metadata(tmp_path / "folder2" / EXTRA_FILE)[0])


def test_sd2_side_file_holds_what_comfyui_needs(tmp_path):
    # The keys whose loss made ComfyUI warn `clip missing` on an SD 2 file made from a folder.
    src = tiny_ldm_file("sd2", tmp_path / "sd2.safetensors")
    save_model(load_model(src), tmp_path / "folder")
    kept, _ = tensors_and_metadata(tmp_path / "folder" / EXTRA_FILE)
    last = tiny_configs("sd2")["text_encoder"]["num_hidden_layers"]
    for key in ("cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale",
                f"cond_stage_model.model.transformer.resblocks.{last}.attn.in_proj_weight", "alphas_cumprod"):
        assert key in kept, key


def test_released_layout_without_record_round_trips(tmp_path, monkeypatch):
    # A file from elsewhere: no stablekit record, the arch comes from key detection.
    monkeypatch.setattr("stablekit.formats.single_file.shipped_configs", tiny_configs)
    src = tiny_ldm_file("sd1", tmp_path / "foreign.safetensors", record=False)
    original, meta = tensors_and_metadata(src)
    assert "stablekit" not in meta
    save_model(load_model(src), tmp_path / "folder")
    final, _ = tensors_and_metadata(save_model(load_model(tmp_path / "folder"), tmp_path / "back.safetensors"))
    assert_same_tensors(original, final)


def test_old_style_keys_survive_the_folder(tmp_path):
    tensors, meta = tensors_and_metadata(tiny_ldm_file("sd1", tmp_path / "new.safetensors"))
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in tensors.items()}
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    save_model(load_model(tmp_path / "old.safetensors"), tmp_path / "folder")
    final, _ = tensors_and_metadata(save_model(load_model(tmp_path / "folder"), tmp_path / "back.safetensors"))
    assert_same_tensors(old, final)


def test_a_stale_side_file_is_removed(tmp_path):
    save_model(load_model(tiny_ldm_file("sd2", tmp_path / "sd2.safetensors")), tmp_path / "folder")
    assert (tmp_path / "folder" / EXTRA_FILE).is_file()
    save_model(tiny_components("sd1"), tmp_path / "folder")  # nothing LDM-only to keep
    assert not (tmp_path / "folder" / EXTRA_FILE).exists()
    assert load_model(tmp_path / "folder").extra.get("ldm_extra", {}) == {}


def test_side_file_for_another_layout_is_ignored_with_a_warning(tmp_path):
    save_model(load_model(tiny_ldm_file("sd2", tmp_path / "sd2.safetensors")), tmp_path / "sd2")
    save_model(tiny_components("sd1"), tmp_path / "sd1")
    (tmp_path / "sd2" / EXTRA_FILE).replace(tmp_path / "sd1" / EXTRA_FILE)
    with pytest.warns(UserWarning, match="written for a sd2 model"):
        loaded = load_model(tmp_path / "sd1")
    assert loaded.extra.get("ldm_extra", {}) == {}


def test_diffusers_reads_a_folder_with_a_side_file(tmp_path):
    from diffusers import StableDiffusionPipeline

    comps = load_model(tiny_ldm_file("sd2-v", tmp_path / "v.safetensors"))
    save_model(comps, tmp_path / "folder")
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "folder"), local_files_only=True)
    ours = comps.unet.state_dict()
    theirs = pipe.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_inspect_counts_the_same_parameters_for_file_and_folder(tmp_path):
    src = tiny_ldm_file("sd2", tmp_path / "sd2.safetensors")
    save_model(load_model(src, dtype=None), tmp_path / "folder")
    a, b = inspect_model(src), inspect_model(tmp_path / "folder")
    assert a["parameters"] == b["parameters"] and a["total_parameters"] == b["total_parameters"]
