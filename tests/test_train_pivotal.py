"""DreamBooth pivotal tuning (identifier_lr): only the identifier's rows move, and they travel with the export."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from train_fixtures import TinyImages, tiny
from train_fixtures import snapshot as _snapshot

import stablekit.train
from stablekit.errors import StablekitError
from stablekit.train.strategies.finetune import FinetuneStrategy
from stablekit.train.strategies.lora import LoraStrategy
from stablekit.train.strategies.sd import _encode

EMB = "text_encoder.embeddings.token_embedding.weight"
# prior_loss_weight 0: the class prompt names the class noun but no class images are drawn (fast)
DB = dict(instance_prompt="a sks square", class_prompt="a square", prior_loss_weight=0.0, steps=3, batch_size=2,
          sample_every=0, progress=False, tensorboard=False)


def _sks(components) -> list[int]:
    return components.tokenizer("sks", add_special_tokens=False).input_ids


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_only_the_identifier_rows_change_and_travel_in_the_export(tmp_path, train_text_encoder):
    from stablekit.formats import load_model

    comps = tiny("sd1")
    before = _snapshot(comps)
    ids = _sks(comps)
    stablekit.train("dreambooth", components=comps, dataset=TinyImages(n=2), out=tmp_path, name="db", lr=1e-3,
                    identifier_lr=0.05, train_text_encoder=train_text_encoder, text_encoder_lr=1e-3, **DB)
    after = _snapshot(comps)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert EMB in changed and any(k.startswith("unet.") for k in changed)
    if not train_text_encoder:  # the encoder is frozen but for the identifier rows
        assert not {k for k in changed if k.startswith("text_encoder.")} - {EMB}
    else:
        assert len({k for k in changed if k.startswith("text_encoder.")}) > 1
    rows = torch.ones(before[EMB].shape[0], dtype=torch.bool)
    rows[ids] = False
    assert torch.equal(after[EMB][rows], before[EMB][rows])  # every other row bit-identical
    assert not torch.equal(after[EMB][ids], before[EMB][ids])  # the identifier's row trained
    loaded = load_model(tmp_path / "db.safetensors")
    assert torch.equal(loaded.text_encoder.get_input_embeddings().weight[ids], after[EMB][ids])


def test_dreambooth_lora_writes_an_identifier_embedding_that_loads(tmp_path):
    from stablekit.adapters.embeddings import load_embeddings
    from stablekit.formats.embeddings_a1111 import load_embedding

    comps = tiny("sd1")
    before = _snapshot(comps)
    result = stablekit.train("dreambooth", components=comps, dataset=TinyImages(n=2), out=tmp_path, name="dbl",
                             lora=True, train_text_encoder=False, lr=1e-3, identifier_lr=0.05, **DB)
    assert torch.equal(_snapshot(comps)[EMB], before[EMB])  # LoRA: the rows live in the hook, not the model
    with safe_open(result["artefact"], "pt") as f:
        assert f.metadata()["stablekit_load_with_embeddings"] == "sks.safetensors"
    emb = load_embedding(tmp_path / "sks.safetensors")
    assert emb["name"] == "sks" and emb["vectors"].shape == (1, 32) and emb["format"] == "a1111-safetensors"
    assert emb["metadata"]["stablekit_load_with"] == "dbl.safetensors"
    assert not torch.equal(emb["vectors"][0], before[EMB][_sks(comps)[0]])
    # stablekit's loader refuses names that are words of CLIP's vocabulary ("sks" is one), so load the
    # same file under a new name: "a <new> square" then reads exactly as "a sks square" did in training
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "skszq.safetensors").write_bytes((tmp_path / "sks.safetensors").read_bytes())
    fresh = tiny("sd1")
    assert load_embeddings(fresh, tmp_path / "emb") == ["skszq"]
    with torch.no_grad():
        trained, _ = _encode(comps.text_encoder, comps.tokenizer, ["a sks square"], "last")  # the hook is on
        loaded, _ = _encode(fresh.text_encoder, fresh.tokenizer, ["a skszq square"], "last")
    assert torch.allclose(trained, loaded, atol=1e-6)
    # diffusers' own loader reads the same file (it too refuses vocabulary words, so the token is renamed)
    from adapter_fixtures import diffusers_pipe

    pipe = diffusers_pipe(tiny("sd1"))
    pipe.load_textual_inversion(str(tmp_path / "sks.safetensors"), token="skszq")
    theirs, _ = pipe.encode_prompt("a skszq square", "cpu", 1, False)
    assert torch.allclose(trained, theirs, atol=1e-5)


def test_identifier_rows_train_in_their_own_group_and_resume(tmp_path):
    from stablekit.train.optim import param_groups
    from stablekit.train.pivotal import PivotalFinetuneStrategy

    s = PivotalFinetuneStrategy(tiny("sd1"), identifier_lr=0.05, instance_prompt="a sks square", class_prompt="a square")
    _, tc = stablekit.train.methods.resolve("dreambooth", instance_prompt="x", lr=1e-4, text_encoder_lr=0)
    groups = param_groups(tc, s.trainable_parameters())
    assert [g["lr"] for g in groups] == [1e-4, 0.05] and groups[1]["params"] == [s.rows["emb_params"].param]
    state = s.state_dict()
    assert "identifier_rows" in state
    other = PivotalFinetuneStrategy(tiny("sd1"), identifier_lr=0.05, instance_prompt="a sks square",
                                    class_prompt="a square")
    with torch.no_grad():
        s.rows["emb_params"].param.add_(1.0)
    other.load_state_dict(s.state_dict())
    assert torch.equal(other.rows["emb_params"].param, s.rows["emb_params"].param)
    # a run stopped and resumed ends where one unbroken run does
    runs = {}
    for name, legs in (("once", [2]), ("resumed", [1, 2])):
        for steps in legs:
            comps = tiny("sd1")
            stablekit.train("dreambooth", components=comps, dataset=TinyImages(n=2), out=tmp_path / name, lr=1e-3,
                            identifier_lr=0.05, checkpoint_every=1, **{**DB, "steps": steps})
        runs[name] = comps.text_encoder.get_input_embeddings().weight[_sks(comps)].clone()
    assert torch.equal(runs["once"], runs["resumed"])


def test_identifier_lr_zero_is_todays_dreambooth(tmp_path):
    from stablekit.train.methods import resolve
    from stablekit.train.optim import ParamGroups, param_groups
    from stablekit.train.run import build

    for lora in (False, True):
        s, tc = resolve("dreambooth", instance_prompt="a sks square", class_prompt="a square", lora=lora,
                        prior_loss_weight=0.0, out=str(tmp_path))
        assert s.identifier_lr == 0.0
        strategy, _ = build("dreambooth", s, tc, tiny("sd1"), TinyImages(n=2))
        assert type(strategy) is (LoraStrategy if lora else FinetuneStrategy) and strategy.caption_hook is None
    main, text = [torch.nn.Parameter(torch.zeros(1))], [torch.nn.Parameter(torch.zeros(1))]
    _, tc = resolve("dreambooth", instance_prompt="x", lr=1e-4, text_encoder_lr=1e-5)
    assert [(g["params"], g["lr"]) for g in param_groups(tc, ParamGroups(main, text))] == [(main, 1e-4), (text, 1e-5)]
    _, tc = resolve("dreambooth", instance_prompt="x", lr=1e-4, text_encoder_lr=0)
    assert [(g["params"], g["lr"]) for g in param_groups(tc, ParamGroups(main, text))] == [(main + text, 1e-4)]
    comps = tiny("sd1")
    before = _snapshot(comps)[EMB]
    stablekit.train("dreambooth", components=comps, dataset=TinyImages(n=2), out=tmp_path, lr=1e-3,
                    train_text_encoder=False, **DB)
    assert torch.equal(_snapshot(comps)[EMB], before)


@pytest.mark.parametrize("class_prompt, match", [("a square", "no identifier word"),
                                                 ("", "needs --class-prompt")])
def test_identifier_lr_needs_an_identifier(tmp_path, class_prompt, match):
    with pytest.raises(StablekitError, match=match) as err:
        stablekit.train("dreambooth", components=tiny("sd1"), dataset=TinyImages(n=2), out=tmp_path,
                        instance_prompt="a square", class_prompt=class_prompt, identifier_lr=5e-3, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(StablekitError, match="identifier_lr >= 0"):
        stablekit.train.methods.resolve("dreambooth", instance_prompt="a sks square", identifier_lr=-1.0)
