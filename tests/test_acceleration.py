"""generate/acceleration.py: the default (auto) path stays within PSNR 30 dB of diffusers' fp32 image,
--dtype fp32 stays bit-exact with the reference Pipeline, the probe's verdict is cached and overridable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from fixtures import one_thread, tiny_components

import stablekit
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.generate import acceleration
from stablekit.generate.acceleration import Acceleration, apply, choose, probe_key
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline

PROMPT = "a photo of a cat on a sofa"
SETTINGS = dict(steps=4, cfg=5.0, sampler="Euler", schedule="Normal", seed=11, width=64, height=64, output="np")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """One thread; a private probe cache; no STABLEKIT_DTYPE from the environment."""
    monkeypatch.setenv("STABLEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("STABLEKIT_DTYPE", raising=False)
    monkeypatch.setenv("STABLEKIT_TRACE", "0")  # the layout paths of a large UNet (traced small ones: below)
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model(tiny_model_file):
    return tiny_model_file  # tests/conftest.py


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _diffusers_fp32(c) -> np.ndarray:
    """diffusers' StableDiffusionPipeline image for SETTINGS (Euler, linspace = stablekit's Normal at 4 steps)."""
    scheduler = EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"})
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = ImageNoise([11]).initial_latents(4, 8, 8)
    return pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0, height=64, width=64, latents=latents,
                output_type="np").images[0]


def _reference(model) -> np.ndarray:
    """The reference computation: Pipeline on the same file read by the plain loader, in fp32.

    Read from the same file, not rebuilt in memory: the weights come zero-copy from the file's map,
    so their addresses are only as aligned as the file's offsets, and MKL/oneDNN sum in another
    order for another alignment (1e-7 differences, seen when a header's length moved the data off
    64 bytes). Equal memory, equal floats; diffusers is held to 1e-4 separately."""
    from stablekit.formats import load_model

    return Pipeline(load_model(model), progress=False).generate(PROMPT, **SETTINGS)[0]


def _force_verdict(dtype: str, channels_last: bool, config: dict) -> None:
    """Write a probe verdict into the (private) cache, as a machine where `dtype` measured faster would."""
    path = acceleration.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    verdict = {"best": {"dtype": dtype, "channels_last": channels_last}, "why": f"test: {dtype}",
               "channels_last": {}, "seconds": {}}
    path.write_text(json.dumps({probe_key(config): verdict}))


@pytest.mark.parametrize("dtype,channels_last", [("bf16", True), ("bf16", False), ("fp32", True)])
def test_every_auto_path_keeps_psnr_30_against_diffusers_fp32(model, dtype, channels_last):
    """Whatever the probe picks on a machine, the default image is within 30 dB of diffusers' fp32 one."""
    if dtype == "bf16" and not acceleration.bf16_supported():
        pytest.skip("no bf16 kernels on this CPU: auto never picks bf16 here")
    config = acceleration.unet_config_of(model, None, False)
    _force_verdict(dtype, channels_last, config)
    pipe = stablekit.load(model, progress=False)  # the default: dtype="auto"
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert pipe.acceleration.dtype == want and pipe.components.dtype == want
    assert pipe.acceleration.channels_last == channels_last
    conv = pipe.components.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert pipe.components.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ours = pipe.generate(PROMPT, **SETTINGS)[0]
    reference = _diffusers_fp32(tiny_components("sd1"))
    assert _psnr(ours, reference) >= 30.0
    if dtype == "bf16":
        assert not np.array_equal(ours, reference)  # the bf16 path really ran in bf16


def test_dtype_fp32_is_bit_exact_with_the_reference_pipeline(model):
    """--dtype fp32 is the reference computation: the same floats as Pipeline on fp32 components
    (which tests/test_generate.py holds equal to diffusers), whatever the probe would pick."""
    config = acceleration.unet_config_of(model, None, False)
    _force_verdict("bf16", True, config)
    pipe = stablekit.load(model, dtype="fp32", progress=False)
    assert pipe.acceleration.dtype == torch.float32 and not pipe.acceleration.channels_last
    assert not pipe.acceleration.vae_channels_last
    ours = pipe.generate(PROMPT, **SETTINGS)[0]
    assert np.array_equal(ours, _reference(model))
    assert np.abs(ours - _diffusers_fp32(tiny_components("sd1"))).max() <= 1e-4  # test_generate's sd1 tolerance


