"""The training methods on tiny random models: what trains, what must not change, what is exported."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import TinyImages, tiny
from train_fixtures import snapshot as _snapshot

import stablekit.train
from stablekit.errors import StablekitError
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies.lora import LoraStrategy, unet_targets
from stablekit.train.strategies.textual_inversion import TextualInversionStrategy

FAST = dict(steps=3, batch_size=2, sample_every=0, progress=False, tensorboard=False)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_textual_inversion_changes_only_the_new_rows(tmp_path, arch):
    comps = tiny(arch)
    before = _snapshot(comps)
    rows = {k: v.shape[0] for k, v in before.items() if k.endswith("token_embedding.weight")}
    result = stablekit.train("textual-inversion", components=comps, dataset=TinyImages(captions=[
        "a red <zq> on a blue background", "a <zq>", "<zq> at the top", "a green thing"]),
        out=tmp_path, token="<zq>", init_word="square", vectors=2, lr=0.05, **FAST)
    after = _snapshot(comps)
    emb_keys = set(rows)
    assert _changed(before, after) == emb_keys  # every other tensor bit-identical; the embeddings grew...
    for key, n_old in rows.items():
        new = after[key]
        assert new.shape[0] == n_old + 2
        assert torch.equal(new[:n_old], before[key])  # ...with their old rows bit-identical
    assert len(emb_keys) == (2 if arch == "sdxl" else 1)
    vectors = load_file(result["artefact"])
    if arch == "sdxl":
        assert set(vectors) >= {"clip_l", "clip_g"} and vectors["clip_l"].shape == (2, 32) and vectors["clip_g"].shape == (2, 64)
    else:
        (tensor,) = vectors.values()
        assert tensor.shape == (2, 32)
        key = next(iter(emb_keys))
        init = before[key][comps.tokenizer("square", add_special_tokens=False).input_ids[0]]
        assert not torch.allclose(tensor[0], init)  # the vectors trained...
        assert torch.equal(after[key][-2:], tensor)  # ...and sit in the new rows


def test_textual_inversion_refuses_a_known_token_and_expands_captions():
    with pytest.raises(StablekitError, match="already in the vocabulary"):
        TextualInversionStrategy(tiny("sd1"), token="square", init_word="shape")
    with pytest.raises(StablekitError, match="initializer word"):
        TextualInversionStrategy(tiny("sd1"), token="<new>", init_word=" ")
    s = TextualInversionStrategy(tiny("sd1"), token="<zq>", init_word="square", vectors=3)
    # the caption keeps the name; caption_ids spells it (tests/test_embedding_tokens.py)
    assert s.caption_hook("a circle") == "<zq> a circle"
    ids = s.components.tokenizer("a red <zq> <zq>_1 <zq>_2").input_ids
    assert ids[3:6] == s.parts["emb_params"].ids


@pytest.mark.parametrize("arch", ["sd1", "sd2-v", "sdxl"])
def test_lora_trains_only_adapter_weights_and_exports(tmp_path, arch):
    comps = tiny(arch)
    before = _snapshot(comps)
    result = stablekit.train("lora", components=comps, dataset=TinyImages(), out=tmp_path, name="style", rank=4,
                             alpha=2.0, lr=1e-2, train_text_encoder=True, **FAST)
    after = _snapshot(comps)
    base_after = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert _changed(before, base_after) == set()  # base weights bit-identical
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero and trained
    assert result["artefact"].endswith("style.safetensors")
    saved = load_file(result["artefact"])
    assert any("lora" in k for k in saved) and len(saved) >= 2 * len(unet_targets(comps.unet, False))
    assert (tmp_path / "style.toml").read_text().count('method = "lora"') == 1


def test_lora_targets_attention_and_projection_and_locon_adds_convs():
    unet = tiny("sd1").unet
    plain = unet_targets(unet, conv=False)
    assert any(n.endswith("attn1.to_q") for n in plain) and any(n.endswith("attn2.to_out.0") for n in plain)
    assert any(n.endswith("proj_in") for n in plain) and any(n.endswith("ff.net.2") for n in plain)
    assert not any(".resnets." in n for n in plain)
    locon = unet_targets(unet, conv=True)
    assert set(plain) < set(locon) and any(n.endswith("resnets.0.conv1") for n in locon)


def test_untrained_lora_leaves_the_unet_output_unchanged():
    comps = tiny("sd1")
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = comps.unet(x, t, ctx).sample
        LoraStrategy(comps, rank=4, alpha=4.0, conv=True)
        got = comps.unet(x, t, ctx).sample
    assert torch.equal(ref, got)


def test_finetune_changes_unet_only_and_exports_single_file_and_folder(tmp_path):
    from stablekit.formats import load_model

    comps = tiny("sd2-v")
    before = _snapshot(comps)
    # train_text_encoder=False: a tiny model's recipe (TINY_RECIPES) trains the text encoder too
    result = stablekit.train("finetune", components=comps, dataset=TinyImages(), out=tmp_path, name="ft", lr=1e-3,
                             ema_decay=0.5, snr_gamma=5.0, noise_offset=0.05, train_text_encoder=False, **FAST)
    changed = _changed(before, _snapshot(comps))
    assert changed and all(k.startswith("unet.") for k in changed)
    assert (tmp_path / "ft.safetensors").exists() and (tmp_path / "ft" / "model_index.json").exists()
    for path in (tmp_path / "ft.safetensors", tmp_path / "ft"):
        loaded = load_model(path)
        key = next(iter(changed))[len("unet."):]
        assert torch.allclose(loaded.unet.state_dict()[key], comps.unet.state_dict()[key])
        assert loaded.prediction_type == "v_prediction"
    assert result["config"]["snr_gamma"] == 5.0


def test_finetune_can_train_the_text_encoder():
    from stablekit.train.strategies.finetune import FinetuneStrategy

    s = FinetuneStrategy(tiny("sd1"), train_text_encoder=True)
    te_params = set(map(id, s.components.text_encoder.parameters()))
    assert te_params <= set(map(id, s.trainable_parameters()))
    assert not set(map(id, s.components.vae.parameters())) & set(map(id, s.trainable_parameters()))


def test_v_prediction_target_is_used():
    """The same batch gives a different loss when the model's prediction type changes."""
    from stablekit.train.strategies.finetune import FinetuneStrategy

    data = TinyImages().get_batch(np.arange(2))
    losses = []
    for pred in ("epsilon", "v_prediction"):
        comps = tiny("sd1")
        comps.scheduler_config = {**comps.scheduler_config, "prediction_type": pred}
        with torch.no_grad():
            losses.append(float(FinetuneStrategy(comps).loss(data, BatchRandom(torch.Generator().manual_seed(0)))[0]))
    assert abs(losses[0] - losses[1]) > 1e-3


