"""formats/controlnet.py: ControlNets in the diffusers layout and the A1111/ComfyUI single-file layouts."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures import tiny_configs, tiny_controlnet
from stablekit.errors import StablekitError
from stablekit.formats.controlnet import LDM_PREFIX, load_controlnet, save_controlnet

ARCHS = ("sd1", "sd2", "sdxl")


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def file_tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def residuals(net, arch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    config = net.config
    x = torch.randn(1, 4, 8, 8, generator=gen)
    cond = torch.rand(1, 3, 64, 64, generator=gen)
    context = torch.randn(1, 77, config.cross_attention_dim, generator=gen)
    kwargs = {}
    if arch == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 64, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        down, mid = net(x, 10, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False, **kwargs)
    return [*down, mid]


@pytest.fixture(scope="module")
def nets():
    return {arch: tiny_controlnet(arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trips_both_layouts(arch, nets, tmp_path):
    net = nets[arch]
    assert_same(net, load_controlnet(save_controlnet(net, tmp_path / "cn")))
    single = save_controlnet(net, tmp_path / "cn.safetensors")
    assert_same(net, load_controlnet(single))
    keys = set(file_tensors(single)[0])
    assert {"input_hint_block.0.weight", "input_hint_block.14.weight", "zero_convs.0.0.weight",
            "middle_block_out.0.weight", "input_blocks.0.0.weight", "time_embed.0.weight"} <= keys
    assert ("label_emb.0.0.weight" in keys) == (arch == "sdxl")
    assert len(keys) == len(net.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_released_layouts_without_record(arch, nets, tmp_path):
    # Files from elsewhere carry no config: it comes from the model's UNet config.
    tensors, _ = file_tensors(save_controlnet(nets[arch], tmp_path / "cn.safetensors"))
    unet_config = tiny_configs(arch)["unet"]
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))  # ControlNet 1.1 style
    assert_same(nets[arch], load_controlnet(bare, unet_config=unet_config))
    prefixed = tmp_path / "prefixed.safetensors"  # 1.0 style, with the SD model beside it
    save_file({**{LDM_PREFIX + k: v for k, v in tensors.items()},
               "model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, str(prefixed))
    assert_same(nets[arch], load_controlnet(prefixed, unet_config=unet_config))
    # a diffusers-layout single file (e.g. a downloaded diffusion_pytorch_model.safetensors)
    folder_weights, _ = file_tensors(save_controlnet(nets[arch], tmp_path / "f") / "diffusion_pytorch_model.safetensors")
    flat = tmp_path / "flat.safetensors"
    save_file(folder_weights, str(flat))
    assert_same(nets[arch], load_controlnet(flat, unet_config=unet_config))
    ckpt = tmp_path / "cn.pth"
    torch.save({LDM_PREFIX + k: v for k, v in tensors.items()}, ckpt)
    with pytest.raises(StablekitError, match="pickle"):
        load_controlnet(ckpt, unet_config=unet_config)
    assert_same(nets[arch], load_controlnet(ckpt, unet_config=unet_config, allow_pickle=True))


def test_diffusers_loads_our_export_with_equal_outputs(nets, tmp_path):
    from diffusers import ControlNetModel

    for arch in ARCHS:
        folder = save_controlnet(nets[arch], tmp_path / arch)
        theirs = ControlNetModel.from_pretrained(str(folder), local_files_only=True).eval()
        ours = load_controlnet(tmp_path / arch)
        for a, b in zip(residuals(theirs, arch), residuals(ours, arch)):
            # equal weights; mmap vs copy may differ by float ulps (see test_formats OUTPUT_ATOL)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        for a, b in zip(residuals(nets[arch], arch), residuals(theirs, arch)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_full_size_config_detected_from_keys(nets, tmp_path):
    from stablekit.formats.archs import shipped_configs
    from stablekit.formats.controlnet import controlnet_config, ldm_name, _detect_unet_config, _empty_net

    for arch in ("sd1", "sd2", "sdxl"):
        config = controlnet_config(shipped_configs(arch)["unet"])
        shapes = {ldm_name(k, config): tuple(v.shape) for k, v in _empty_net(config).state_dict().items()}
        assert _detect_unet_config(shapes)[0] == arch
    # LDM names at full SD 1.5 size (as in ControlNet 1.1 files: hint block 0..14, 12 zero convs)
    assert shapes.get("zero_convs.8.0.weight") == (1280, 1280, 1, 1)
    config = controlnet_config(shipped_configs("sd1")["unet"])
    names = {ldm_name(k, config) for k in _empty_net(config).state_dict()}
    assert len(names) == 340 and "input_blocks.11.0.out_layers.3.weight" in names
    assert "input_hint_block.14.weight" in names and "zero_convs.11.0.bias" in names


def test_refusals_are_one_line(nets, tmp_path):
    tensors, _ = file_tensors(save_controlnet(nets["sd1"], tmp_path / "cn.safetensors"))
    cases = {}
    diff = tmp_path / "diff.safetensors"
    save_file({**{LDM_PREFIX + k: v for k, v in tensors.items()}, "difference": torch.tensor(1.0)}, str(diff))
    cases[diff] = "diff ControlNet"
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_controlnet": torch.tensor(1.0)}, str(lora))
    cases[lora] = "Control-LoRA"
    other = tmp_path / "other.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(other))
    cases[other] = "not a ControlNet"
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))
    cases[bare] = "wrong shape"  # tiny weights, no config: checked against the detected real SD 1
    cases[tmp_path / "missing.safetensors"] = "does not exist"
    for path, words in cases.items():
        with pytest.raises(StablekitError) as info:
            load_controlnet(path)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    # without any config, the arch is detected from the keys in either layout and named
    for arch in ARCHS:
        folder_weights, _ = file_tensors(save_controlnet(nets[arch], tmp_path / arch) / "diffusion_pytorch_model.safetensors")
        ldm_weights, _ = file_tensors(save_controlnet(nets[arch], tmp_path / f"{arch}.safetensors"))
        for name, weights in (("flat", folder_weights), ("ldm", ldm_weights)):
            save_file(weights, str(tmp_path / f"{name}-{arch}.safetensors"))
            with pytest.raises(StablekitError, match=f"not a ControlNet matching an {arch} config"):
                load_controlnet(tmp_path / f"{name}-{arch}.safetensors")
    # a ControlNet for another architecture, given the model's UNet config
    with pytest.raises(StablekitError, match="wrong shape"):
        load_controlnet(bare, unet_config=tiny_configs("sdxl")["unet"])


def test_saving_is_deterministic_and_casts(nets, tmp_path):
    a = save_controlnet(nets["sdxl"], tmp_path / "a.safetensors", dtype="fp16")
    b = save_controlnet(nets["sdxl"], tmp_path / "b.safetensors", dtype="fp16")
    assert a.read_bytes() == b.read_bytes()
    half = load_controlnet(a, dtype=None)
    assert half.dtype == torch.float16
    assert torch.equal(half.controlnet_mid_block.weight, nets["sdxl"].controlnet_mid_block.weight.half())


def test_a_controlnet_given_as_a_model_is_named(nets, tmp_path):
    from stablekit.formats import inspect_model, load_model

    path = save_controlnet(nets["sd1"], tmp_path / "cn.safetensors")
    with pytest.raises(StablekitError, match="a ControlNet, not a Stable Diffusion model"):
        load_model(path)
    assert "a ControlNet" in inspect_model(path)["problem"]
