"""ControlNet training: zero-convolution start, only the net trains, both layouts load (ours and
diffusers') with equal residuals, folder and kohya TOML data, the shapes control data and IoU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components

from stablekit.errors import StablekitError
from stablekit.shapes import control


def _write_pairs(folder, n=4, size=64):
    """n image/condition/caption triples: a square whose place the condition (a mask) gives."""
    from PIL import Image

    (folder / "conditioning").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3), 40, np.uint8)
        mask = np.zeros((size, size, 3), np.uint8)
        y, x = 8 + 8 * i, 16
        img[y:y + 16, x:x + 16] = (220, 40, 40)
        mask[y:y + 16, x:x + 16] = 255
        Image.fromarray(img).save(folder / f"{i:02d}.png")
        Image.fromarray(mask).save(folder / "conditioning" / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("a red square")
    return folder


def _residuals(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    cond = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        down, mid = net(x, torch.tensor([500]), ctx, controlnet_cond=cond, return_dict=False)
    return list(down) + [mid]


def test_new_net_leaves_the_unet_output_unchanged_and_only_it_trains():
    from stablekit.train.strategies.controlnet import ControlledUNet, ControlNetStrategy

    with one_thread():
        c = tiny_components("sd1")
        s = ControlNetStrategy(components=c)
        assert {id(p) for p in s.trainable_parameters()} == {id(p) for p in s.controlnet.parameters()}
        assert not any(p.requires_grad for m in (c.unet, c.vae, c.text_encoder) for p in m.parameters())
        # hint encoder downsamples by the VAE factor: 64 px condition -> 8x8 latent
        assert tuple(s.controlnet.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
        x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
        with torch.no_grad():
            base = c.unet(x, torch.tensor([10, 900]), ctx).sample
            ctrl = ControlledUNet(c.unet, s.controlnet, torch.rand(2, 3, 64, 64))(x, torch.tensor([10, 900]), ctx).sample
        assert torch.equal(base, ctrl)  # zero convolutions: the untrained net adds exactly nothing


def test_hint_encoder_follows_the_vae_factor():
    from stablekit.train.strategies.controlnet import hint_channels

    assert hint_channels(8) == (16, 32, 96, 256) and hint_channels(4) == (16, 32, 96)
    with pytest.raises(StablekitError, match="VAE factor of 6"):
        hint_channels(6)


def test_trained_net_loads_in_diffusers_and_ours_with_equal_residuals(tmp_path):
    from diffusers import ControlNetModel

    from stablekit.formats.controlnet import load_controlnet
    from stablekit.train.run import run

    data = _write_pairs(tmp_path / "data")
    with one_thread():
        c = tiny_components("sd1")
        unet_before = {k: v.clone() for k, v in c.unet.state_dict().items()}
        result = run("controlnet", components=c, data=str(data), out=str(tmp_path / "out"), steps=3, batch_size=2,
                     lr=1e-3, sample_every=0, checkpoint_every=100, tensorboard=False, progress=False, device="cpu")
        assert result["artefact"].endswith("controlnet.safetensors")
        assert all(torch.equal(v, c.unet.state_dict()[k]) for k, v in unet_before.items())  # base frozen
        ours = load_controlnet(tmp_path / "out" / "controlnet.safetensors")
        theirs = ControlNetModel.from_pretrained(str(tmp_path / "out" / "controlnet")).eval()
        a, b = _residuals(ours), _residuals(theirs)
        assert len(a) == len(b) == 13
        assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-6
        assert max(x.abs().max().item() for x in a) > 0  # trained: the zero convolutions moved
    assert (tmp_path / "out" / "controlnet.toml").read_text().startswith('method = "controlnet"')


def test_kohya_toml_with_conditioning_data_dir(tmp_path):
    from stablekit.data.conditioning import load_conditioning_dataset

    data = _write_pairs(tmp_path / "data")
    toml = tmp_path / "dataset.toml"
    toml.write_text('[general]\nresolution = 32\n[[datasets]]\n[[datasets.subsets]]\n'
                    f'image_dir = "{data}"\nconditioning_data_dir = "{data / "conditioning"}"\n')
    ds = load_conditioning_dataset(toml, 64)
    batch = ds.get_batch(np.array([1, 2]), torch.Generator().manual_seed(0))
    assert batch["pixels"].shape == (2, 3, 32, 32) and batch["conditioning_pixels"].shape == (2, 3, 32, 32)
    cond = batch["conditioning_pixels"]
    assert cond.min() >= 0 and cond.max() <= 1
    red = batch["pixels"][:, 0] > 0.5  # the square in the image is where the condition is white
    assert torch.equal(red, cond[:, 0] > 0.5)


def test_bad_controlnet_data_is_one_line(tmp_path):
    from stablekit.data.conditioning import load_conditioning_dataset

    data = _write_pairs(tmp_path / "data")
    with pytest.raises(StablekitError, match="no condition folder"):
        load_conditioning_dataset(data, 64, conditioning_dir="masks")
    (data / "conditioning" / "01.png").unlink()
    with pytest.raises(StablekitError, match="no conditioning image for 01.png"):
        load_conditioning_dataset(data, 64)
    toml = tmp_path / "plain.toml"
    toml.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{data}"\n')
    with pytest.raises(StablekitError, match="without a condition image"):
        load_conditioning_dataset(toml, 64)


def test_shapes_control_data_covers_any_place_and_size(tmp_path):
    from PIL import Image

    from stablekit.shapes.render import POSITIONS, render_alpha, spec_center

    items = control.control_items(200, seed=3)
    centers = np.array([spec_center(s) for s, _ in items])
    diameters = np.array([s.diameter for s, _ in items])
    nearest = np.min([np.hypot(*(centers - p).T) for p in POSITIONS.values()], axis=0)
    assert (nearest > 6).mean() > 0.5  # most objects are off the 5 positions (+-3 px jitter)
    assert diameters.min() < 15 and diameters.max() > 36 and ((diameters > 20) & (diameters < 28)).any()
    spec, text = items[0]
    assert spec.shape in text and spec.color in text and spec.background in text
    folder = control.write_dataset(tmp_path / "cn", 3, seed=3)
    mask = np.asarray(Image.open(folder / "conditioning" / "000000.png"))
    assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask[..., 0] > 0, render_alpha(spec) >= 0.5)
    assert (folder / "000000.txt").read_text().strip() == text
    assert 'conditioning_data_dir = "conditioning"' in (folder / "dataset.toml").read_text()


def test_evaluation_scores_ground_truth_high_and_wrong_answers_low():
    from stablekit.shapes.render import ShapeSpec, render

    def truth(prompts, masks, seeds):
        return [render(s) for s, _ in control.control_items(len(prompts), control.EVAL_SEED)]

    def fixed(prompts, masks, seeds):  # ignores the condition: one centred white square on black
        return [render(ShapeSpec(shape="square", color="white", background="black", diameter=20.0))] * len(prompts)

    good = control.evaluate_controlnet(truth, n=24)
    bad = control.evaluate_controlnet(fixed, n=24)
    assert good["iou"] > 0.9 and good["color"] > 0.95
    assert bad["iou"] < 0.4 and bad["color"] < 0.4


def test_single_file_round_trip_for_a_vae_factor_4_net(tmp_path):
    from stablekit.formats.controlnet import load_controlnet, save_controlnet
    from stablekit.train.strategies.controlnet import new_controlnet

    with one_thread():
        net = new_controlnet(tiny_components("sd1").unet, 4)
        back = load_controlnet(save_controlnet(net, tmp_path / "f4.safetensors"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())
