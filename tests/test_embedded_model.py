"""The committed shapes model loads through the same loaders as a real checkpoint and draws what it is asked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import stablekit
from stablekit.cli import main
from stablekit.formats import load_model

MODEL_DIR = Path(stablekit.EMBEDDED_MODEL).parent


def test_single_file_and_diffusers_folder_hold_the_same_model():
    single = load_model(MODEL_DIR / "shapes.safetensors")
    folder = load_model(MODEL_DIR / "diffusers")
    assert single.arch == folder.arch == "shapes"
    assert single.prediction_type == "v_prediction"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert single.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_embedded_model_is_small_enough_to_ship():
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"


def test_default_model_follows_prompts():
    """Every named attribute, shape and colour included, on fixed seeds (docs/benchmarks.md:
    model 3: adherence 0.971 on eval-v1, 0.965 on eval-v2)."""
    from stablekit.shapes.judge import Judge

    pipe = stablekit.load(progress=False)
    asks = [("a large red circle on a blue background", dict(shape="circle", color="red", background="blue", size="large")),
            ("a small yellow square on a black background at the top",
             dict(shape="square", color="yellow", background="black", size="small", position="top")),
            ("a large white triangle on a green background", dict(shape="triangle", color="white", background="green", size="large")),
            ("a large purple star on the left, orange background",
             dict(shape="star", color="purple", background="orange", size="large", position="left")),
            ("a green star at the bottom, white background", dict(shape="star", color="green", background="white", position="bottom")),
            ("a small black triangle on the right", dict(shape="triangle", color="black", size="small", position="right"))]
    judge = Judge.load()
    images = [np.asarray(pipe.generate(prompt, seed=1, steps=20)[0]) for prompt, _ in asks]
    found = judge.judge(images)
    hits = sum(all(got[k] == v for k, v in want.items()) for got, (_, want) in zip(found, asks))
    assert hits >= 5, found  # 6 of 6 with model 3 (model 1: 5, its green star came out black)


def test_img2img_keeps_the_object_at_low_strength_and_recolours_at_high():
    """img2img on renders, the prompt changing only the colour. Measured (12 renders, CFG 7):
    strength 0.3 keeps shape and place 12/12 but recolours 1/12 (the spec's img2img target asks
    for >= 0.8 recoloured at 0.3: not met by plain img2img, see docs/generation.md); 0.7
    recolours 12/12 and keeps shape and place 8/12."""
    from PIL import Image

    from stablekit.generate.pipeline import decode, encode
    from stablekit.shapes.captions import make_batch
    from stablekit.shapes.edits import other_color
    from stablekit.shapes.judge import Judge

    pipe = stablekit.load(progress=False)
    images, _, specs = make_batch(4, seed=11, sizes=("large",))
    roundtrip = decode(pipe.components, encode(pipe.components, images.astype(np.float32) / 255))
    judge = Judge.load()
    kept = recoloured = 0
    for image, spec, rt in zip(images, specs, roundtrip):
        low = pipe.img2img(Image.fromarray(image), "a picture", strength=0.02, seed=1, output="np")[0]
        assert np.abs(low - rt).mean() < 0.01  # one step at the smallest sigma: the VAE round trip
        new = other_color(spec, ("blue", "yellow", "red"))
        prompt = f"a large {new} {spec.shape} on a {spec.background} background"
        got = judge.judge([np.asarray(pipe.img2img(Image.fromarray(image), prompt, strength=s, seed=1)[0])
                           for s in (0.3, 0.7)])
        kept += got[0]["shape"] == spec.shape and got[0]["position"] == spec.position
        recoloured += got[1]["color"] == new
    assert kept >= 3 and recoloured >= 3, (kept, recoloured)


def test_inpaint_replaces_the_object_and_nothing_else():
    """Mask over a render's object, the prompt names a new shape and colour (the spec's
    inpainting check, target 0.8 with a plain model: not met). `benchmarks/inpaint_replace.py
    --n 40` with the abstaining judge: 0.525 for model 3, 0.575 for models 2 and 1. On these 6,
    model 2 had 2 hits (model 1 had 3)."""
    from PIL import Image

    from stablekit.shapes.captions import make_batch
    from stablekit.shapes.edits import object_box_mask, other_color, other_shape
    from stablekit.shapes.judge import Judge

    pipe = stablekit.load(progress=False)
    images, _, specs = make_batch(6, seed=21, sizes=("large",))
    judge = Judge.load()
    hits = 0
    for image, spec in zip(images, specs):
        mask = object_box_mask(spec)
        shape, color = other_shape(spec), other_color(spec)
        out = np.asarray(pipe.inpaint(Image.fromarray(image), mask,
                                      f"a large {color} {shape} on a {spec.background} background", seed=1)[0])
        assert np.array_equal(out[mask == 0], image[mask == 0])
        got = judge.judge([out])[0]
        hits += got["shape"] == shape and got["color"] == color
    assert hits >= 2, hits


def test_cli_generate_without_model_uses_the_embedded_model(tmp_path):
    out = tmp_path / "demo.png"
    assert main(["generate", "a large red star on a blue background", "--seed", "3", "--steps", "8",
                 "--out", str(out), "--no-progress"]) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 64)
