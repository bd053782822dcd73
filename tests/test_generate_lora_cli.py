"""The generate CLI's LoRA / embedding flags end to end on a tiny SD1 file: a kohya LoRA by tag, by --lora
and from Python gives one image; --from-png applies LoRAs and embeddings again or refuses in one line;
and stablekit.load's argument errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adapter_fixtures import random_peft_lora
from fixtures import one_thread, tiny_components
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import stablekit
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import save_model
from stablekit.formats.embeddings_a1111 import save_a1111_embedding
from stablekit.formats.lora_keys import addnet_hash
from stablekit.formats.lora_kohya import save_kohya_lora
from stablekit.metadata import read_png_info

FLAGS = ("--steps", 3, "--seed", 7, "--sampler", "Euler")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SD1 single file, a LoRA folder with a kohya LoRA, and an embeddings folder."""
    root = tmp_path_factory.mktemp("wire")
    with one_thread():
        components = tiny_components("sd1")
        save_model(components, root / "tiny.safetensors", to="single-file")
        (root / "Lora").mkdir()
        unet, text = random_peft_lora(components, rank=4, seed=5)
        save_kohya_lora(root / "Lora" / "outline.safetensors", unet, text, alpha=2.0, rank=4, arch="sd1")
    (root / "embeddings").mkdir()
    save_a1111_embedding(root / "embeddings" / "hexemb.pt", "hexemb",
                         torch.randn(2, 32, generator=torch.Generator().manual_seed(1)))
    return root


def _run(*args) -> int:
    return main(["generate", *map(str, args), "--no-progress"])


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_tag_flag_and_python_give_the_same_image(files, tmp_path):
    model, lora = files / "tiny.safetensors", files / "Lora" / "outline.safetensors"
    assert _run("a red circle <lora:outline:0.7>", "--model", model, "--lora-dir", files / "Lora", *FLAGS,
                "--out", tmp_path / "tag.png") == 0
    assert _run("a red circle", "--model", model, "--lora", f"{lora}:0.7", *FLAGS, "--out", tmp_path / "flag.png") == 0
    pipe = stablekit.load(model, device="cpu", progress=False)
    python = pipe.generate("a red circle", loras=[(lora, 0.7)], steps=3, seed=7, sampler="Euler")[0]
    base = np.asarray(pipe.generate("a red circle", steps=3, seed=7, sampler="Euler")[0])
    zero = pipe.generate("a red circle", loras=[(lora, 0.0)], steps=3, seed=7, sampler="Euler")[0]
    tag, flag = _pixels(tmp_path / "tag.png"), _pixels(tmp_path / "flag.png")
    assert np.array_equal(tag, flag) and np.array_equal(tag, np.asarray(python))
    assert np.abs(tag.astype(int) - base).max() > 10
    assert np.array_equal(np.asarray(zero), base)
    info = read_png_info(tmp_path / "tag.png")
    assert info["fields"]["Lora hashes"] == f"outline: {addnet_hash(lora)[:12]}"


