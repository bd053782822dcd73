"""A1111's inpainting options: mask blur, invert, masked content, only masked; exact paste-back and
the parameters text, on a tiny seeded model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from fixtures import one_thread, tiny_components

from stablekit.errors import StablekitError
from stablekit.generate.inpaint_options import (InpaintOptions, crop_region, fill_masked, fill_name,
                                                prepared_mask)
from stablekit.generate.pipeline import Pipeline
from stablekit.generate.steps import InitImage


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        yield Pipeline(tiny_components("sd1"), progress=False)


def _image(size=64):
    g = np.random.default_rng(0)
    return (g.random((size, size, 3)) * 255).astype(np.uint8)


def _mask(size=64, box=(24, 24, 40, 40)):
    m = np.zeros((size, size), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return m


def _run(pipe, options, mask=None, image=None):
    with one_thread():
        return pipe.inpaint(Image.fromarray(image if image is not None else _image()), mask if mask is not None else _mask(),
                            "a red square", steps=2, seed=1, inpaint_options=options)[0]


def test_mask_blur_pastes_back_through_the_blurred_mask(pipe):
    out = np.asarray(_run(pipe, InpaintOptions(mask_blur=4)))
    blurred = prepared_mask(_mask(), 64, 64, False, 4)
    untouched = blurred == 0
    assert untouched.any() and (blurred[~(_mask() > 0)] > 0).any()  # the blur reaches outside the painted box
    assert np.array_equal(out[untouched], _image()[untouched])
    fringe = (blurred > 0) & (_mask() == 0)
    assert not np.array_equal(out[fringe], _image()[fringe])
    assert "Mask blur: 4" in _run(pipe, InpaintOptions(mask_blur=4)).info["parameters"]


def test_invert_repaints_the_black_part(pipe):
    image = _run(pipe, InpaintOptions(invert=True))
    out, painted = np.asarray(image), _mask() > 0
    assert np.array_equal(out[painted], _image()[painted])
    assert not np.array_equal(out[~painted], _image()[~painted])
    assert "Mask mode: Inpaint not masked" in image.info["parameters"]


def test_only_masked_crops_inpaints_and_pastes_back_exactly(pipe):
    mask = _mask(box=(30, 30, 38, 38))
    image = _run(pipe, InpaintOptions(only_masked=True, padding=4), mask=mask)
    out = np.asarray(image)
    assert out.shape == (64, 64, 3)
    painted = mask > 0
    assert np.array_equal(out[~painted], _image()[~painted])
    assert not np.array_equal(out[painted], _image()[painted])
    text = image.info["parameters"]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 4" in text
    with pytest.raises(StablekitError, match="mask is blank"):
        _run(pipe, InpaintOptions(only_masked=True), mask=np.zeros((64, 64), np.uint8))


def test_crop_region_grows_to_the_output_aspect_as_a1111():
    mask = np.zeros((64, 96), np.float32)
    mask[20:30, 40:44] = 1  # 4 wide, 10 high
    # box 36..48 x 16..34 (padding 4): 12 x 18, grown in x to 18 * 2 = 36 wide, centred
    assert crop_region(mask, 4, 128, 64) == (24, 16, 60, 34)
    mask[:, :] = 0
    mask[0:4, 90:96] = 1  # at the corner: shifted back inside
    x1, y1, x2, y2 = crop_region(mask, 2, 64, 64)
    assert (x2, y1) == (96, 0) and x2 - x1 == y2 - y1


def test_masked_content_fill_and_latents(pipe):
    init, mask = InitImage(_image()), _mask() > 0
    filled = fill_masked(init.rgb, mask.astype(np.float32))
    assert np.array_equal(filled[~mask], init.rgb[~mask]) and not np.array_equal(filled[mask], init.rgb[mask])
    opts = InpaintOptions(fill="latent-nothing").validate()
    m = opts.mask(_mask(), 64, 64)
    latents = torch.ones(1, 4, 8, 8)
    nothing = opts.start_latents(latents, m, 8, seed=1)
    assert nothing[..., 3:5, 3:5].abs().sum() == 0 and nothing[..., 0, 0].eq(1).all()
    noise = InpaintOptions(fill="latent noise").validate().start_latents(latents, m, 8, seed=1)
    assert torch.equal(noise[..., 0, 0], latents[..., 0, 0]) and not torch.equal(noise, latents)
    for fill, text in (("fill", "Masked content: fill"), ("latent-noise", "Masked content: latent noise"),
                       ("latent_nothing", "Masked content: latent nothing")):
        image = _run(pipe, InpaintOptions(fill=fill))
        assert text in image.info["parameters"]
        assert np.array_equal(np.asarray(image)[~mask], _image()[~mask])
    assert "Masked content" not in _run(pipe, InpaintOptions(fill="original")).info["parameters"]


def test_bad_options_are_one_line():
    with pytest.raises(StablekitError, match="unknown inpaint fill 'blur'"):
        fill_name("blur")
    with pytest.raises(StablekitError, match="mask blur must be"):
        InpaintOptions(mask_blur=-1).validate()


def test_cli_flags_reach_the_png(tmp_path, capsys):
    from stablekit.cli import main

    Image.fromarray(_image()).save(tmp_path / "init.png")
    Image.fromarray(_mask()).save(tmp_path / "mask.png")
    base = ["generate", "a red square", "--init-image", str(tmp_path / "init.png"), "--steps", "2", "--seed", "1",
            "--no-progress"]
    assert main(base + ["--inpaint-fill", "fill", "--out", str(tmp_path / "a.png")]) != 0
    assert "need --mask FILE" in capsys.readouterr().err
    with one_thread():
        assert main(base + ["--mask", str(tmp_path / "mask.png"), "--mask-blur", "2", "--inpaint-fill", "latent-noise",
                            "--only-masked", "--only-masked-padding", "8", "--out", str(tmp_path / "b.png")]) == 0
    out = Image.open(tmp_path / "b.png")
    text = out.info["parameters"]
    for field in ("Mask blur: 2", "Inpaint area: Only masked", "Masked area padding: 8", "Masked content: latent noise"):
        assert field in text
    blurred = prepared_mask(_mask(), 64, 64, False, 2)
    assert np.array_equal(np.asarray(out.convert("RGB"))[blurred == 0], _image()[blurred == 0])
