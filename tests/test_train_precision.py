"""Training precision: auto's choice, and the frozen UNet layers kept in bf16 under mixed precision."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import TinyImages, tiny

import stablekit.train
from stablekit.train import precision
from stablekit.train.strategies.lora import LoraStrategy

FAST = dict(steps=2, batch_size=2, sample_every=0, progress=False, tensorboard=False)


def test_cast_frozen_casts_only_layers_without_trainable_weights():
    comps = tiny()
    LoraStrategy(comps, rank=4, alpha=4.0)
    unet = comps.unet
    cast = precision.cast_frozen(unet)
    assert cast > 0
    dtypes = {n: p.dtype for n, p in unet.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)  # what trains stays fp32
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert precision.cast_frozen(unet) == 0  # a second call finds nothing left to cast


def test_cast_layers_return_the_callers_dtype_outside_autocast():
    comps = tiny()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = comps.unet(x, t, ctx).sample
        comps.unet.requires_grad_(False)
        assert precision.cast_frozen(comps.unet) == sum(p.numel() for p in comps.unet.parameters())  # all of it
        got = comps.unet(x, t, ctx).sample
    assert got.dtype == torch.float32
    assert not torch.equal(got, ref)  # computed in bf16 ...
    assert torch.allclose(got, ref, atol=0.1, rtol=0.1)  # ... the same model up to bf16 rounding


def test_a_fully_trained_unet_has_nothing_to_cast():
    comps = tiny()
    comps.unet.requires_grad_(True)
    assert precision.cast_frozen(comps.unet) == 0


def test_auto_follows_the_probe(monkeypatch):
    from stablekit.generate import acceleration

    cfg = {"down_block_types": ["CrossAttnDownBlock2D"], "block_out_channels": [320]}
    monkeypatch.setattr(acceleration, "choose", lambda *a, **k: acceleration.Acceleration(torch.bfloat16, reason="auto: x"))
    assert precision.resolve("auto", "cpu", cfg)[0] == "bf16"
    monkeypatch.setattr(acceleration, "choose", lambda *a, **k: acceleration.Acceleration(torch.float32, reason="auto: y"))
    assert precision.resolve("auto", "cpu", cfg) == ("no", "auto: y")
    assert precision.resolve("auto", "cpu", None)[0] == "no"  # nothing to probe (autoencoder, text stages)
    assert precision.resolve("bf16", "cpu", None) == ("bf16", "requested")


def test_auto_is_fp32_when_stablekit_dtype_says_so(monkeypatch):
    monkeypatch.setenv("STABLEKIT_DTYPE", "fp32")
    assert precision.resolve("auto", "cpu", dict(tiny().unet.config))[0] == "no"


def test_lora_trains_in_bf16_with_fp32_adapters_and_export(tmp_path):
    comps = tiny()
    result = stablekit.train("lora", components=comps, dataset=TinyImages(), out=tmp_path, name="b", rank=4,
                             lr=1e-2, mixed_precision="bf16", **FAST)
    assert result["mixed_precision"] == "bf16 (requested)"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result["history"])
    base = [p for n, p in comps.unet.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    saved = load_file(result["artefact"])
    assert saved and all(v.dtype == torch.float32 for k, v in saved.items() if "lora_" in k)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_up" in k)  # B trained from zero


def test_finetune_under_bf16_keeps_every_unet_weight_fp32(tmp_path):
    comps = tiny()
    stablekit.train("finetune", components=comps, dataset=TinyImages(), out=tmp_path, name="f", lr=1e-3,
                    mixed_precision="bf16", **FAST)
    assert all(p.dtype == torch.float32 for p in comps.unet.parameters())


# -- a run that loads its own model reads the frozen parts straight into bf16 ------------------------
def _saved(tmp_path, to="diffusers"):
    from stablekit.formats import save_model

    return save_model(tiny(), tmp_path / ("tiny" if to == "diffusers" else "tiny.safetensors"), to=to)


@pytest.mark.parametrize("to", ["diffusers", "single-file"])
def test_the_frozen_unet_is_read_into_bf16_without_an_fp32_copy(tmp_path, monkeypatch, to):
    from stablekit.formats import load_model, weights

    path = _saved(tmp_path, to)
    ref = load_model(path)
    full_reads, cast_reads = [], []  # whole tensors in the file's dtype (safetensors' map) / cast chunk by chunk
    open_weights = weights.open_weights

    def spying_open(*a, **k):
        wf = open_weights(*a, **k)
        reader, cast_reader = wf._reader, wf._cast_reader

        def unet(key):
            return wf.path.parent.name == "unet" or key.startswith("model.diffusion_model.")

        wf._reader = lambda key: full_reads.append(unet(key)) or reader(key)
        wf._cast_reader = lambda key, dtype: cast_reads.append((unet(key), dtype)) or cast_reader(key, dtype)
        return wf

    for module in ("stablekit.formats.diffusers_folder", "stablekit.formats.single_file"):
        monkeypatch.setattr(f"{module}.open_weights", spying_open)
    comps = load_model(path, component_dtypes={"unet": "bf16"})
    assert all(p.dtype == torch.bfloat16 for p in comps.unet.parameters())
    assert all(p.dtype == torch.float32 for p in comps.vae.parameters())
    assert all(p.dtype == torch.float32 for p in comps.text_encoder.parameters())
    # every UNet tensor was cast as it was read, a few MiB at a time; none was read whole in fp32
    assert cast_reads.count((True, torch.bfloat16)) == len(ref.unet.state_dict()) == len(cast_reads)
    assert full_reads and not any(full_reads)  # (the VAE and text encoder were read as stored)
    got, want = comps.unet.state_dict(), ref.unet.state_dict()
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)  # as casting after the load


def test_load_dtypes_names_only_what_never_trains_nor_is_exported(monkeypatch):
    from types import SimpleNamespace

    from stablekit.generate import acceleration

    monkeypatch.setattr(acceleration, "unet_config_of", lambda *a, **k: None)
    s = SimpleNamespace(model="m", train_text_encoder=False, lora=False, identifier_lr=0.0)
    bf16 = torch.bfloat16
    everything = {"unet": bf16, "vae": bf16, "text_encoder": bf16, "text_encoder_2": bf16}
    assert precision.load_dtypes("lora", s, "bf16", "cpu") == everything
    assert precision.load_dtypes("lora", s, "no", "cpu") == {}
    assert precision.load_dtypes("lora", s, "auto", "cpu") == {}  # auto without a readable UNet: fp32
    assert precision.load_dtypes("textual-inversion", s, "bf16", "cpu") == {"unet": bf16, "vae": bf16}  # its rows train
    assert precision.load_dtypes("finetune", s, "bf16", "cpu") == {}  # the UNet trains, the rest is exported
    assert precision.load_dtypes("dreambooth", s, "bf16", "cpu") == {}
    assert precision.load_dtypes("controlnet", s, "bf16", "cpu") == {}  # the ControlNet starts as a copy
    assert precision.load_dtypes("dreambooth", SimpleNamespace(**{**vars(s), "lora": True}), "bf16", "cpu") == everything
    pivotal = SimpleNamespace(**{**vars(s), "lora": True, "identifier_lr": 1e-3})
    assert precision.load_dtypes("dreambooth", pivotal, "bf16", "cpu") == {"unet": bf16, "vae": bf16}
    te = SimpleNamespace(**{**vars(s), "train_text_encoder": True})
    assert precision.load_dtypes("lora", te, "bf16", "cpu") == {"unet": bf16, "vae": bf16}


def test_adapters_on_a_bf16_unet_start_as_on_an_fp32_one():
    fp32, bf16 = tiny(), tiny()
    bf16.unet.to(torch.bfloat16)
    a, b = LoraStrategy(fp32, rank=4, alpha=4.0), LoraStrategy(bf16, rank=4, alpha=4.0)
    la = {n: p for n, p in fp32.unet.named_parameters() if "lora_" in n}
    lb = {n: p for n, p in bf16.unet.named_parameters() if "lora_" in n}
    assert la and la.keys() == lb.keys()
    assert all(p.dtype == torch.float32 for p in lb.values())
    assert all(torch.equal(la[n], lb[n]) for n in la)  # not rounded through bf16
    assert not any(hasattr(m, "compute_dtype") for m in bf16.unet.modules())  # the marker is gone


def test_a_bf16_lora_run_reading_its_model_in_bf16_trains_exactly_as_casting_after_an_fp32_load(tmp_path, monkeypatch):
    import importlib

    from stablekit.formats import load_model

    run = importlib.import_module("stablekit.train.run")  # (stablekit.train.run is also the function)
    path = _saved(tmp_path)
    settings = dict(dataset=TinyImages(), rank=4, lr=1e-2, mixed_precision="bf16", cache_dir="off", **FAST)
    loaded, cast_in_loop = [], []
    monkeypatch.setattr(run, "load_components", lambda *a: loaded.append(load_model_as(*a)) or loaded[-1])
    monkeypatch.setattr("stablekit.train.loop.cast_frozen", lambda m: cast_in_loop.append(precision.cast_frozen(m)))
    read = stablekit.train("lora", model=str(path), out=tmp_path / "a", name="a", **settings)
    unet = loaded[0].unet
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if "lora_" not in n)
    assert cast_in_loop == [0]  # read into bf16: nothing left for the loop to cast
    assert all(p.dtype == torch.bfloat16 for p in loaded[0].vae.parameters())
    monkeypatch.undo()
    # the old way: the UNet loaded in fp32 and cast by the loop (encoders in bf16 as the new way reads them)
    comps = load_model(path, component_dtypes={"vae": "bf16", "text_encoder": "bf16"})
    cast = stablekit.train("lora", components=comps, out=tmp_path / "b", name="a", **settings)
    assert [r["loss"] for r in read["history"]] == [r["loss"] for r in cast["history"]]
    got, want = load_file(read["artefact"]), load_file(cast["artefact"])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert any(v.abs().max() > 0 for k, v in got.items() if "lora_up" in k)


def load_model_as(model, dtypes=None):
    from stablekit.formats import load_model

    return load_model(model, component_dtypes=dtypes)


def test_a_bf16_run_from_a_file_draws_its_validation_grid(tmp_path):
    path = _saved(tmp_path)
    result = stablekit.train("lora", model=str(path), dataset=TinyImages(), out=tmp_path / "o", name="g", rank=4,
                             lr=1e-2, mixed_precision="bf16", cache_dir="off", sample_prompts=["a red square"],
                             sample_steps=2, **{**FAST, "sample_every": 2})
    grids = list((tmp_path / "o").rglob("*.png"))
    assert result["artefact"] and any("sample" in str(g) for g in grids)


def test_the_encoder_cache_key_holds_the_encoders_dtype(tmp_path):
    from stablekit.train.strategies.lora import LoraStrategy as Lora

    dirs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        comps = tiny()
        comps.vae.to(dtype)
        comps.text_encoder.to(dtype)
        cache = Lora(comps, rank=4, alpha=4.0, cache_dir=str(tmp_path)).encoder_cache()
        dirs[name] = (cache.latents.dir, cache.text.dir)
        for d in dirs[name]:
            assert str(dtype) in (d / "settings.json").read_text()
    assert dirs["fp32"][0] != dirs["bf16"][0] and dirs["fp32"][1] != dirs["bf16"][1]


def test_a_bf16_run_caches_bf16_encodings_apart_from_an_fp32_run(tmp_path):
    path = _saved(tmp_path)
    cache = tmp_path / "cache"
    for precision_ in ("no", "bf16"):
        stablekit.train("lora", model=str(path), dataset=TinyImages(), out=tmp_path / precision_, name="c", rank=4,
                        lr=1e-2, mixed_precision=precision_, cache_dir=str(cache), **FAST)
    settings = sorted((d / "settings.json").read_text() for d in cache.iterdir())
    assert sum("latents" in s for s in settings) == 2 and sum('"text"' in s for s in settings) == 2
    assert sum("bfloat16" in s for s in settings) == 2 and sum("float32" in s for s in settings) == 2


@pytest.mark.parametrize("method", ["textual-inversion", "dreambooth-lora"])
def test_bf16_runs_that_read_their_model_in_bf16_train_and_export(tmp_path, monkeypatch, method):
    """Textual inversion keeps its text encoder fp32 (its new rows train); DreamBooth-LoRA draws its
    class images with the UNet, VAE and text encoder read into bf16, before training starts."""
    import importlib

    run = importlib.import_module("stablekit.train.run")
    loaded = []
    monkeypatch.setattr(run, "load_components", lambda *a: loaded.append(load_model_as(*a)) or loaded[-1])
    path = _saved(tmp_path)
    settings = dict(model=str(path), out=tmp_path / "o", lr=1e-2, mixed_precision="bf16", cache_dir="off", **FAST)
    if method == "textual-inversion":
        result = stablekit.train(method, dataset=TinyImages(captions=["a <zq>"] * 4), token="<zq>", init_word="square",
                                 **settings)
    else:
        result = stablekit.train("dreambooth", dataset=TinyImages(n=2), lora=True, rank=4, instance_prompt="a sks square",
                                 class_prompt="a square", num_class_images=2, class_steps=2,
                                 train_text_encoder=False, **settings)  # (the tiny recipe trains it)
        assert len(list((tmp_path / "o" / "class-images").rglob("*.png"))) == 2
    comps = loaded[0]
    assert all(p.dtype == torch.bfloat16 for n, p in comps.unet.named_parameters() if "lora_" not in n)
    te = {p.dtype for p in comps.text_encoder.parameters()}
    assert te == ({torch.float32} if method == "textual-inversion" else {torch.bfloat16})
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result["history"])
    saved = load_file(result["artefact"])
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