def test_dreambooth_draws_class_images_once_and_weights_the_prior(tmp_path, monkeypatch):
    from stablekit.generate import pipeline

    calls = {"n": 0}
    real = pipeline.Pipeline.generate

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.Pipeline, "generate", counting)
    settings = dict(instance_prompt="a sks square", class_prompt="a square", num_class_images=3, class_steps=2,
                    out=tmp_path, **FAST)
    stablekit.train("dreambooth", components=tiny("sd1"), dataset=TinyImages(n=2), **settings)
    assert calls["n"] == 3
    folders = list((tmp_path / "class-images").iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.png"))) == 3
    assert (folders[0] / "0000.txt").read_text() == "a square"
    result = stablekit.train("dreambooth", components=tiny("sd1"), dataset=TinyImages(n=2),
                             lora=True, name="db-lora", **settings)
    assert calls["n"] == 3  # reused from the cache
    assert result["artefact"].endswith("db-lora.safetensors") and any("lora" in k for k in load_file(result["artefact"]))


def test_dreambooth_data_mixes_instance_and_class_items():
    from stablekit.train.dreambooth import PriorPreservationData

    data = PriorPreservationData(TinyImages(n=2), "a sks square", torch.zeros(3, 3, 64, 64), "a square")
    assert len(data) == 6
    batch = data.get_batch(np.array([4, 0, 1, 3]))
    assert batch["captions"] == ["a square", "a sks square", "a sks square", "a square"]
    assert batch["is_reg"].tolist() == [True, False, False, True]
    assert torch.equal(batch["pixels"][0], torch.zeros(3, 64, 64)) and batch["pixels"][1].abs().sum() > 0


def test_prior_loss_weight_weights_class_items():
    from stablekit.train.strategies.finetune import FinetuneStrategy

    batch = TinyImages(n=2).get_batch(np.arange(2))
    batch["is_reg"] = torch.tensor([False, True])
    losses = []
    s = FinetuneStrategy(tiny("sd1"))
    for w in (0.0, 1.0, 2.0):
        s.prior_loss_weight = w
        with torch.no_grad():
            losses.append(float(s.loss(batch, BatchRandom(torch.Generator().manual_seed(0)))[0]))
    # loss = (instance + w * class) / 2: linear in w
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4) and losses[1] > losses[0]


def test_methods_run_on_the_embedded_model(tmp_path):
    """LoRA on the shipped shapes model (v-prediction, 64 px) with a validation grid."""
    from stablekit import EMBEDDED_MODEL
    from stablekit.formats import load_model

    comps = load_model(EMBEDDED_MODEL)
    result = stablekit.train("lora", components=comps, dataset=TinyImages(), out=tmp_path, rank=2,
                             sample_prompts=["a red circle", "a <zq> square"], sample_steps=2,
                             **{**FAST, "sample_every": 3})
    assert (tmp_path / "lora-training" / "samples" / "step-000003.png").exists()
    assert result["step"] == 3 and all(np.isfinite(h["loss"]) for h in result["history"])


def test_methods_use_the_datasets_batch_order(tmp_path):
    data = TinyImages()
    stablekit.train("lora", components=tiny("sd1"), dataset=data, out=tmp_path, seed=5, **FAST)
    assert data.batch_order_calls == [(5, 2)]


def test_bf16_and_gradient_checkpointing_options(tmp_path):
    comps = tiny("sd1")
    result = stablekit.train("lora", components=comps, dataset=TinyImages(), out=tmp_path, mixed_precision="bf16",
                             gradient_checkpointing=True, **FAST)
    assert comps.unet.is_gradient_checkpointing
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    assert next(p for n, p in comps.unet.named_parameters() if "lora_A" in n).dtype == torch.float32  # autocast only


def test_accelerate_picks_the_device():
    from accelerate import PartialState

    from stablekit.train.config import TrainConfig
    from stablekit.train.loop import make_accelerator

    assert make_accelerator(TrainConfig(device="cpu")).device.type == "cpu"
    auto = make_accelerator(TrainConfig(device="auto")).device
    assert auto == PartialState().default_device  # CUDA > MPS > CPU, as accelerate decides
