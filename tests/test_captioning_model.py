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
