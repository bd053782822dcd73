"""The mask size rule (generate/mask_size.py) everywhere a mask enters: Pipeline.inpaint, `generate --mask`,
our job API's submit; the A1111 endpoint keeps A1111's resize-anything behaviour."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fixtures import tiny_components
from PIL import Image

from stablekit.errors import StablekitError
from stablekit.generate.inpaint_options import InpaintOptions
from stablekit.generate.mask_size import check_mask_size, mask_size_note, source_size
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import InitImage, InpaintMask


def image(w: int = 64, h: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(w: int, h: int) -> Image.Image:
    """White box over the middle half, at any size (the same place in every size)."""
    m = np.zeros((h, w), np.uint8)
    m[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
    return Image.fromarray(m)


def test_rule_equal_same_aspect_other_aspect():
    assert mask_size_note((64, 64), (64, 64)) is None
    text = mask_size_note((32, 32), (64, 64))
    assert "32x32" in text and "64x64" in text and "resized" in text and "\n" not in text
    assert mask_size_note((64, 48), (1000, 750)) is not None  # 4:3 both
    with pytest.raises(StablekitError) as info:
        mask_size_note((64, 32), (64, 64))
    message = str(info.value)
    assert "64x32" in message and "64x64" in message and "give a mask" in message and "\n" not in message


def test_sizes_of_every_form_a_mask_or_image_takes(tmp_path):
    path = tmp_path / "m.png"
    box_mask(40, 24).save(path)
    for source in (path, str(path), box_mask(40, 24), np.zeros((24, 40)), InpaintMask(np.zeros((24, 40))),
                   InitImage(np.zeros((24, 40, 3), np.uint8))):
        assert source_size(source) == (40, 24), source
    assert source_size(tmp_path / "missing.png") is None  # the loader's own error follows


def test_pipeline_resizes_same_aspect_with_a_note_and_refuses_another(capsys):
    pipe = Pipeline(tiny_components("sd1"), progress=False)
    run = dict(prompt="a red circle", steps=2, seed=1, output="np")
    full = pipe.inpaint(image(), box_mask(64, 64), **run)[0]
    assert "mask" not in capsys.readouterr().err
    half = pipe.inpaint(image(), box_mask(32, 32), **run)[0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note: the mask is 32x32 and the init image 64x64" in err
    assert np.array_equal(full, half)  # the box resized to the image is the same box
    for settings in ({}, {"inpaint_options": InpaintOptions(only_masked=True, padding=0)}):
        with pytest.raises(StablekitError, match="the mask is 64x32 but the init image is 64x64"):
            pipe.inpaint(image(), box_mask(64, 32), **run, **settings)


def test_cli_generate_mask_other_aspect_is_one_line_and_same_aspect_is_resized(tmp_path, capsys):
    from stablekit.cli import main

    init, bad, small, out = (tmp_path / n for n in ("init.png", "bad.png", "small.png", "out.png"))
    image().save(init)
    box_mask(64, 32).save(bad)
    box_mask(16, 16).save(small)
    assert main(["generate", "a red star", "--init-image", str(init), "--mask", str(bad), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "64x32" in err and "64x64" in err and not out.exists()
    assert main(["generate", "a red star", "--init-image", str(init), "--mask", str(small), "--steps", "2",
                 "--mask-blur", "0", "--out", str(out), "--no-progress"]) == 0
    assert "note: the mask is 16x16 and the init image 64x64" in capsys.readouterr().err
    got, given = np.asarray(Image.open(out)), np.asarray(image())
    keep = np.asarray(box_mask(64, 64)) == 0
    assert np.array_equal(got[keep], given[keep]) and not np.array_equal(got[~keep], given[~keep])


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_job_api_refuses_another_aspect_at_submit_with_400(tmp_path):
    from fastapi.testclient import TestClient

    from stablekit.serve.app import create_app
    from stablekit.serve.settings import ServeSettings

    with TestClient(create_app(ServeSettings(data_dir=tmp_path / "data", workers=0))) as c:
        body = {"prompt": "a star", "init_image": b64(image()), "mask": b64(box_mask(64, 32))}
        r = c.post("/api/v1/generate", json=body)
        assert r.status_code == 400 and "64x32" in r.json()["error"] and "64x64" in r.json()["error"], r.text
        r = c.post("/api/v1/generate", json={**body, "mask": b64(box_mask(32, 32))})
        assert r.status_code == 202, r.text


def test_a1111_endpoint_keeps_resizing_any_mask(tmp_path):
    """A1111 resizes any mask to the image (prepare_mask); its plan hands the Pipeline equal sizes."""
    from types import SimpleNamespace

    from stablekit.serve.a1111.fields import normalize
    from stablekit.serve.a1111.plan import build
    from stablekit.serve.settings import ServeSettings
    from stablekit.serve.state import ModelManager

    settings = ServeSettings(data_dir=tmp_path)
    state = SimpleNamespace(settings=settings, models=ModelManager(settings))
    req = normalize("img2img", {"init_images": [b64(image())], "mask": b64(box_mask(64, 32)), "width": 64,
                                "height": 64, "mask_blur": 0, "inpaint_full_res": False})
    plan = build("img2img", req, state)
    assert plan.mask.size == plan.init.size == (64, 64) and check_mask_size(plan.mask, plan.init) is None