def test_from_png_applies_the_loras_again_or_refuses(files, tmp_path, capsys):
    model, lora = files / "tiny.safetensors", files / "Lora" / "outline.safetensors"
    # a copy the test may delete: given by --lora, it is found again at its recorded path
    (tmp_path / "mine").mkdir()
    copy = tmp_path / "mine" / "outline.safetensors"
    copy.write_bytes(lora.read_bytes())
    assert _run("a blue square <lora:outline:0.5>", "--model", model, "--lora-dir", files / "Lora",
                "--lora", f"{copy}:0.3", *FLAGS, "--out", tmp_path / "first.png") == 0
    record = read_png_info(tmp_path / "first.png")["stablekit"]
    assert [(e["name"], e["scale"], e["tag"]) for e in record["loras"]] == [("outline", 0.5, True), ("outline", 0.3, False)]
    assert _run("--from-png", tmp_path / "first.png", "--out", tmp_path / "again.png") == 0  # recorded paths
    assert np.array_equal(_pixels(tmp_path / "first.png"), _pixels(tmp_path / "again.png"))
    assert "warning" not in capsys.readouterr().err
    copy.unlink()
    assert _run("--from-png", tmp_path / "first.png", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"LoRA file {copy}" in err and "missing" in err
    # found by name in --lora-dir instead
    assert _run("--from-png", tmp_path / "first.png", "--lora-dir", files / "Lora", "--out", tmp_path / "byname.png") == 0
    assert np.array_equal(_pixels(tmp_path / "first.png"), _pixels(tmp_path / "byname.png"))


def test_from_png_of_an_a1111_image_finds_the_tag_in_lora_dir(files, tmp_path, capsys):
    model, lora = files / "tiny.safetensors", files / "Lora" / "outline.safetensors"
    assert _run("a green star <lora:outline:0.6>", "--model", model, "--lora-dir", files / "Lora", *FLAGS,
                "--out", tmp_path / "ours.png") == 0
    text = read_png_info(tmp_path / "ours.png")["parameters"]
    a1111 = tmp_path / "a1111.png"  # the same image as A1111 would write it: the parameters text only
    meta = PngInfo()
    meta.add_text("parameters", text)
    Image.open(tmp_path / "ours.png").save(a1111, pnginfo=meta)
    assert _run("--from-png", a1111, "--model", model, "--out", tmp_path / "no-dir.png") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"LoRA 'outline' (hash {addnet_hash(lora)[:12]})" in err and "--lora-dir" in err
    assert _run("--from-png", a1111, "--model", model, "--lora-dir", files / "Lora", "--out", tmp_path / "again.png") == 0
    assert np.array_equal(_pixels(tmp_path / "ours.png"), _pixels(tmp_path / "again.png"))
    assert "Lora hashes" not in capsys.readouterr().err  # applied, not named as ignored
    # another file under the same name: used, with a one-line warning that the image will differ
    other = tmp_path / "other"
    other.mkdir()
    unet, text_lora = random_peft_lora(tiny_components("sd1"), rank=2, seed=9)
    save_kohya_lora(other / "outline.safetensors", unet, text_lora, alpha=1.0, rank=2, arch="sd1")
    assert _run("--from-png", a1111, "--model", model, "--lora-dir", other, "--out", tmp_path / "differs.png") == 0
    assert "has hash" in capsys.readouterr().err


def test_embeddings_by_name_through_the_cli_and_from_png(files, tmp_path, capsys):
    model = files / "tiny.safetensors"
    args = ("a hexemb on grey", "--negative", "hexemb", "--model", model, *FLAGS)
    assert _run(*args, "--embeddings-dir", files / "embeddings", "--out", tmp_path / "emb.png") == 0
    assert _run(*args, "--out", tmp_path / "plain.png") == 0
    assert not np.array_equal(_pixels(tmp_path / "emb.png"), _pixels(tmp_path / "plain.png"))
    info = read_png_info(tmp_path / "emb.png")
    assert info["fields"]["TI hashes"].startswith("hexemb: ") and info["stablekit"]["embeddings"][0]["name"] == "hexemb"
    assert _run("--from-png", tmp_path / "emb.png", "--out", tmp_path / "again.png") == 0  # the recorded file
    assert np.array_equal(_pixels(tmp_path / "emb.png"), _pixels(tmp_path / "again.png"))
    capsys.readouterr()
    record = dict(info["stablekit"], embeddings=[dict(info["stablekit"]["embeddings"][0], path=str(tmp_path / "gone.pt"))])
    meta = PngInfo()
    meta.add_text("parameters", info["parameters"])
    meta.add_text("stablekit", json.dumps(record))
    Image.open(tmp_path / "emb.png").save(tmp_path / "moved.png", pnginfo=meta)
    assert _run("--from-png", tmp_path / "moved.png", "--out", tmp_path / "y.png") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "embedding 'hexemb'" in err and "--embeddings-dir" in err


def test_cli_checks_loras_before_loading_the_model(files, tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stablekit, "load", no_load)
    for args, message in (
        (("a cat <lora:nope:1>", "--lora-dir", files / "Lora"), "no LoRA named 'nope'"),
        (("a cat <lora:outline:1>",), "needs a LoRA folder"),
        (("a cat", "--lora", tmp_path / "missing.safetensors"), "does not exist"),
        (("a cat", "--lora-dir", tmp_path / "nowhere"), "--lora-dir"),
    ):
        assert _run(*args, "--out", tmp_path / "o.png") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err


def test_load_names_a_missing_model_and_the_embedded_default(tmp_path):
    with pytest.raises(StablekitError) as err:
        stablekit.load(tmp_path / "nope.safetensors")
    assert str(err.value) == (f"model {tmp_path / 'nope.safetensors'} does not exist; give a .safetensors file or "
                              "diffusers folder, or leave out --model (path=None) to use the embedded shapes model")


def test_load_takes_dtype_names(files):
    assert stablekit.load(files / "tiny.safetensors", dtype="bf16", progress=False).components.dtype == torch.bfloat16
    with pytest.raises(StablekitError, match="unknown dtype 'fp8'; use fp32, fp16 or bf16"):
        stablekit.load(dtype="fp8")
    with pytest.raises(StablekitError, match="dtype must be"):
        stablekit.load(dtype=3)
