"""One spelling of an embedding's tokens (prompts/embedding_tokens.py) for training and inference.

Session 9 found an 8-vector embedding read as 15 tokens at evaluation (NAME NAME_1..7 written out,
then expanded again). These tests hold every path that turns an embedding name into ids to the
same spelling: textual-inversion training captions (seen by the text encoder during a real run),
the prompt encoder, and adapters.expand_embeddings, for SD 1.x, SD 2.x-v and SDXL tiny models.
"""
from __future__ import annotations

import pytest
import torch
from train_fixtures import TinyImages, tiny
from train_fixtures import snapshot as _snapshot

import stablekit.train
from stablekit.adapters import expand_embeddings
from stablekit.prompts.embedding_tokens import caption_ids, embedding_token_spelling
from stablekit.prompts.encode import PromptEncoder
from stablekit.train.strategies.textual_inversion import TextualInversionStrategy, placeholder_tokens

VECTORS = 8
TOKEN = "<zq>"
SPELLED = " ".join(placeholder_tokens(TOKEN, VECTORS))
CAPTIONS = ["a red <zq> on a blue background", "a <zq>", f"a {SPELLED} at the top", "a green thing"]
FAST = dict(steps=2, batch_size=4, sample_every=0, progress=False, tensorboard=False)


def _tokenizers(c) -> list:
    return [c.tokenizer] + ([c.tokenizer_2] if c.is_sdxl else [])


def _content(row: list[int], tokenizer) -> list[int]:
    """The ids between BOS and the first EOS of a framed row."""
    return row[1:row.index(tokenizer.eos_token_id)]


@pytest.mark.parametrize("arch", ["sd1", "sd2-v", "sdxl"])
def test_caption_ids_are_the_tokenizers_own_for_text_without_embeddings(arch):
    c = tiny(arch)
    texts = ["a red square on a blue background", "", "word " * 100]  # the last is truncated to 77
    for tok in _tokenizers(c):
        want = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids
        assert torch.equal(caption_ids(texts, tok), want)


@pytest.mark.parametrize("arch", ["sd1", "sd2-v", "sdxl"])
def test_training_captions_and_prompts_read_an_8_vector_embedding_as_the_same_8_tokens(tmp_path, arch):
    comps = tiny(arch)
    before = _snapshot(comps)
    seen = {}  # encoder index -> rows of ids the text encoder received during training

    def recorder(i):
        return lambda module, inputs: seen.setdefault(i, []).extend(inputs[0].tolist())

    encoders = [comps.text_encoder] + ([comps.text_encoder_2] if arch == "sdxl" else [])
    hooks = [e.get_input_embeddings().register_forward_pre_hook(recorder(i)) for i, e in enumerate(encoders)]
    try:
        result = stablekit.train("textual-inversion", components=comps, dataset=TinyImages(captions=CAPTIONS),
                                 out=tmp_path, token=TOKEN, init_word="square", vectors=VECTORS, lr=0.05, **FAST)
    finally:
        for h in hooks:
            h.remove()
    assert result["artefact"]

    encoder = PromptEncoder(comps)
    at_inference = {caption: encoder.chunks(caption)[0].tokens for caption in CAPTIONS}
    token_ids = comps.tokenizer.convert_tokens_to_ids(placeholder_tokens(TOKEN, VECTORS))
    # a caption naming the token, written with the name or spelled out, is the name + its 7 others once
    for caption, ids in at_inference.items():
        if caption != "a green thing":
            assert [t for t in ids if t in token_ids] == token_ids
    assert at_inference["a <zq>"] == comps.tokenizer("a", add_special_tokens=False).input_ids + token_ids
    assert at_inference[f"a {SPELLED} at the top"] == encoder.chunks("a <zq> at the top")[0].tokens
    for i, tok in enumerate(_tokenizers(comps)):
        rows = [_content(r, tok) for r in seen[i]]
        # what training fed the encoder is what the prompt encoder reads for the same caption
        # ("a green thing" gets the token in front, as it always did)
        want = [at_inference[c] for c in CAPTIONS[:3]] + [encoder.chunks("<zq> a green thing")[0].tokens]
        assert {tuple(r) for r in rows} == {tuple(w) for w in want}
        assert all(sum(t in token_ids for t in r) == VECTORS for r in rows)  # 8, not 15

    after = _snapshot(comps)
    changed = {k for k in before if not torch.equal(before[k], after.get(k, before[k]))}
    emb_keys = {k for k in before if k.endswith("token_embedding.weight")}
    assert changed == emb_keys
    for key in emb_keys:  # the grown matrices keep every old row bit-identical
        n_old = before[key].shape[0]
        assert after[key].shape[0] == n_old + VECTORS
        assert torch.equal(after[key][:n_old], before[key])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_expand_embeddings_spells_once_and_leaves_spelled_text_alone(arch):
    s = TextualInversionStrategy(tiny(arch), token=TOKEN, init_word="square", vectors=VECTORS)
    c, encoder = s.components, PromptEncoder(s.components)
    plain = "a red <zq>, on blue"
    spelled = expand_embeddings(plain, c.tokenizer)
    assert spelled == f"a red {SPELLED}, on blue"
    assert expand_embeddings(spelled, c.tokenizer) == spelled
    for tok in _tokenizers(c):
        ids = tok(spelled, add_special_tokens=False).input_ids
        assert ids == encoder.chunks(plain)[0].tokens == encoder.chunks(spelled)[0].tokens
    assert embedding_token_spelling(plain, c.tokenizer) == placeholder_tokens(TOKEN, VECTORS)
    # the old doubled spelling stays expressible (benchmarks/teach_targets.py --double-extra) and is 15 tokens
    doubled = " ".join([SPELLED, *placeholder_tokens(TOKEN, VECTORS)[1:]])
    assert len(embedding_token_spelling(f"a red {doubled}", c.tokenizer)) == 2 * VECTORS - 1


def test_the_caption_hook_only_puts_the_name_in_front():
    s = TextualInversionStrategy(tiny("sd1"), token=TOKEN, init_word="square", vectors=3)
    assert s.caption_hook("a red <zq>") == "a red <zq>"
    assert s.caption_hook("a circle") == "<zq> a circle"
    ids = caption_ids(["a red <zq>"], s.components.tokenizer)[0].tolist()
    assert ids[3:6] == s.parts["emb_params"].ids and ids[6] == s.components.tokenizer.eos_token_id
