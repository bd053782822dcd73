"""LoRA and embeddings in generation (Python API): `<lora:NAME:SCALE>` tags resolved from a folder and
`loras=` give the same image, scale 0 is the base image exactly, the model is bit-identical after every
call (also a failed one), A1111's `Lora hashes` / `TI hashes` fields, and embeddings used by name change
the conditioning exactly as the adapters' own API says."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from adapter_fixtures import random_peft_lora
from fixtures import tiny_components

from stablekit.adapters import expand_embeddings
from stablekit.errors import StablekitError
from stablekit.formats.embeddings_a1111 import save_a1111_embedding
from stablekit.formats.lora_keys import addnet_hash
from stablekit.formats.lora_kohya import save_kohya_lora
from stablekit.generate.pipeline import Pipeline
from stablekit.metadata import parse_parameters

PROMPT = "a photo of a cat"
SETTINGS = dict(steps=3, seed=1, sampler="Euler", output="np")


@pytest.fixture
def pipe():
    return Pipeline(tiny_components("sd1"), progress=False)


@pytest.fixture
def lora_dir(tmp_path, pipe):
    """A LoRA folder with a kohya LoRA (UNet and text encoder, alpha 4 rank 4) in a subfolder, as users sort them."""
    folder = tmp_path / "Lora"
    (folder / "styles").mkdir(parents=True)
    unet, text = random_peft_lora(pipe.components, rank=4, seed=3)
    save_kohya_lora(folder / "styles" / "style.safetensors", unet, text, alpha=4.0, rank=4, arch="sd1")
    return folder


def _state(c) -> dict:
    return {f"{name}.{k}": v.clone() for name, m in c.modules().items() for k, v in m.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tag_and_loras_give_the_same_image_and_the_model_is_restored(pipe, lora_dir):
    path = lora_dir / "styles" / "style.safetensors"
    before = _state(pipe.components)
    base = pipe.generate(PROMPT, **SETTINGS)[0]
    by_tag = pipe.generate(f"<lora:style:0.8>{PROMPT}", lora_dir=lora_dir, **SETTINGS)[0]
    assert _same_state(before, _state(pipe.components))
    by_path = pipe.generate(PROMPT, loras=[(path, 0.8)], **SETTINGS)[0]
    by_string = pipe.generate(PROMPT, loras=[f"{path}:0.8"], **SETTINGS)[0]
    lyco = pipe.generate(f"<lyco:style:0.8>{PROMPT}", lora_dir=str(lora_dir), **SETTINGS)[0]
    assert np.array_equal(by_tag, by_path) and np.array_equal(by_tag, by_string) and np.array_equal(by_tag, lyco)
    assert np.abs(by_tag - base).max() > 0.05  # the LoRA really changes the image
    assert np.array_equal(pipe.generate(f"<lora:style:0>{PROMPT}", lora_dir=lora_dir, **SETTINGS)[0], base)
    assert np.array_equal(pipe.generate(PROMPT, loras=[(path, 0.0)], **SETTINGS)[0], base)
    assert _same_state(before, _state(pipe.components))
    # the prompt cache does not hand the LoRA's text encoding to a later call without it
    assert np.array_equal(pipe.generate(PROMPT, **SETTINGS)[0], base)


def test_model_restored_when_generation_fails(pipe, lora_dir):
    before = _state(pipe.components)

    def stop(info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.generate(f"{PROMPT} <lora:style:1>", lora_dir=lora_dir, callback=stop, **SETTINGS)
    assert _same_state(before, _state(pipe.components))


def test_lora_hashes_and_record(pipe, lora_dir):
    path = lora_dir / "styles" / "style.safetensors"
    image = pipe.generate(f"{PROMPT} <lora:style:0.5>", lora_dir=lora_dir, loras=[(path, 0.25)], steps=2, seed=1)[0]
    short = addnet_hash(path)[:12]
    # A1111: "Lora hashes" lists each network as "name: shorthash", JSON-quoted (it holds ":" and ",")
    assert f'Lora hashes: "style: {short}", Version: ' in image.info["parameters"]
    assert parse_parameters(image.info["parameters"])["Lora hashes"] == f"style: {short}"
    import json

    record = json.loads(image.info["stablekit"])
    assert record["loras"] == [
        {"name": "style", "path": str(path.resolve()), "scale": 0.5, "hash": short, "tag": True},
        {"name": "style", "path": str(path.resolve()), "scale": 0.25, "hash": short, "tag": False}]
    plain = pipe.generate(PROMPT, steps=2, seed=1)[0]
    assert "Lora hashes" not in plain.info["parameters"] and "loras" not in json.loads(plain.info["stablekit"])


def test_sshs_model_hash_metadata_is_the_lora_hash(pipe, tmp_path):
    # A1111 prefers the hash kohya's scripts store in the file's metadata (network.py NetworkOnDisk)
    unet, text = random_peft_lora(pipe.components, rank=2, seed=1)
    save_kohya_lora(tmp_path / "m.safetensors", unet, text, alpha=2.0, rank=2, arch="sd1",
                    metadata={"sshs_model_hash": "0123456789abcdef"})
    image = pipe.generate(PROMPT, loras=[(tmp_path / "m.safetensors", 1.0)], steps=1, seed=1)[0]
    assert 'Lora hashes: "m: 0123456789ab"' in image.info["parameters"]


def test_errors_are_one_line(pipe, lora_dir, tmp_path, capsys):
    cases = [
        (dict(prompt=f"{PROMPT} <lora:nope:1>", lora_dir=lora_dir), f"no LoRA named 'nope' in {lora_dir} (found: style)"),
        (dict(prompt=f"{PROMPT} <lora:style:1>"), "<lora:style:...> needs a LoRA folder: pass --lora-dir DIR"),
        (dict(prompt=f"{PROMPT} <lora:style:0.5:1>", lora_dir=lora_dir), "one strength to a whole LoRA"),
        (dict(prompt=f"{PROMPT} <lora:style:x>", lora_dir=lora_dir), "the strength in <lora:style:x> must be a number"),
        (dict(prompt=PROMPT, loras=[(tmp_path / "no.safetensors", 1)]), "LoRA file"),
        (dict(prompt=PROMPT, loras="style.safetensors"), "loras must be a list"),
        (dict(prompt=PROMPT, lora_dir=tmp_path / "none"), "does not exist"),
    ]
    before = _state(pipe.components)
    for kwargs, message in cases:
        with pytest.raises(StablekitError) as err:
            pipe.generate(**kwargs, steps=1, seed=1, output="np")
        assert message in str(err.value) and "\n" not in str(err.value)
    assert _same_state(before, _state(pipe.components))
    pipe.generate(PROMPT, negative_prompt="<lora:style:1> ugly", steps=1, seed=1, output="np", lora_dir=lora_dir)
    pipe.generate(f"{PROMPT} <hypernet:h:1>", steps=1, seed=1, output="np")
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and "<lora:style:1> in the negative prompt" in warnings[0]
    assert "not applied: <hypernet:h:1>" in warnings[1]


@pytest.fixture
def embeddings(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    save_a1111_embedding(folder / "shapeemb.pt", "shapeemb", torch.randn(3, 32, generator=gen))
    save_a1111_embedding(folder / "negemb.safetensors", "negemb", torch.randn(1, 32, generator=gen))
    save_a1111_embedding(folder / "cat.pt", "cat", torch.randn(1, 32, generator=gen))  # a CLIP word: overrides it
    save_a1111_embedding(folder / "wide.pt", "wide", torch.randn(1, 64, generator=gen))  # another arch: skipped unused
    return folder


def test_embedding_by_name_changes_the_conditioning_as_the_adapters_api_says(pipe, embeddings):
    prompt = "a photo of shapeemb on a table"
    plain = pipe.generate(prompt, **SETTINGS)[0]
    images = pipe.generate(prompt, negative_prompt="(negemb:1.2)", embeddings_dir=embeddings, steps=3, seed=1,
                           sampler="Euler")
    assert np.abs(np.asarray(images[0]) / 255 - plain).max() > 0.05
    c = pipe.components
    ids = c.tokenizer(expand_embeddings(prompt, c.tokenizer), padding="max_length", max_length=77,
                      truncation=True, return_tensors="pt").input_ids
    assert ids[0, 4:7].tolist() == c.tokenizer.convert_tokens_to_ids(["shapeemb", "shapeemb_1", "shapeemb_2"])
    with torch.no_grad():
        expected = c.text_encoder(input_ids=ids).last_hidden_state
    assert torch.equal(pipe.prompts.encode(prompt).hidden_states, expected)
    # A1111's "TI hashes": every embedding the prompt and the negative prompt used, sha256 of the file
    from stablekit.formats.hashes import sha256_file

    fields = parse_parameters(images[0].info["parameters"])
    assert fields["TI hashes"] == (f"shapeemb: {sha256_file(embeddings / 'shapeemb.pt')[:12]}, "
                                   f"negemb: {sha256_file(embeddings / 'negemb.safetensors')[:12]}")
    # the embeddings stay loaded (as A1111) and are still recorded without embeddings_dir
    again = pipe.generate(prompt, negative_prompt="(negemb:1.2)", steps=3, seed=1, sampler="Euler")
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))
    assert "TI hashes" in again[0].info["parameters"]


def test_an_unusable_embedding_fails_only_when_the_prompt_names_it(pipe, embeddings):
    with pytest.raises(StablekitError, match="made for another architecture"):
        pipe.generate("a wide", embeddings_dir=embeddings, steps=1, seed=1, output="np")


def test_an_embedding_named_after_a_word_overrides_it_as_in_a1111(pipe, embeddings, capsys):
    """cat.pt turns every "cat" into its vector (A1111's find_embedding_at_position), with one note."""
    plain = pipe.prompts.encode("a cat, cats").hidden_states.clone()
    image = pipe.generate("a cat, cats", embeddings_dir=embeddings, steps=1, seed=1)[0]
    notes = [line for line in capsys.readouterr().err.splitlines() if "overrides" in line]
    assert notes == [f"stablekit: note: embedding {embeddings / 'cat.pt'} overrides the word 'cat' in prompts "
                     "(as in A1111); rename the file to keep the word"]
    assert parse_parameters(image.info["parameters"])["TI hashes"].startswith("cat: ")
    c = pipe.components
    hidden = pipe.prompts.encode("a cat, cats").hidden_states
    vector = c.text_encoder.get_input_embeddings().weight[c.tokenizer.convert_tokens_to_ids("cat</embedding>")]
    assert torch.equal(vector, torch.load(embeddings / "cat.pt", weights_only=True)["string_to_param"]["*"][0])
    ids = c.tokenizer(expand_embeddings("a cat, cats", c.tokenizer), padding="max_length", max_length=77,
                      return_tensors="pt").input_ids
    tok = c.tokenizer.convert_tokens_to_ids
    assert ids[0, :6].tolist() == tok(["<|startoftext|>", "a</w>", "cat</embedding>", ",</w>", "cats</w>", "<|endoftext|>"])
    with torch.no_grad():
        assert torch.equal(hidden, c.text_encoder(input_ids=ids).last_hidden_state)
    assert torch.equal(hidden[0, :2], plain[0, :2])  # before "cat" (causal attention): unchanged
    assert not torch.allclose(hidden[0, 2], plain[0, 2], atol=1e-3)
    pipe.generate("a cat", embeddings_dir=embeddings, steps=1, seed=1, output="np")
    assert "overrides" not in capsys.readouterr().err  # noted once, when first loaded
