"""Textual-inversion embeddings: A1111 / SDXL / diffusers files, round trips, and diffusers'
`load_textual_inversion` giving the same prompt embeddings as ours."""
from __future__ import annotations

import pytest
import torch
from adapter_fixtures import diffusers_pipe
from fixtures import tiny_components

from stablekit.adapters import expand_embeddings, load_embeddings
from stablekit.errors import StablekitError
from stablekit.formats.embeddings_a1111 import load_embedding, save_a1111_embedding, save_diffusers_embedding

PROMPT = "a photo of shapeemb on a table"


def _vectors(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _ids(tokenizer, prompt):
    return tokenizer(expand_embeddings(prompt, tokenizer), padding="max_length", max_length=77,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _hidden(encoder, ids, layer=None):
    out = encoder(input_ids=ids, output_hidden_states=layer is not None)
    return out.last_hidden_state if layer is None else out.hidden_states[layer]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a1111_embedding_matches_diffusers_load_textual_inversion(tmp_path, suffix):
    ours, theirs = tiny_components("sd1"), tiny_components("sd1")
    vectors = _vectors(3, 32)
    path = tmp_path / f"shapeemb{suffix}"
    save_a1111_embedding(path, "shapeemb", vectors, {"step": 500, "sd_checkpoint": "abc123"})
    rows_before = ours.text_encoder.get_input_embeddings().weight.detach().clone()
    assert load_embeddings(ours, tmp_path) == ["shapeemb"]
    rows = ours.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[: len(rows_before)], rows_before)  # every existing row bit-identical
    assert torch.equal(rows[-3:], vectors)
    assert expand_embeddings(PROMPT, ours.tokenizer) == "a photo of shapeemb shapeemb_1 shapeemb_2 on a table"

    pipe = diffusers_pipe(theirs)
    pipe.load_textual_inversion(str(path), token="shapeemb")
    theirs_embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    ours_embeds = _hidden(ours.text_encoder, _ids(ours.tokenizer, PROMPT))
    assert torch.allclose(theirs_embeds, ours_embeds, atol=1e-5, rtol=0)
    plain, _ = pipe.encode_prompt("a photo of a cat on a table", "cpu", 1, False)
    assert not torch.allclose(plain, ours_embeds, atol=1e-3)


def test_sdxl_clip_l_clip_g_match_diffusers(tmp_path):
    ours, theirs = tiny_components("sdxl"), tiny_components("sdxl")
    vectors = {"clip_l": _vectors(2, 32, 1), "clip_g": _vectors(2, 64, 2)}
    save_a1111_embedding(tmp_path / "shapeemb.safetensors", "shapeemb", vectors)
    load_embeddings(ours, [tmp_path / "shapeemb.safetensors"])
    assert torch.equal(ours.text_encoder_2.get_input_embeddings().weight[-2:], vectors["clip_g"])

    pipe = diffusers_pipe(theirs)
    pipe.load_textual_inversion(vectors["clip_l"], token="shapeemb", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(vectors["clip_g"], token="shapeemb", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    theirs_embeds = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    ours_embeds = torch.cat([_hidden(ours.text_encoder, _ids(ours.tokenizer, PROMPT), -2),
                             _hidden(ours.text_encoder_2, _ids(ours.tokenizer_2, PROMPT), -2)], dim=-1)
    assert torch.allclose(theirs_embeds, ours_embeds, atol=1e-5, rtol=0)


def test_embedding_round_trips_bit_exact(tmp_path):
    v, xl = _vectors(2, 32).half(), {"clip_l": _vectors(1, 32), "clip_g": _vectors(1, 64)}
    save_a1111_embedding(tmp_path / "a.pt", "a", v, {"step": 7})
    save_a1111_embedding(tmp_path / "b.safetensors", "b", v)
    save_a1111_embedding(tmp_path / "c.safetensors", "c", xl)
    save_diffusers_embedding(tmp_path / "d.safetensors", "<d>", v)
    for name, fmt in [("a.pt", "a1111-pt"), ("b.safetensors", "a1111-safetensors"), ("c.safetensors", "sdxl"),
                      ("d.safetensors", "diffusers")]:
        emb = load_embedding(tmp_path / name)
        assert emb["format"] == fmt and emb["name"] == name.split(".")[0]
        again = tmp_path / ("again" + name[1:])
        if fmt == "diffusers":
            save_diffusers_embedding(again, emb["metadata"]["token"], emb["vectors"])
        else:
            save_a1111_embedding(again, emb["name"], emb["vectors"], emb["metadata"])
        back = load_embedding(again)["vectors"]
        if fmt == "sdxl":
            assert all(torch.equal(back[k], xl[k]) for k in xl)
        else:
            assert torch.equal(back, v) and back.dtype == torch.float16
    assert load_embedding(tmp_path / "a.pt")["metadata"]["step"] == 7


def test_embedding_errors(tmp_path):
    c = tiny_components("sd1")
    save_a1111_embedding(tmp_path / "wide.pt", "wide", _vectors(1, 768))
    with pytest.raises(StablekitError, match="made for another architecture"):
        load_embeddings(c, [tmp_path / "wide.pt"])
    save_a1111_embedding(tmp_path / "xl.safetensors", "xl", {"clip_l": _vectors(1, 32), "clip_g": _vectors(1, 64)})
    with pytest.raises(StablekitError, match="is for SDXL"):
        load_embeddings(c, [tmp_path / "xl.safetensors"])
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(StablekitError, match="cannot read embedding"):
        load_embedding(tmp_path / "evil.pt")
    # reloading the same name replaces only its own rows
    save_a1111_embedding(tmp_path / "zqxemb.pt", "zqxemb", _vectors(1, 32, 5))
    load_embeddings(c, [tmp_path / "zqxemb.pt"])
    size = len(c.tokenizer)
    save_a1111_embedding(tmp_path / "zqxemb.pt", "zqxemb", _vectors(1, 32, 6))
    load_embeddings(c, [tmp_path / "zqxemb.pt"])
    assert len(c.tokenizer) == size and torch.equal(c.text_encoder.get_input_embeddings().weight[-1], _vectors(1, 32, 6)[0])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_vocabulary_word_is_overridden_as_in_a1111(tmp_path, arch):
    """An embedding named after a CLIP word ("cat"; "octagon" is only "octagon</w>") takes the word's
    place wherever the tokenizer cuts it out, as A1111 matches embedding names; it reads exactly as the
    same vectors under a new name, and every existing row stays as it was."""
    from stablekit.prompts.encode import PromptEncoder

    def vectors(n, seed):
        if arch == "sdxl":
            return {"clip_l": _vectors(n, 32, seed), "clip_g": _vectors(n, 64, seed + 1)}
        return _vectors(n, 32, seed)

    (tmp_path / "words").mkdir()
    (tmp_path / "renamed").mkdir()
    for name, new, n, seed in (("cat", "zqcat", 1, 1), ("octagon", "zqoct", 2, 3)):
        save_a1111_embedding(tmp_path / "words" / f"{name}.safetensors", name, vectors(n, seed))
        save_a1111_embedding(tmp_path / "renamed" / f"{new}.safetensors", new, vectors(n, seed))
    ours, renamed, base = tiny_components(arch), tiny_components(arch), tiny_components(arch)
    rows_before = ours.text_encoder.get_input_embeddings().weight.detach().clone()
    assert load_embeddings(ours, tmp_path / "words") == ["cat", "octagon"]
    assert load_embeddings(renamed, tmp_path / "renamed") == ["zqcat", "zqoct"]
    rows = ours.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[: len(rows_before)], rows_before)
    added = ours.tokenizer.get_added_vocab()
    assert "cat</embedding>" in added and "cat" not in added and "octagon</embedding>_1" in added
    mine, theirs, plain = PromptEncoder(ours), PromptEncoder(renamed), PromptEncoder(base)
    for prompt, same in (("a CAT, an octagon's (cat:1.2) corner", "a zqcat, an zqoct's (zqcat:1.2) corner"),
                         ("a concatenated octagons tasks", "a concatenated octagons tasks")):
        assert torch.equal(mine.encode(prompt).hidden_states, theirs.encode(same).hidden_states)
    assert torch.equal(mine.encode("a cats").hidden_states, plain.encode("a cats").hidden_states)
    assert not torch.allclose(mine.encode("a cat").hidden_states, plain.encode("a cat").hidden_states, atol=1e-3)
    # text for a tokenizer: expand_embeddings writes the private tokens, so the ids are the encoder's
    prompt = "a Cat and an octagon, tasks"
    text = expand_embeddings(prompt, ours.tokenizer)
    assert text == "a cat</embedding> and an octagon</embedding> octagon</embedding>_1, tasks"
    chunk = mine.chunks(prompt)[0].tokens
    assert _ids(ours.tokenizer, prompt)[0, 1:len(chunk) + 1].tolist() == chunk


def test_a_spelled_out_embedding_is_not_expanded_twice():
    """The prompt encoder expands NAME into its vectors; text already spelled out by expand_embeddings
    (the in-training evaluation's prompts, benchmarks/teach_targets.py) must give the same vectors once."""
    from stablekit.adapters.embeddings import add_embedding
    from stablekit.prompts.encode import PromptEncoder

    c = tiny_components("sd1")
    add_embedding(c, "shapeemb", _vectors(3, 32))
    encoder, spelled = PromptEncoder(c), expand_embeddings(PROMPT, c.tokenizer)
    assert spelled == "a photo of shapeemb shapeemb_1 shapeemb_2 on a table"
    assert encoder.chunks(spelled)[0].tokens == encoder.chunks(PROMPT)[0].tokens
    assert len(encoder.chunks(PROMPT)[0].tokens) == 9
    assert torch.equal(encoder.encode(spelled).hidden_states, encoder.encode(PROMPT).hidden_states)
