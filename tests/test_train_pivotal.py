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
    from stablekit.adapters.embeddings import load_embeddings, overrides_word
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
    # "sks" is a word of CLIP's vocabulary: the embedding overrides it (A1111's rule), so "a sks square"
    # reads exactly as in training
    fresh = tiny("sd1")
    assert load_embeddings(fresh, [tmp_path / "sks.safetensors"]) == ["sks"] and overrides_word(fresh, "sks")
    with torch.no_grad():
        trained, _ = _encode(comps.text_encoder, comps.tokenizer, ["a sks square"], "last")  # the hook is on
    from stablekit.prompts.encode import PromptEncoder

    assert torch.allclose(trained, PromptEncoder(fresh).encode("a sks square").hidden_states, atol=1e-6)
    # diffusers' own loader reads the same file (it refuses vocabulary words, so the token is renamed)
    from adapter_fixtures import diffusers_pipe

    pipe = diffusers_pipe(tiny("sd1"))
    pipe.load_textual_inversion(str(tmp_path / "sks.safetensors"), token="skszq")
    theirs, _ = pipe.encode_prompt("a skszq square", "cpu", 1, False)
    assert torch.allclose(trained, theirs, atol=1e-5)


def test_dreambooth_lora_and_its_embedding_give_the_trained_prompt_states_in_generation(tmp_path, capsys):
    """The A1111 way: dbl.safetensors in the LoRA folder, sks.safetensors in the embeddings folder,
    "<lora:dbl:1> a sks square"; the text encoder (its LoRA trained too) reads the prompt as in training."""
    import shutil

    from stablekit.generate.networks import ExtraNetworks, use_networks
    from stablekit.generate.pipeline import Pipeline
    from stablekit.metadata import parse_parameters
    from stablekit.prompts.parse import ParsedPrompt

    comps = tiny("sd1")
    stablekit.train("dreambooth", components=comps, dataset=TinyImages(n=2), out=tmp_path / "out", name="dbl",
                    lora=True, train_text_encoder=True, text_encoder_lr=1e-2, lr=1e-3, identifier_lr=0.05, **DB)
    with torch.no_grad():  # the hook and the text encoder's LoRA are still on the trained model
        trained, _ = _encode(comps.text_encoder, comps.tokenizer, ["a sks square"], "last")
    (tmp_path / "Lora").mkdir()
    (tmp_path / "embeddings").mkdir()
    shutil.copy(tmp_path / "out" / "dbl.safetensors", tmp_path / "Lora")
    shutil.copy(tmp_path / "out" / "sks.safetensors", tmp_path / "embeddings")
    prompt = ParsedPrompt.parse("<lora:dbl:1> a sks square")
    states = {}
    for label, folders in (("both", dict(embeddings_dir=tmp_path / "embeddings")), ("lora only", {})):
        pipe = Pipeline(tiny("sd1"), progress=False)
        request = ExtraNetworks.take(dict(lora_dir=tmp_path / "Lora", **folders))
        with use_networks(pipe.prompts, request, prompt, ParsedPrompt.parse("")) as used:
            states[label] = pipe.prompts.encode(prompt).hidden_states
        assert list(used.embeddings) == (["sks"] if folders else [])
    assert torch.allclose(states["both"], trained, atol=1e-5)
    assert not torch.allclose(states["lora only"], trained, atol=1e-3)  # without it the LoRA sees the old row
    image = pipe.generate("<lora:dbl:1> a sks square", lora_dir=tmp_path / "Lora",
                          embeddings_dir=tmp_path / "embeddings", steps=1, seed=1)[0]
    fields = parse_parameters(image.info["parameters"])
    assert fields["TI hashes"].startswith("sks: ") and fields["Lora hashes"].startswith("dbl: ")
    assert "overrides the word 'sks' in prompts" in capsys.readouterr().err


def test_keep_best_keeps_the_best_steps_identifier_embedding(tmp_path, monkeypatch):
    """--keep-best with --lora: dbl-best.safetensors travels with sks-best.safetensors, the rows of that
    step, and the final sks.safetensors is the last step's; each file names its partner."""
    from stablekit.formats.embeddings_a1111 import load_embedding
    from stablekit.train.loop import TrainHooks

    losses = iter([0.1, 0.5, 0.9])  # lower is better: step 1 is the best
    monkeypatch.setattr("stablekit.evaluate.runner.evaluate_components",
                        lambda evaluation, components, step: {"loss": next(losses), "step": step})
    monkeypatch.setattr("stablekit.evaluate.in_training.build_evaluation", lambda *a, **k: None)
    rows = {}
    hooks = TrainHooks(on_step=lambda step, row, strat: rows.setdefault(step, strat.rows["emb_params"].param.detach().clone()))
    stablekit.train("dreambooth", components=tiny("sd1"), dataset=TinyImages(n=2), out=tmp_path, name="dbl",
                    lora=True, train_text_encoder=False, lr=1e-3, identifier_lr=0.05, eval_every=1,
                    eval_metrics="loss", keep_best="loss", hooks=hooks, **DB)
    best, final = load_embedding(tmp_path / "sks-best.safetensors"), load_embedding(tmp_path / "sks.safetensors")
    assert torch.equal(best["vectors"], rows[1]) and torch.equal(final["vectors"], rows[3])
    assert not torch.equal(rows[1], rows[3])
    assert best["metadata"]["stablekit_load_with"] == "dbl-best.safetensors"
    assert final["metadata"]["stablekit_load_with"] == "dbl.safetensors"
    with safe_open(tmp_path / "dbl-best.safetensors", "pt") as f:
        assert f.metadata()["stablekit_load_with_embeddings"] == "sks-best.safetensors"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["dbl-best.safetensors", "dbl.safetensors",
                                                                       "sks-best.safetensors", "sks.safetensors"]


def test_the_best_embedding_is_used_as_word_best_in_the_trained_prompt(tmp_path):
    """sks-best.safetensors beside sks.safetensors: "a sks-best square" reads as "a sks square" with the
    best rows (the whole name is replaced by the embedding's vector, in A1111 and here)."""
    from stablekit.adapters.embeddings import load_embeddings
    from stablekit.formats.embeddings_a1111 import save_a1111_embedding
    from stablekit.prompts.encode import PromptEncoder

    best, final = torch.randn(1, 32, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 32)
    save_a1111_embedding(tmp_path / "sks-best.safetensors", "sks-best", best)
    save_a1111_embedding(tmp_path / "sks.safetensors", "sks", final)
    both, alone = tiny("sd1"), tiny("sd1")
    load_embeddings(both, tmp_path)
    (tmp_path / "one").mkdir()
    save_a1111_embedding(tmp_path / "one" / "sks.safetensors", "sks", best)
    load_embeddings(alone, tmp_path / "one")
    assert torch.equal(PromptEncoder(both).encode("a sks-best square").hidden_states,
                       PromptEncoder(alone).encode("a sks square").hidden_states)


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

    # identifier_lr 0 given: a tiny model's recipe would turn pivotal tuning on with a class prompt
    # (TINY_DREAMBOOTH_PIVOTAL, tests/test_teach_speedups.py)
    for lora in (False, True):
        s, tc = resolve("dreambooth", instance_prompt="a sks square", class_prompt="a square", lora=lora,
                        prior_loss_weight=0.0, identifier_lr=0.0, out=str(tmp_path))
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
                    train_text_encoder=False, identifier_lr=0.0, **DB)
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