def test_probe_runs_once_and_is_cached(model, monkeypatch):
    config = acceleration.unet_config_of(model, None, False)
    first = choose("auto", torch.device("cpu"), config)
    cached = json.loads(acceleration.cache_file().read_text())
    verdict = cached[probe_key(config)]
    assert set(verdict["seconds"]) >= {"fp32", "fp32-cl"} and verdict["best"]["dtype"] in ("fp32", "bf16")
    assert first.reason.startswith("auto: ")

    def no_measure(*_):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(acceleration, "measure", no_measure)
    again = choose("auto", torch.device("cpu"), config)
    assert (again.dtype, again.channels_last) == (first.dtype, first.channels_last)


def test_explicit_and_environment_overrides(model, monkeypatch):
    config = acceleration.unet_config_of(model, None, False)
    _force_verdict("fp32", True, config)
    assert choose("bf16", torch.device("cpu"), config).dtype == torch.bfloat16
    monkeypatch.setenv("STABLEKIT_DTYPE", "bf16")
    assert choose(None, torch.device("cpu"), config).dtype == torch.bfloat16
    assert choose("auto", torch.device("cpu"), config).dtype == torch.float32  # the argument wins
    monkeypatch.setenv("STABLEKIT_DTYPE", "fp8")
    with pytest.raises(StablekitError, match="unknown dtype 'fp8'"):
        stablekit.load(model, dtype=None)
    with pytest.raises(StablekitError, match="dtype must be 'auto'"):
        stablekit.load(model, dtype=3)


def test_probe_shapes_follow_every_architecture():
    """The probe builds the first down block of each shipped architecture (SDXL's has no attention)."""
    from stablekit.formats.archs import shipped_configs
    from fixtures import tiny_configs

    for arch in ("sd1", "sd2-v", "sdxl"):
        block, args, kwargs = acceleration._probe_block(tiny_configs(arch)["unet"])
        with torch.inference_mode():
            out = block(*args, **kwargs)
        assert out[0].shape == args[0].shape
    assert "DownBlock2D" in probe_key(shipped_configs("sdxl")["unet"])


def test_apply_sets_sdpa_on_models_saved_with_the_plain_processor():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    c = tiny_components("sd1")
    c.unet.set_attn_processor(AttnProcessor())
    apply(c, Acceleration(torch.float32, channels_last=False))
    assert {type(p) for p in c.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_cli_dtype_and_compile_flags_reach_load(model, tmp_path, monkeypatch):
    seen = {}
    real = stablekit.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{**kwargs, "compile": False})  # compiling is too slow for a unit test

    monkeypatch.setattr(stablekit, "load", spy)
    base = ["generate", "a cat", "--model", str(model), "--steps", "1", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a.png")]) == 0
    assert seen["dtype"] == "auto" and seen["compile"] is False
    assert main(base + ["--dtype", "fp32", "--compile", "--out", str(tmp_path / "b.png")]) == 0
    assert seen["dtype"] == "fp32" and seen["compile"] is True


def test_small_unet_auto_is_traced_contiguous_and_exact(model, monkeypatch):
    """A small (overhead-bound) UNet: traced calls, contiguous layouts whatever the probe said, and
    the same floats as the reference computation when the verdict is fp32."""
    from stablekit.generate.traced import installed

    monkeypatch.delenv("STABLEKIT_TRACE")
    config = acceleration.unet_config_of(model, None, False)
    _force_verdict("fp32", True, config)
    pipe = stablekit.load(model, progress=False)
    acc = pipe.acceleration
    assert acc.trace and not acc.channels_last and not acc.vae_channels_last and "traced" in acc.describe()
    assert installed(pipe.components.unet) is not None
    ours = pipe.generate(PROMPT, **SETTINGS)[0]
    assert np.array_equal(ours, _reference(model))
