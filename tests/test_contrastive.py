"""Contrastive text-encoder pretraining with hard-negative captions."""
from __future__ import annotations

import torch
from fixtures import one_thread

from stablekit.shapes.architecture import build_text_encoder
from stablekit.shapes.captions import hard_negatives, make_batch, parse_caption
from stablekit.train.strategies.contrastive import ContrastiveTextStrategy, SmallImageEncoder


def test_hard_negatives_change_exactly_one_named_attribute():
    _, captions, _ = make_batch(300, seed=5)
    for text in captions:
        named = parse_caption(text)
        negs = hard_negatives(text, k=6)
        assert len(negs) == 6
        # every other base shape comes first: the attribute plain contrastive training ignores
        assert {parse_caption(n)["shape"] for n in negs[:3]} == {"circle", "square", "triangle", "star"} - {named["shape"]}
        for n in negs:
            other = parse_caption(n)
            assert other.keys() == named.keys(), (text, n)
            changed = {a for a in named if named[a] != other[a]}
            swapped = changed == {"color", "background"} and other["color"] == named["background"]
            assert len(changed) == 1 or swapped, (text, n)


def test_hard_negatives_are_deterministic_and_grammatical():
    assert hard_negatives("an orange star", seed=1) == hard_negatives("an orange star", seed=1)
    for n in hard_negatives("an orange star on a red background", k=6):
        assert " a o" not in n and " an r" not in n and not n.startswith("an p")


def test_contrastive_loss_uses_hard_negatives():
    from stablekit.formats.tokenizer import clip_tokenizer

    with one_thread():
        torch.manual_seed(0)
        images, captions, _ = make_batch(8, seed=3)
        tok = clip_tokenizer()
        negs = [n for c in captions for n in hard_negatives(c, k=3)]
        ids = tok(captions + negs, padding="longest", return_tensors="pt").input_ids
        strategy = ContrastiveTextStrategy(build_text_encoder(), SmallImageEncoder(16, width=8), embed_dim=16)
        batch = {"pixels": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
                 "input_ids": ids[:8], "caption_ids": torch.arange(8)}
        plain, stats = strategy.loss(batch, torch.Generator())
        assert "hard_acc" not in stats
        batch["negative_input_ids"] = ids[8:].reshape(8, 3, -1)
        hard, stats = strategy.loss(batch, torch.Generator())
        # extra columns in the image->text softmax can only raise that half of the loss
        assert hard > plain and 0.0 <= float(stats["hard_acc"]) <= 1.0
        hard.backward()
        assert strategy.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
