"""`train inpainting`: the 9-channel UNet starts as the base model, trains on random and object
masks, and exports a checkpoint the loader detects as an inpainting model."""
from __future__ import annotations

import numpy as np
import torch
from fixtures import one_thread, tiny_components
from train_fixtures import write_folder

from stablekit.generate.inpaint_unet import is_inpainting_unet
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies.inpainting import MASK_KINDS, box_mask, object_mask, random_masks, to_inpainting_unet


def test_extra_channels_start_at_zero():
    with one_thread():
        unet = tiny_components("sd1").unet
        new = to_inpainting_unet(unet)
        assert is_inpainting_unet(new) and not is_inpainting_unet(unet)
        x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
        extra = torch.randn(1, 5, 8, 8)
        with torch.no_grad():
            a = unet(x, 500, ctx).sample
            b = new(torch.cat([x, extra], dim=1), 500, ctx).sample
        assert torch.allclose(a, b, atol=1e-6)
        assert to_inpainting_unet(new) is new


def test_masks_cover_every_kind_and_find_the_object():
    pixels = -torch.ones(1, 3, 32, 32)
    pixels[:, :, 8:16, 10:20] = 1.0
    m = object_mask(pixels[0])
    assert m[8:16, 10:20].all() and m.sum() == (8 + 4) * (10 + 4)  # grown by 2 px
    rng = BatchRandom(torch.Generator().manual_seed(0))
    masks = random_masks(pixels.expand(64, 3, 32, 32), rng)
    full = masks.flatten(1).mean(1)
    assert (full == 1).any() and ((full > 0) & (full < 1)).float().mean() > 0.5
    assert len(MASK_KINDS) == 5
    box = box_mask(object_mask(pixels[0], grow=0), 3)
    assert box[5:19, 7:23].all() and box.sum() == 14 * 16  # the object's box grown by 3 px
    assert box_mask(m, 40).all()  # clipped to the frame


def test_trained_model_exports_as_an_inpainting_checkpoint(tmp_path):
    from PIL import Image

    from stablekit.formats import load_model
    from stablekit.generate.pipeline import Pipeline
    from stablekit.train.run import run

    data = write_folder(tmp_path / "data", n=4)
    with one_thread():
        c = tiny_components("sd1")
        result = run("inpainting", components=c, data=str(data), out=str(tmp_path / "out"), steps=2, batch_size=2,
                     lr=1e-4, sample_every=0, checkpoint_every=100, tensorboard=False, progress=False, device="cpu")
        loaded = load_model(result["artefact"], dtype=torch.float32)
        assert is_inpainting_unet(loaded.unet)
        assert torch.equal(loaded.unet.conv_in.weight, c.unet.conv_in.weight)
        image = np.asarray(Image.open(data / "0000.png").convert("RGB"))
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        out = np.asarray(Pipeline(loaded, progress=False).inpaint(Image.fromarray(image), mask, "a square", steps=2,
                                                                  seed=0)[0])
    assert np.array_equal(out[mask == 0], image[mask == 0])
