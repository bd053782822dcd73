"""generate/openvino_unet.py: the OpenVINO UNet backend matches the torch fp32 path, reuses its cache
across processes' worth of reloads, notices weights changed in place, steps aside (with one note per
reason) for what it does not take, and fails in one line without the package.

Conversion is the slow part (seconds per model), so the OpenVINO runs use a UNet smaller than the
fixtures' SD1-shaped one (two blocks, one layer each); the fallback tests never convert and use the
fixtures' own tiny components (their ControlNet fits them).
"""
from __future__ import annotations

import builtins
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components, tiny_configs, tiny_controlnet

from stablekit.errors import StablekitError
from stablekit.generate import openvino_unet, traced
from stablekit.generate.pipeline import Pipeline

ov = pytest.importorskip("openvino")

SETTINGS = dict(steps=3, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64, output="np")


def small_components():
    """tiny_components("sd1") with a two-block, one-layer UNet (same text width), seeded."""
    from diffusers import UNet2DConditionModel

    c = tiny_components("sd1")
    config = dict(tiny_configs("sd1")["unet"])
    config.update(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        c.unet = UNet2DConditionModel.from_config(config).eval()
    return c


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(components, pipeline, torch fp32 reference image, a cache folder filled by the first conversion)."""
    with one_thread():
        c = small_components()
        pipe = Pipeline(c, progress=False)
        reference = pipe.generate("a cat", **SETTINGS)[0]
        yield c, pipe, reference, tmp_path_factory.mktemp("ov-cache")


def _uninstall(unet):
    traced.uninstall(unet)  # OpenVINOForward is a TracedForward


def test_f32_matches_torch_and_the_cache_is_reused_without_converting(small, monkeypatch):
    c, pipe, reference, cache = small
    fwd = openvino_unet.install(c.unet, "f32", cache)
    try:
        first = pipe.generate("a cat", **SETTINGS)[0]
        assert fwd.stats["converted"] == 1 and fwd.stats["openvino"] == SETTINGS["steps"] and fwd.stats["torch"] == 0
        assert np.abs(first - reference).max() < 1e-4  # same fp32 math, other kernels
        assert len(list(cache.glob("unet-*/unet.xml"))) == 1 and len(list(cache.glob("*.tmp"))) == 0
        _uninstall(c.unet)
        # a new forward (as a new process would build) finds the converted model: no trace, no conversion
        monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted again despite the cache"))
        fwd = openvino_unet.install(c.unet, "f32", cache)
        fwd._trace = lambda *a: pytest.fail("traced again despite the cache")
        again = pipe.generate("a cat", **SETTINGS)[0]
        assert fwd.stats == {"openvino": SETTINGS["steps"], "torch": 0, "converted": 0, "loaded": 1,
                             "released": fwd.stats["released"]}
        assert np.array_equal(again, first)
    finally:
        _uninstall(c.unet)


def test_torch_weights_are_mapped_from_the_cache_and_a_fallback_after_that_is_exact(small, monkeypatch):
    c, pipe, _, cache = small
    freeu = {"guidance": {"freeu": (1.3, 1.4, 0.8, 0.3)}}
    expected = pipe.generate("a cat", **SETTINGS, **freeu)[0]  # torch, before the backend
    before = {n: t.clone() for n, t in c.unet.state_dict().items()}
    monkeypatch.setattr(openvino_unet, "_NOTED", set())
    fwd = openvino_unet.install(c.unet, "f32", cache, trace_fallback=False)
    try:
        pipe.generate("a cat", **SETTINGS)
        mapped = list(fwd.mapped)
        assert fwd.stats["released"] == len(mapped) > 0.5 * len(before)  # biases folded by OpenVINO stay resident
        assert sum(t.numel() for t in mapped) > 0.99 * sum(t.numel() for t in before.values())
        assert all(torch.equal(c.unet.state_dict()[n], t) for n, t in before.items())  # same bytes, mapped
        assert fwd.versions == fwd._versions()  # the new storage is not taken for new weights
        ours = pipe.generate("a cat", **SETTINGS, **freeu)[0]  # FreeU: the torch path, on weights read back
        assert fwd.stats["torch"] == SETTINGS["steps"] and fwd.mapped == []
        assert all(t.data_ptr() % 64 == 0 for t in mapped)  # fresh memory again: the fallback's own sums
        assert np.array_equal(ours, expected)
    finally:
        _uninstall(c.unet)


def test_uninstalling_gives_the_weights_their_own_memory_and_in_place_changes_never_reach_the_file(small):
    import hashlib

    c, pipe, _, cache = small
    fwd = openvino_unet.install(c.unet, "f32", cache)
    try:
        pipe.generate("a cat", **SETTINGS)
        assert fwd.mapped and fwd.mapped[0] is c.unet.conv_in.weight
        entry = next(p for p in cache.glob("unet-*") if (p / "unet.bin").exists()
                     and openvino_unet.weights_digest(c.unet) in (p / "key.json").read_text())
        digest = hashlib.sha256((entry / "unet.bin").read_bytes()).hexdigest()
        with torch.no_grad():
            c.unet.conv_in.weight.mul_(2.0)  # copy-on-write: this process's page only
            c.unet.conv_in.weight.div_(2.0)
        assert hashlib.sha256((entry / "unet.bin").read_bytes()).hexdigest() == digest
    finally:
        _uninstall(c.unet)
    assert fwd.mapped == [] and c.unet.conv_in.weight.data_ptr() % 64 == 0


def test_release_can_be_turned_off_and_the_compile_settings_are_exact_ones(small):
    c, pipe, _, cache = small
    fwd = openvino_unet.install(c.unet, "f32", cache, release_weights=False)
    try:
        pipe.generate("a cat", **SETTINGS)
        assert fwd.mapped == [] and fwd.stats["released"] == 0 and fwd.stats["loaded"] == 1
        compiled = next(r for r in fwd.compiled.values() if r is not None).get_compiled_model()
        assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
        assert compiled.get_property("NUM_STREAMS") == 1
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    finally:
        _uninstall(c.unet)


def test_openvino_maps_of_the_entry_are_found_and_paged_out(small, tmp_path):
    from stablekit.generate import openvino_weights

    entry = (tmp_path / "unet-abc").resolve()
    maps = "\n".join([
        f"7f0000000000-7f0000100000 r--s 00000000 fd:01 11 {entry}/compiled/123.blob",
        f"7f0000200000-7f0000300000 rw-p 00000000 fd:01 12 {entry}/unet.bin",  # the torch tensors' own map
        f"7f0000400000-7f0000500000 r--p 00000000 fd:01 12 {entry}/unet.bin (deleted)",
        f"7f0000600000-7f0000700000 r--s 00000000 fd:01 13 {entry}-other/unet.bin",
        "7f0000800000-7f0000900000 r-xp 00000000 fd:01 14 /usr/lib/libc.so.6",
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]"])
    assert openvino_weights.entry_mappings(entry, maps) == [(0x7f0000000000, 0x7f0000100000),
                                                           (0x7f0000400000, 0x7f0000500000)]
    c, pipe, reference, cache = small
    fwd = openvino_unet.install(c.unet, "f32", cache)
    try:
        first = pipe.generate("a cat", **SETTINGS)[0]
        assert fwd.paged_out > 0 and fwd.stats["openvino"] == SETTINGS["steps"]  # OpenVINO's maps of the entry
        assert np.array_equal(pipe.generate("a cat", **SETTINGS)[0], first)  # read back where still needed
        assert np.abs(first - reference).max() < 1e-4
    finally:
        _uninstall(c.unet)


def test_other_weights_do_not_load_the_cached_model(small):
    c, _, _, cache = small
    other = small_components()
    with torch.no_grad():
        for p in other.unet.parameters():
            p.mul_(0.9)
    fwd = openvino_unet.install(other.unet, "f32", cache)
    try:
        ours = Pipeline(other, progress=False).generate("a cat", **SETTINGS)[0]
        assert fwd.stats["converted"] == 1 and fwd.stats["loaded"] == 0
        _uninstall(other.unet)
        assert np.abs(ours - Pipeline(other, progress=False).generate("a cat", **SETTINGS)[0]).max() < 1e-4
    finally:
        _uninstall(other.unet)


def test_weights_changed_in_place_rebuild_the_model(small, capsys):
    c, pipe, reference, cache = small
    fwd = openvino_unet.install(c.unet, "f32", cache)
    try:
        pipe.generate("a cat", **SETTINGS)
        with torch.no_grad():
            c.unet.conv_in.weight.mul_(1.5)  # as adapters/apply.py fuses a LoRA: copy_/mul_ on the parameter
        patched = pipe.generate("a cat", **SETTINGS)[0]
        assert fwd.stats["converted"] >= 1 and fwd.stats["converted"] + fwd.stats["loaded"] == 2  # the first may be cached
        assert "weights changed" in capsys.readouterr().err
        _uninstall(c.unet)
        torch_patched = pipe.generate("a cat", **SETTINGS)[0]
        assert np.abs(patched - torch_patched).max() < 1e-4
        assert np.abs(patched - reference).max() > 1e-2
    finally:
        _uninstall(c.unet)
        with torch.no_grad():
            c.unet.conv_in.weight.div_(1.5)


def test_bf16_hint_is_close_to_torch_fp32(small):
    c, pipe, reference, cache = small
    fwd = openvino_unet.install(c.unet, "bf16", cache)
    try:
        ours = pipe.generate("a cat", **SETTINGS)[0]
        assert fwd.stats["openvino"] == SETTINGS["steps"]
        # bf16 keeps 8 bits of mantissa; where the CPU lacks bf16 kernels OpenVINO runs f32
        assert np.abs(ours - reference).max() < 0.05
    finally:
        _uninstall(c.unet)


def test_precision_follows_the_dtype_request(monkeypatch):
    monkeypatch.setattr(openvino_unet, "bf16_capable", lambda: True)
    assert openvino_unet.choose_precision("auto") == "bf16"
    assert openvino_unet.choose_precision("fp32") == "f32"
    monkeypatch.setattr(openvino_unet, "bf16_capable", lambda: False)
    assert openvino_unet.choose_precision("auto") == "f32"
    with pytest.raises(StablekitError, match="f32 or bf16"):
        openvino_unet.choose_precision("fp16")


# ----------------------------------------------------------------------------- fallbacks (no conversion)
@pytest.fixture(scope="module")
def tiny():
    with one_thread():
        c = tiny_components("sd1")
        yield c, Pipeline(c, progress=False)


@pytest.mark.parametrize("reason, extra", [
    ("ControlNet", "controlnet"),
    ("FreeU", {"guidance": {"freeu": (1.3, 1.4, 0.8, 0.3)}}),
    ("FreeU_V2, PAG, ToMe", {"guidance": {"freeu": (1.3, 1.4, 0.8, 0.3), "freeu_v2": True}}),
    ("FreeU_V2, PAG, ToMe", {"guidance": {"pag_scale": 2.0}}),
    ("FreeU_V2, PAG, ToMe", {"tome": 0.5}),
    ("DeepCache", {"deepcache": 2}),
])
def test_what_openvino_does_not_take_runs_on_torch_with_one_note(tiny, reason, extra, capsys, monkeypatch):
    c, pipe = tiny
    if extra == "controlnet":
        from stablekit.generate.control import ControlUnit

        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 16:48] = 255
        from PIL import Image

        extra = {"controlnets": [ControlUnit(tiny_controlnet("sd1"), Image.fromarray(image), scale=0.7)]}
    monkeypatch.setattr(openvino_unet, "_NOTED", set())
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted a call it cannot take"))
    expected = pipe.generate("a cat", **SETTINGS, **extra)[0]
    fwd = openvino_unet.install(c.unet, "f32", None, trace_fallback=False)  # eager fallback: no torch tracing either
    try:
        ours = pipe.generate("a cat", **SETTINGS, **extra)[0]
        pipe.generate("a cat", **SETTINGS, **extra)
    finally:
        _uninstall(c.unet)
    assert fwd.stats["openvino"] == 0 and fwd.stats["converted"] == 0
    assert np.array_equal(ours, expected)  # the torch path, exactly
    notes = [line for line in capsys.readouterr().err.splitlines() if "OpenVINO UNet" in line]
    assert len(notes) == 1 and reason in notes[0] and "torch path" in notes[0]


def test_sdxl_call_runs_on_torch_with_a_note(capsys, monkeypatch):
    c = tiny_components("sdxl")
    monkeypatch.setattr(openvino_unet, "_NOTED", set())
    fwd = openvino_unet.install(c.unet, "f32", None)
    try:
        Pipeline(c, progress=False).generate("a cat", **{**SETTINGS, "steps": 1})
    finally:
        _uninstall(c.unet)
    assert fwd.stats["openvino"] == 0 and fwd.stats["torch"] == 1  # 1 step, CFG batched into one call
    assert "SDXL" in capsys.readouterr().err


# ----------------------------------------------------------------------------- API, CLI, missing package
def test_load_with_the_openvino_backend_and_its_errors(monkeypatch):
    import stablekit

    pipe = stablekit.load(None, progress=False, backend="openvino", dtype="fp32")
    assert openvino_unet.installed(pipe.components.unet) is not None
    assert pipe.components.unet.dtype == torch.float32
    assert "OpenVINO UNet f32" in pipe.acceleration.describe()
    with pytest.raises(StablekitError, match="unknown backend 'onnx'"):
        stablekit.load(None, backend="onnx")
    with pytest.raises(StablekitError, match="torch.compile"):
        stablekit.load(None, backend="openvino", compile=True)
    real = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(sys.modules, "openvino")
    with pytest.raises(StablekitError) as err:
        stablekit.load(None, backend="openvino")
    assert "pip install openvino==2026.4.1" in str(err.value) and "\n" not in str(err.value)


def test_stablekit_import_does_not_import_openvino():
    code = ("import sys, stablekit, stablekit.generate.pipeline, stablekit.generate.openvino_unet, stablekit.cli; "
            "print('openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_backend_flag(monkeypatch, tmp_path):
    from stablekit.cli import main

    asked = []  # the OpenVINO forward's conversions, stubbed out: the embedded UNet takes a minute to convert here
    monkeypatch.setattr(openvino_unet.OpenVINOForward, "_request", lambda self, key, *a: asked.append(key))
    assert main(["generate", "a red circle", "--steps", "1", "--backend", "openvino", "--dtype", "fp32",
                 "--out", str(tmp_path / "a.png"), "--no-progress"]) == 0
    assert asked and (tmp_path / "a.png").exists()  # the OpenVINO forward was asked; the stub sent it to torch
    assert main(["generate", "a red circle", "--backend", "onnx", "--out", str(tmp_path / "b.png")]) == 2
    assert main(["generate", "a red circle", "--backend", "openvino", "--compile", "--out", str(tmp_path / "c.png")]) == 2


def test_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("STABLEKIT_OPENVINO_CACHE_ENTRIES", "2")
    for i in range(4):
        (tmp_path / f"unet-{i}").mkdir()
        os.utime(tmp_path / f"unet-{i}", (1000 + i, 1000 + i))
    openvino_unet._evict(tmp_path, keep=tmp_path / "unet-0")  # the one just written stays whatever its age
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet-0", "unet-2", "unet-3"]


@pytest.mark.parametrize("verdict, dtype, vae_dtype", [("bf16", "auto", torch.bfloat16), ("fp32", "auto", torch.float32),
                                                       ("bf16", "fp32", torch.float32)])
def test_the_vae_takes_the_torch_defaults_bf16_verdict_under_openvino(tmp_path, monkeypatch, verdict, dtype, vae_dtype):
    """The VAE stays on torch with backend openvino: fp32 contiguous made it 20 of 85 CPU s of an SD 1.5
    512 px image on an AMX CPU (4 in bf16); it now follows the probe's verdict, the UNet stays fp32."""
    import json

    import stablekit
    from stablekit.formats import save_model
    from stablekit.generate import acceleration

    monkeypatch.setenv("STABLEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("STABLEKIT_DTYPE", raising=False)
    monkeypatch.setattr(openvino_unet, "bf16_capable", lambda: True)
    path = tmp_path / "tiny.safetensors"
    with one_thread():
        save_model(tiny_components("sd1"), path, to="single-file")
    config = acceleration.unet_config_of(path, None, False)
    acceleration.cache_file().parent.mkdir(parents=True, exist_ok=True)
    best = {"best": {"dtype": verdict, "channels_last": True}, "why": "test", "channels_last": {}, "seconds": {}}
    acceleration.cache_file().write_text(json.dumps({acceleration.probe_key(config): best}))
    pipe = stablekit.load(path, progress=False, backend="openvino", dtype=dtype)
    c = pipe.components
    assert c.unet.dtype == torch.float32 and c.dtype == torch.float32
    assert c.vae.dtype == vae_dtype
    assert c.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last) == (vae_dtype == torch.bfloat16)
    with one_thread():
        image = pipe.generate("a red square", steps=2, seed=0, output="np")
    assert np.isfinite(np.asarray(image)).all()
