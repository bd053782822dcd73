"""formats: round trips, detection, dtypes, hashes, inspect, on tiny seeded models."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fixtures import tiny_components, tiny_configs
from stablekit.errors import StablekitError
from stablekit.formats import clip_tokenizer, inspect_model, load_model, save_model
from stablekit.formats.archs import ARCHS, shipped_configs
from stablekit.formats.detect import detect_arch
from stablekit.formats.weights import open_weights

MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")


def assert_same_weights(a, b, dtype=None):
    for name in MODULES:
        ma, mb = getattr(a, name), getattr(b, name)
        assert (ma is None) == (mb is None), name
        if ma is None:
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            want = sa[key] if dtype is None or not sa[key].is_floating_point() else sa[key].to(dtype)
            assert sb[key].dtype == want.dtype, (name, key)
            assert torch.equal(sb[key], want), (name, key)


def file_tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def strip_metadata(src, dst, extra=None):
    tensors = load_file(str(src))
    tensors.update(extra or {})
    save_file(tensors, str(dst))
    return dst


@pytest.fixture(scope="module")
def tiny():
    return {arch: tiny_components(arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def single_files(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    return {arch: save_model(c, root / f"tiny-{arch}.safetensors") for arch, c in tiny.items()}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ARCHS)
def test_single_file_round_trip_is_bit_exact(arch, tiny, single_files, tmp_path):
    loaded = load_model(single_files[arch])
    assert loaded.arch == arch
    assert loaded.scheduler_config["prediction_type"] == ("v_prediction" if arch == "sd2-v" else "epsilon")
    assert_same_weights(tiny[arch], loaded)
    # file -> load -> save -> same key set, tensor for tensor
    again = save_model(loaded, tmp_path / "again.safetensors")
    first, second = file_tensors(single_files[arch]), file_tensors(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) and first[k].dtype == second[k].dtype for k in first)


@pytest.mark.parametrize("arch", ARCHS)
def test_diffusers_folder_round_trip_is_bit_exact(arch, tiny, single_files, tmp_path):
    save_model(tiny[arch], tmp_path / "model")
    from_folder = load_model(tmp_path / "model")
    assert from_folder.arch == arch
    assert from_folder.name == "model"
    assert_same_weights(tiny[arch], from_folder)
    assert from_folder.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert from_folder.tokenizer.pad_token == tiny[arch].tokenizer.pad_token
    if arch == "sdxl":
        assert from_folder.tokenizer_2.pad_token == "!"
    # folder -> single file -> folder, all exact
    save_model(from_folder, tmp_path / "one.safetensors")
    from_file = load_model(tmp_path / "one.safetensors")
    assert_same_weights(tiny[arch], from_file)
    save_model(from_file, tmp_path / "model2", to="diffusers")
    assert_same_weights(tiny[arch], load_model(tmp_path / "model2"))


def test_any_width_and_arch_name_round_trips_through_the_record(tmp_path):
    # Like the embedded shapes model: SD 1 block types at other widths, a 3-level VAE, its own
    # scheduler and tokenizer ids; only the stablekit record can describe it.
    from stablekit.components import Components
    from stablekit.formats.archs import build_modules

    configs = tiny_configs("sd1")
    configs["vae"].update(block_out_channels=[16, 32, 32], norm_num_groups=16, scaling_factor=0.7,
                          down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
    configs["unet"].update(block_out_channels=[16, 32, 32, 48], norm_num_groups=16, layers_per_block=1)
    configs["text_encoder"].update(eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
    configs["scheduler"] = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000,
                            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}
    torch.manual_seed(0)
    modules = build_modules(configs)
    comps = Components(arch="mini", unet=modules["unet"], vae=modules["vae"], text_encoder=modules["text_encoder"],
                       tokenizer=clip_tokenizer(), scheduler_config=configs["scheduler"])
    for target in (tmp_path / "mini.safetensors", tmp_path / "mini"):
        loaded = load_model(save_model(comps, target, dtype="fp16"), dtype=None)
        assert loaded.arch == "mini" and loaded.prediction_type == "v_prediction"
        assert loaded.scheduler_config == comps.scheduler_config
        assert loaded.vae.config.scaling_factor == 0.7 and loaded.vae_scale_factor == 4
        assert loaded.text_encoder.config.eos_token_id == 49407
        assert_same_weights(comps, loaded, dtype=torch.float16)


def test_ldm_keys_follow_the_original_layout(single_files):
    keys = {arch: set(open_weights(path).keys()) for arch, path in single_files.items()}
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys["sd1"]
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in keys["sd1"]
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys["sd1"]
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys["sd1"]
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys["sd2"]
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys["sdxl"]
    assert "conditioner.embedders.1.model.text_projection" in keys["sdxl"]
    assert "model.diffusion_model.label_emb.0.0.weight" in keys["sdxl"]
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys["sdxl"]
    wf = open_weights(single_files["sd1"])
    assert wf.shape("first_stage_model.encoder.mid.attn_1.q.weight") == (64, 64, 1, 1)  # LDM: 1x1 conv


def test_full_size_ldm_names_and_shapes():
    # The export names for the real architectures, against keys and shapes of the released files.
    from stablekit.formats.assemble import empty_modules
    from stablekit.formats.ldm import expected_ldm, layout_for

    want = {
        "sd1": {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
                "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
                "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
                "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072)},
        "sd2": {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
                "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
                "cond_stage_model.model.positional_embedding": (77, 1024)},
        "sdxl": {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
                 "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
                 "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
                 "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
                 "conditioner.embedders.1.model.text_projection": (1280, 1280)},
    }
    counts = {"sd1": 1130, "sd2": 1214, "sdxl": 2513}  # SD 1.5 ships 1131 (+position_ids)
    for arch, keys in want.items():
        configs = shipped_configs(arch)
        _, expected = empty_modules(configs)
        names = expected_ldm(expected, layout_for(arch, configs), configs)
        assert len(names) == counts[arch]
        for key, shape in keys.items():
            assert names[key] == shape, key


def test_unmapped_tensors_are_kept(tiny, single_files, tmp_path):
    extra = {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "alphas_cumprod": torch.linspace(1, 0, 1000),
        "model_ema.decay": torch.tensor(0.9999),
    }
    src = tmp_path / "with-extra.safetensors"
    tensors = file_tensors(single_files["sd1"])
    tensors.update(extra)
    with safe_open(str(single_files["sd1"]), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(src), metadata=metadata)
    loaded = load_model(src)
    assert set(loaded.extra["ldm_extra"]) == set(extra)
    out = file_tensors(save_model(loaded, tmp_path / "out.safetensors"))
    assert out.keys() == tensors.keys()
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)


def test_old_style_clip_keys_load_and_are_written_back(tiny, single_files, tmp_path):
    # Early SD 1.x files: cond_stage_model.transformer.encoder... without `text_model.`
    tensors = file_tensors(single_files["sd1"])
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in tensors.items()}
    with safe_open(str(single_files["sd1"]), "pt") as f:
        metadata = f.metadata()
    src = tmp_path / "old.safetensors"
    save_file(old, str(src), metadata=metadata)
    loaded = load_model(src)
    assert_same_weights(tiny["sd1"], loaded)
    out = file_tensors(save_model(loaded, tmp_path / "out.safetensors"))
    assert out.keys() == old.keys()
    assert all(torch.equal(out[k], old[k]) for k in old)


def test_saving_over_a_folder(tiny, tmp_path):
    save_model(tiny["sdxl"], tmp_path / "model")
    save_model(tiny["sd1"], tmp_path / "model")  # the stale text_encoder_2/ must not make it SDXL
    again = load_model(tmp_path / "model")
    assert again.arch == "sd1" and again.text_encoder_2 is None
    assert_same_weights(tiny["sd1"], again)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StablekitError, match="not a diffusers model folder"):
        save_model(tiny["sd1"], tmp_path / "other")


def test_saving_does_not_change_the_components(tiny, tmp_path):
    comps = tiny["sd1"]
    save_model(comps, tmp_path / "half.safetensors", dtype="fp16")
    save_model(comps, tmp_path / "half", dtype=torch.float16)
    assert comps.unet.dtype == torch.float32 and comps.text_encoder.dtype == torch.float32
    assert inspect_model(tmp_path / "half.safetensors")["dtype"] == "fp16"
    assert inspect_model(tmp_path / "half")["dtype"] == "fp16"


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_loads_straight_into_dtype(dtype, tiny, single_files):
    loaded = load_model(single_files["sdxl"], dtype=dtype)
    for name in MODULES:
        assert all(p.dtype == dtype for p in getattr(loaded, name).parameters()), name
    assert_same_weights(tiny["sdxl"], loaded, dtype=dtype)
    assert loaded.text_encoder.embeddings.position_ids.dtype == torch.int64  # buffers stay as built


def test_dtype_none_keeps_the_file_dtypes(tiny, tmp_path):
    path = save_model(tiny["sd2"], tmp_path / "bf16.safetensors", dtype="bf16")
    loaded = load_model(path, dtype=None)
    assert loaded.unet.dtype == torch.bfloat16
    assert_same_weights(tiny["sd2"], loaded, dtype=torch.bfloat16)


# Equal weights (checked bit for bit above) need not give bit-equal outputs: the loaded tensors
# are memory-mapped from the file, the originals are fresh allocations, and oneDNN/MKL choose
# kernels (vector widths, blocking, summation order) by memory alignment, so fp32 sums differ in
# the last bits: 1.1e-6 measured on some machines of this type, identical after a .clone().
# A few float32 ulps through ~30 layers is far below 1e-5; a wrong key mapping (two tensors
# swapped, a transposed projection) moves them far more: swapping one q/k pair gave 0.11 (outputs ~1).
OUTPUT_ATOL = 1e-5


def _unet_outputs(comps_list, tokens="a cat"):
    ids = comps_list[0].tokenizer([tokens], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [c.unet(x, 10, encoder_hidden_states=c.text_encoder(ids).last_hidden_state).sample for c in comps_list]


def test_loaded_model_runs(single_files):
    original = tiny_components("sd1")
    comps = load_model(single_files["sd1"])
    outs = _unet_outputs([original, comps])
    assert outs[0].shape == (1, 4, 8, 8)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=OUTPUT_ATOL)
    # Control: the tolerance still catches a real mapping bug (attn1's q and k weights swapped).
    broken = load_model(single_files["sd1"])
    attn = broken.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    with torch.no_grad():
        q = attn.to_q.weight.clone()
        attn.to_q.weight.copy_(attn.to_k.weight)
        attn.to_k.weight.copy_(q)
    wrong = _unet_outputs([original, broken])[1]
    assert (wrong - outs[0]).abs().max() > 100 * OUTPUT_ATOL


# ----------------------------------------------------------------------------- detection
@pytest.mark.parametrize("arch", ARCHS)
def test_detection_from_keys_without_metadata(arch, single_files, tmp_path, monkeypatch):
    plain = strip_metadata(single_files[arch], tmp_path / "plain.safetensors")
    if arch == "sd2-v":  # emulate a trained v-model for ComfyUI's norm-bias statistic
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        tensors = load_file(str(plain))
        tensors[key] = torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(0))
        save_file(tensors, str(plain))
    weights = open_weights(plain)
    assert weights.metadata == {}
    assert detect_arch(weights) == (arch, None)
    # Loading without metadata uses the shipped configs of the detected arch; give it the
    # tiny widths so the tiny file fits.
    monkeypatch.setattr("stablekit.formats.single_file.shipped_configs", tiny_configs)
    loaded = load_model(plain)
    assert loaded.arch == arch
    assert loaded.prediction_type == ("v_prediction" if arch == "sd2-v" else "epsilon")


def test_v_pred_marker_and_overrides(single_files, tmp_path, monkeypatch):
    monkeypatch.setattr("stablekit.formats.single_file.shipped_configs", tiny_configs)
    marked = strip_metadata(single_files["sd2"], tmp_path / "marked.safetensors", {"v_pred": torch.tensor([])})
    assert detect_arch(open_weights(marked)) == ("sd2-v", None)
    xl = strip_metadata(single_files["sdxl"], tmp_path / "xl.safetensors", {"v_pred": torch.tensor([])})
    assert load_model(xl).prediction_type == "v_prediction"
    plain = strip_metadata(single_files["sd2"], tmp_path / "plain.safetensors")
    assert load_model(plain).arch == "sd2"
    assert load_model(plain, arch="sd2-v").arch == "sd2-v"
    forced = load_model(plain, prediction_type="v_prediction")
    assert (forced.arch, forced.prediction_type) == ("sd2", "v_prediction")
    # an override also applies to files with a stablekit record
    assert load_model(single_files["sd1"], prediction_type="v_prediction").prediction_type == "v_prediction"


def test_shipped_configs_are_the_reference_models():
    sizes = {"sd1": (64, 768, "epsilon"), "sd2": (64, 1024, "epsilon"), "sd2-v": (96, 1024, "v_prediction"),
             "sdxl": (128, 2048, "epsilon")}
    for arch, (sample, context, prediction) in sizes.items():
        configs = shipped_configs(arch)
        assert configs["unet"]["sample_size"] == sample
        assert configs["unet"]["cross_attention_dim"] == context
        assert configs["scheduler"]["prediction_type"] == prediction
        assert configs["scheduler"]["beta_schedule"] == "scaled_linear"
        assert (configs["scheduler"]["beta_start"], configs["scheduler"]["beta_end"]) == (0.00085, 0.012)
    assert shipped_configs("sdxl")["text_encoder_2"]["hidden_size"] == 1280
    assert shipped_configs("sdxl")["vae"]["scaling_factor"] == 0.13025


# ----------------------------------------------------------------------------- fixtures, tokenizer, hashes
def test_fixtures_are_seeded(tiny):
    again = tiny_components("sdxl", seed=0)
    assert_same_weights(tiny["sdxl"], again)
    other = tiny_components("sdxl", seed=1)
    assert not torch.equal(other.unet.conv_in.weight, again.unet.conv_in.weight)
    assert tiny["sd1"].tokenizer.pad_token == "<|endoftext|>"
    assert tiny["sd2"].tokenizer.pad_token == "!"
    assert tiny["sdxl"].tokenizer_2.pad_token == "!"
    assert tiny["sd2-v"].scheduler_config["prediction_type"] == "v_prediction"
    assert tiny["sd1"].text_encoder.config.vocab_size == 49408


def test_tokenizer_ids():
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer("!").pad_token_id == 0


def test_a1111_hashes(single_files):
    path = single_files["sd1"]
    data = path.read_bytes()
    assert len(data) > 0x110000
    comps = load_model(path)
    assert comps.hash == hashlib.sha256(data).hexdigest()[:10]
    assert comps.extra["legacy_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert comps.name == "tiny-sd1" and comps.source == str(path)
    info = inspect_model(path)
    assert info["hash"] == comps.hash and info["legacy_hash"] == comps.extra["legacy_hash"]
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def test_model_hash_is_lazy_and_cached_per_file_version(tmp_path, monkeypatch, single_files):
    from stablekit.formats import hashes

    monkeypatch.setenv("STABLEKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.safetensors"
    path.write_bytes(single_files["sd1"].read_bytes())
    comps = load_model(path)
    assert not (tmp_path / "cache" / "hashes.json").exists()  # loading did not hash the file
    first = comps.hash
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    calls = []
    monkeypatch.setattr(hashes, "sha256_file", lambda p: calls.append(p) or "f" * 64)
    assert hashes.a1111_short_hash(path) == first and not calls  # served from the cache
    with open(path, "ab") as f:  # a changed file (size and mtime) is hashed again
        f.write(b"\0")
    assert hashes.a1111_short_hash(path) == "f" * 10 and len(calls) == 1


# ----------------------------------------------------------------------------- inspect
def test_inspect_reports_arch_and_parameters(tiny, single_files):
    for arch, path in single_files.items():
        info = inspect_model(path)
        assert info["architecture"] == arch and info["format"] == "single-file"
        assert info["dtype"] == "fp32"
        for name in MODULES:
            module = getattr(tiny[arch], name)
            if module is not None:
                assert info["parameters"][name] == sum(p.numel() for p in module.parameters()), (arch, name)
        json.dumps(info)


def test_inspect_unknown_layout_is_reported_not_raised(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.tensor(1.0)}, str(path))
    info = inspect_model(path)
    assert info["architecture"] == "unknown"
    assert "unknown checkpoint layout" in info["problem"]


def test_pickle_loads_with_weights_only(tiny, single_files, tmp_path, monkeypatch):
    # An LDM .ckpt as Lightning writes it: weights nested under "state_dict", no stablekit record,
    # so detection picks the arch (tiny widths given through the shipped configs).
    monkeypatch.setattr("stablekit.formats.single_file.shipped_configs", tiny_configs)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": file_tensors(single_files["sd1"]), "global_step": 10}, path)
    comps = load_model(path, allow_pickle=True)
    assert comps.arch == "sd1" and comps.name == "model"
    assert_same_weights(tiny["sd1"], comps)
    assert inspect_model(path, allow_pickle=True)["file_type"] == "pickle"
