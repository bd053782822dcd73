"""kohya LoRA / LoCon: export, import, application, and diffusers' own loader as the judge."""
from __future__ import annotations

import pytest
import torch
from adapter_fixtures import IDS, diffusers_pipe, random_peft_lora, text_out, unet_inputs, unet_out
from fixtures import tiny_components

from stablekit.adapters import apply_adapters
from stablekit.errors import StablekitError
from stablekit.formats.lora_keys import load_lora_file
from stablekit.formats.lora_kohya import read_kohya_lora, save_kohya_lora, write_kohya_lora
from stablekit.formats.weights import open_weights

def _peft_layers(module) -> int:
    return sum(1 for _, m in module.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))


def _encoders(c):
    return [e for e in (c.text_encoder, c.text_encoder_2) if e is not None]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_kohya_export_loads_in_diffusers_with_same_outputs(tmp_path, arch):
    ours, theirs = tiny_components(arch), tiny_components(arch)
    unet_lora, text_lora = random_peft_lora(ours, rank=4, conv=True)
    save_kohya_lora(tmp_path / "k.safetensors", unet_lora, text_lora, alpha=2.0, rank=4, arch=arch)
    keys = open_weights(tmp_path / "k.safetensors").keys()
    prefixes = {k.split("_text_model")[0] for k in keys if k.startswith("lora_te")}
    assert prefixes == ({"lora_te1", "lora_te2"} if arch == "sdxl" else {"lora_te"})
    if arch == "sdxl":  # kohya trains SDXL on the LDM UNet, so the names are LDM names
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)

    inputs = unet_inputs(ours)
    applied = apply_adapters(ours, [(tmp_path / "k.safetensors", 1.0)])
    n_layers = len(applied.adapters[0].report.matched)
    assert n_layers == (len(unet_lora) + sum(map(len, text_lora))) // 2

    pipe = diffusers_pipe(theirs)
    pipe.load_lora_weights(str(tmp_path), weight_name="k.safetensors")  # raises on keys it cannot place
    assert sum(_peft_layers(m) for m in [theirs.unet, *_encoders(theirs)]) == n_layers
    assert torch.allclose(unet_out(theirs, inputs), unet_out(ours, inputs), atol=1e-4, rtol=0)
    for a, b in zip(_encoders(ours), _encoders(theirs)):
        assert torch.allclose(text_out(a, IDS), text_out(b, IDS), atol=1e-4, rtol=0)
    if arch == "sd1":  # the same image, same seed and sampler: diffusers' LoRA vs our patched weights
        def image(p):
            return p("a photo of a cat", num_inference_steps=3, guidance_scale=7.0, height=64, width=64,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
        theirs_image = image(pipe)
        ours_image = image(diffusers_pipe(ours))
        assert abs(theirs_image - ours_image).max() < 1e-4
    # the adapter really changes the output (else the comparison proves nothing)
    applied.remove()
    assert not torch.allclose(unet_out(ours, inputs), unet_out(theirs, inputs), atol=1e-3)
    if arch == "sd1":
        assert abs(image(diffusers_pipe(ours)) - ours_image).max() > 1e-3


def test_kohya_round_trip_bit_exact(tmp_path):
    c = tiny_components("sd1")
    unet_lora, text_lora = random_peft_lora(c, rank=3, conv=True)
    save_kohya_lora(tmp_path / "a.safetensors", unet_lora, text_lora, alpha=1.5, rank=3, arch="sd1",
                    metadata={"ss_output_name": "a"})
    first = read_kohya_lora(tmp_path / "a.safetensors")
    assert first.metadata["ss_network_alpha"] == "1.5" and first.metadata["ss_output_name"] == "a"
    write_kohya_lora(tmp_path / "b.safetensors", first)
    a, b = open_weights(tmp_path / "a.safetensors"), open_weights(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and a.metadata == b.metadata
    for key in a.keys():
        assert torch.equal(a.get(key), b.get(key)) and a.dtype(key) == b.dtype(key)
    # the PEFT tensors are kept as they were: lora_A -> lora_down, lora_B -> lora_up
    down = a.get("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight")
    assert torch.equal(down, unet_lora["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"])


def test_scales_and_exact_removal(tmp_path):
    c = tiny_components("sd1")
    for i in range(2):
        u, t = random_peft_lora(c, rank=2, seed=i)
        save_kohya_lora(tmp_path / f"l{i}.safetensors", u, t, alpha=2.0, rank=2, arch="sd1")
    inputs = unet_inputs(c)
    before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    base = unet_out(c, inputs)
    applied = apply_adapters(c, [f"{tmp_path / 'l0.safetensors'}:0.7", (tmp_path / "l1.safetensors", 0.3)])
    assert applied.names == ["l0", "l1"] and applied.scales == [0.7, 0.3]
    both = unet_out(c, inputs)
    assert not torch.allclose(both, base, atol=1e-3)
    applied.set_scales([0.0, 0.0])
    assert torch.equal(unet_out(c, inputs), base)
    assert all(torch.equal(v, c.unet.state_dict()[k]) for k, v in before.items())
    applied.set_scales([0.7, 0.0])
    only_first = unet_out(c, inputs)
    single = apply_adapters(tiny_components("sd1"), [(tmp_path / "l0.safetensors", 0.7)])
    assert torch.equal(only_first, unet_out(single.components, inputs))
    applied.set_scales([0.7, 0.3])
    assert torch.equal(unet_out(c, inputs), both)
    with pytest.raises(StablekitError, match="already applied"):
        apply_adapters(c, [(tmp_path / "l1.safetensors", 1.0)])
    from stablekit.formats.lora_keys import addnet_hash

    assert applied.hashes == {f"l{i}": addnet_hash(tmp_path / f"l{i}.safetensors")[:12] for i in range(2)}
    applied.remove()
    assert all(torch.equal(v, c.unet.state_dict()[k]) for k, v in before.items())
    apply_adapters(c, [(tmp_path / "l1.safetensors", 1.0)]).remove()  # allowed once the first set is gone


def test_two_adapters_match_diffusers_set_adapters(tmp_path):
    ours, theirs = tiny_components("sd1"), tiny_components("sd1")
    for i in range(2):
        u, t = random_peft_lora(ours, rank=2, seed=10 + i)
        save_kohya_lora(tmp_path / f"l{i}.safetensors", u, t, alpha=1.0, rank=2, arch="sd1")
    inputs = unet_inputs(ours)
    apply_adapters(ours, [(tmp_path / "l0.safetensors", 0.6), (tmp_path / "l1.safetensors", -0.4)])
    pipe = diffusers_pipe(theirs)
    pipe.load_lora_weights(str(tmp_path), weight_name="l0.safetensors", adapter_name="a")
    pipe.load_lora_weights(str(tmp_path), weight_name="l1.safetensors", adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.6, -0.4])
    assert torch.allclose(unet_out(theirs, inputs), unet_out(ours, inputs), atol=1e-4, rtol=0)
    assert torch.allclose(text_out(theirs.text_encoder, IDS), text_out(ours.text_encoder, IDS), atol=1e-4, rtol=0)


def test_mismatched_file_fails_loudly_and_changes_nothing(tmp_path):
    c = tiny_components("sd1")
    u, t = random_peft_lora(c, rank=2)
    save_kohya_lora(tmp_path / "ok.safetensors", u, t, alpha=1.0, rank=2, arch="sd1")
    adapter = read_kohya_lora(tmp_path / "ok.safetensors")
    first = next(iter(adapter.patches.values()))
    adapter.patches["lora_unet_down_blocks_9_attentions_0_proj_in"] = first
    adapter.patches["lora_unet_down_blocks_8_attentions_0_proj_in"] = first
    write_kohya_lora(tmp_path / "bad.safetensors", adapter)
    before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    with pytest.raises(StablekitError) as err:
        apply_adapters(c, [(tmp_path / "ok.safetensors", 1.0), (tmp_path / "bad.safetensors", 1.0)])
    msg = str(err.value)
    n = len(adapter.patches)
    assert "\n" not in msg and f"{n - 2} of {n} layers match" in msg and "2 have no such module" in msg
    assert "lora_unet_down_blocks_8_attentions_0_proj_in" in msg and "nothing was applied" in msg
    assert all(torch.equal(v, c.unet.state_dict()[k]) for k, v in before.items())


def test_lora_for_another_architecture_one_line_error(tmp_path):
    xl = tiny_components("sdxl")
    u, t = random_peft_lora(xl, rank=2)
    save_kohya_lora(tmp_path / "xl.safetensors", u, t, alpha=1.0, rank=2, arch="sdxl")
    with pytest.raises(StablekitError, match=r"is a LoRA for SDXL, but the model is SD 1.x") as err:
        apply_adapters(tiny_components("sd1"), [(tmp_path / "xl.safetensors", 1.0)])
    assert "\n" not in str(err.value)


def test_not_a_lora_file(tmp_path):
    from stablekit.formats.weights import write_safetensors

    t = torch.zeros(2)
    write_safetensors(tmp_path / "x.safetensors", [("model.diffusion_model.a", lambda: t, (2,), t.dtype)])
    with pytest.raises(StablekitError, match="not a LoRA file"):
        load_lora_file(tmp_path / "x.safetensors")
    with pytest.raises(StablekitError, match="safetensors only"):
        load_lora_file(tmp_path / "x.ckpt")


def test_ldm_style_names_and_fp16_weights(tmp_path):
    """SD 1.x files from other trainers name UNet layers the LDM way (input_blocks_1_1_...); they
    reach the same modules. Patching fp16 weights computes in fp32 and restores exactly."""
    from stablekit.adapters import find_adapter, parse_adapter_spec

    c = tiny_components("sd1")
    u, t = random_peft_lora(c, rank=2)
    save_kohya_lora(tmp_path / "d.safetensors", u, t, alpha=1.0, rank=2, arch="sd1")
    adapter = read_kohya_lora(tmp_path / "d.safetensors")
    renamed = dict(adapter.patches)
    patch = renamed.pop("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    renamed["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"] = patch
    adapter.patches = renamed
    (tmp_path / "sub").mkdir()
    write_kohya_lora(tmp_path / "sub" / "ldm.safetensors", adapter)
    path = find_adapter("ldm", tmp_path)
    assert path == tmp_path / "sub" / "ldm.safetensors" and parse_adapter_spec(f"{path}:0.5") == (str(path), 0.5)
    with pytest.raises(StablekitError, match="no LoRA named 'nope'"):
        find_adapter("nope", tmp_path)

    c.unet.half()
    q = c.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").weight
    before = q.detach().clone()
    applied = apply_adapters(c, [(path, 1.0)])
    expected = before.float() + (patch.tensors["up"] @ patch.tensors["down"]) * 0.5
    assert q.dtype == torch.float16 and torch.equal(q, expected.half())
    applied.remove()
    assert torch.equal(q, before)
