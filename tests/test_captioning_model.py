"""Captions from a local image-captioning model: a tiny randomly initialised BLIP saved to a temp
folder (the real BLIP / BLIP-2 weights are gigabytes and would come from a hub)."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from stablekit.cli import main

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "blue", "square",
         "circle", "on", "background", "green", "small", "[DEC]"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from transformers import (
        BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=0, sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _byte_level_vocab() -> list[str]:
    """GPT-2's byte -> printable-character table: a BPE vocabulary with no merges."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    """BLIP-2 (ViT + Q-Former + OPT) the same way: random weights, a byte-level tokenizer."""
    torch = pytest.importorskip("torch")
    import json

    from transformers import (
        Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, GPT2Tokenizer, OPTConfig,
    )

    folder = tmp_path_factory.mktemp("tiny-blip2")
    vocab = {c: i for i, c in enumerate(_byte_level_vocab())}
    for special in ("</s>", "<pad>", "<image>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="</s>",
                              eos_token="</s>", pad_token="<pad>", unk_token="</s>")
    tokenizer.image_token = "<image>"
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = Blip2Config(
        vision_config=dict(small, image_size=32, patch_size=8),
        qformer_config=dict(small, vocab_size=50, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=OPTConfig(vocab_size=len(vocab), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                              bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"],
                              pad_token_id=vocab["<pad>"]).to_dict(),
        num_query_tokens=4, image_token_index=vocab["<image>"])
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer,
                   num_query_tokens=4).save_pretrained(folder)
    return folder


def _images(folder, n):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (48, 40), ((60 * i) % 256, 30 * i, 200 - 40 * i)).save(folder / f"{i}.png")


def test_model_captioner_batched_and_deterministic(tiny_blip, tmp_path):
    from stablekit.data.caption_model import ModelCaptioner

    _images(tmp_path / "imgs", 3)
    captioner = ModelCaptioner(tiny_blip, max_new_tokens=6)
    paths = sorted((tmp_path / "imgs").glob("*.png"))
    batched = captioner(paths)
    one_by_one = [captioner([p])[0] for p in paths]
    assert batched == one_by_one
    assert all(isinstance(t, str) and t and set(t.split()) <= set(WORDS) for t in batched)


def test_cli_model_captions_resume_with_identifier(tiny_blip, tmp_path, capsys):
    _images(tmp_path / "imgs", 5)
    args = ["data", "captions", str(tmp_path / "imgs"), "--from", "model", "--model", str(tiny_blip),
            "--batch-size", "2", "--max-new-tokens", "6", "--token", "sks"]
    assert main(args) == 0
    texts = {p.name: p.read_text() for p in (tmp_path / "imgs").glob("*.txt")}
    assert len(texts) == 5 and all(t.startswith("sks, ") for t in texts.values())
    os.remove(tmp_path / "imgs" / "3.txt")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "already captioned  4" in out and "written            1" in out
    assert (tmp_path / "imgs" / "3.txt").read_text() == texts["3.txt"]


def test_missing_model_folder_is_one_clear_error(tmp_path, capsys):
    _images(tmp_path / "imgs", 1)
    code = main(["data", "captions", str(tmp_path / "imgs"), "--from", "model", "--model", str(tmp_path / "none")])
    assert code == 2 and "config.json missing" in capsys.readouterr().err


def test_blip2_folder_loads_and_captions(tiny_blip2, tmp_path):
    from stablekit.data.caption_model import ModelCaptioner

    _images(tmp_path / "imgs", 3)
    captioner = ModelCaptioner(tiny_blip2, max_new_tokens=5)
    assert type(captioner.model).__name__ == "Blip2ForConditionalGeneration"
    paths = sorted((tmp_path / "imgs").glob("*.png"))
    batched = captioner(paths)
    assert len(batched) == 3 and batched == [captioner([p])[0] for p in paths]
    assert all(t is None or (isinstance(t, str) and "<image>" not in t) for t in batched)
