"""LyCORIS LoHa / LoKr, LoCon Tucker cores and DoRA (dora_scale) against formulas written out here.

Each expected weight is computed independently of stablekit.adapters.math: block by block for the
Kronecker products, kernel tap by kernel tap for the Tucker cores, explicit sums for the norms.
"""
from __future__ import annotations

import pytest
import torch
from fixtures import tiny_components

from stablekit.adapters import apply_adapters
from stablekit.formats.lora_keys import AdapterFile, LayerPatch, load_lora_file
from stablekit.formats.lora_kohya import write_kohya_lora
from stablekit.formats.weights import open_weights

Q = ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")  # Linear 32 -> 32
FF = ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj")  # Linear 32 -> 256
CONV = ("unet", "down_blocks.0.resnets.0.conv1")  # Conv2d 32 -> 32, 3x3
FC1 = ("text_encoder", "encoder.layers.0.mlp.fc1")  # Linear 32 -> 64
NAMES = {Q: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
         FF: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
         CONV: "lora_unet_down_blocks_0_resnets_0_conv1", FC1: "lora_te_text_model_encoder_layers_0_mlp_fc1"}


def _r(gen, *shape):
    return torch.randn(shape, generator=gen) * 0.2


def _weight(c, target):
    module = c.unet if target[0] == "unet" else c.text_encoder
    return module.get_submodule(target[1]).weight.detach().clone()


def _kron_blocks(a, b):
    """kron(a, b) for 2-D a and 2-D or 4-D b, assembled block by block."""
    p, q = a.shape
    out = torch.zeros(p * b.shape[0], q * b.shape[1], *b.shape[2:])
    for i in range(p):
        for j in range(q):
            out[i * b.shape[0]:(i + 1) * b.shape[0], j * b.shape[1]:(j + 1) * b.shape[1]] = a[i, j] * b
    return out


def _tucker_taps(core, a, b):
    """[out, in, k, k] with tap (k, l) = a @ core[:, :, k, l] @ b."""
    out = torch.zeros(a.shape[0], b.shape[1], *core.shape[2:])
    for k in range(core.shape[2]):
        for l in range(core.shape[3]):
            out[:, :, k, l] = a @ core[:, :, k, l] @ b
    return out


def _cases(gen):
    """(patch, expected dW at strength 1 given the base weight W) per layer."""
    cases = {}
    # LoHa on a Linear: Hadamard product of two rank-2 products, alpha 3 / rank 2
    w1a, w1b, w2a, w2b = _r(gen, 256, 2), _r(gen, 2, 32), _r(gen, 256, 2), _r(gen, 2, 32)
    cases[FF] = (LayerPatch("loha", {"w1a": w1a, "w1b": w1b, "w2a": w2a, "w2b": w2b}, alpha=torch.tensor(3.0)),
                 lambda W: 1.5 * (w1a @ w1b) * (w2a @ w2b))
    # LoKr on a Linear: w1 full 4x4, w2 = a @ b (8x8, rank 2); alpha 1 / rank 2
    k1, ka, kb = _r(gen, 4, 4), _r(gen, 8, 2), _r(gen, 2, 8)
    cases[Q] = (LayerPatch("lokr", {"w1": k1, "w2a": ka, "w2b": kb}, alpha=torch.tensor(1.0)),
                lambda W: 0.5 * _kron_blocks(k1, ka @ kb))
    # LoKr on a 3x3 conv, both factors full: alpha is ignored (scale 1)
    c1, c2 = _r(gen, 4, 2), _r(gen, 8, 16, 3, 3)
    cases[CONV] = (LayerPatch("lokr", {"w1": c1, "w2": c2}, alpha=torch.tensor(7.0)), lambda W: _kron_blocks(c1, c2))
    # LoHa with Tucker cores on the text encoder's fc1 is a Linear, so use a plain LoHa + DoRA there
    h1a, h1b, h2a, h2b = _r(gen, 64, 2), _r(gen, 2, 32), _r(gen, 64, 2), _r(gen, 2, 32)
    m = 1.0 + _r(gen, 1, 32)  # dora_scale [1, in]: LyCORIS' default, the norm per input column

    def dora_loha(W):
        full = W + 2.0 * (h1a @ h1b) * (h2a @ h2b)
        col = torch.sqrt((full ** 2).sum(dim=0, keepdim=True))
        return m * full / col - W
    cases[FC1] = (LayerPatch("loha", {"w1a": h1a, "w1b": h1b, "w2a": h2a, "w2b": h2b}, alpha=torch.tensor(4.0),
                             dora=m, dora_kind="lycoris"), dora_loha)
    return cases


def _write(tmp_path, cases, name="ly.safetensors", names=NAMES):
    adapter = AdapterFile(None, "kohya", {names[t]: p for t, (p, _) in cases.items()}, {"ss_network_module": "lycoris.kohya"})
    write_kohya_lora(tmp_path / name, adapter)
    return tmp_path / name


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_loha_lokr_dora_match_formulas(tmp_path, strength):
    cases = _cases(torch.Generator().manual_seed(0))
    path = _write(tmp_path, cases)
    c = tiny_components("sd1")
    base = {t: _weight(c, t) for t in cases}
    assert load_lora_file(path).kinds() == {"loha": 1, "lokr": 2, "loha+dora": 1}
    apply_adapters(c, [(path, strength)])
    for target, (_, delta) in cases.items():
        expected = base[target] + strength * delta(base[target])
        assert torch.allclose(_weight(c, target), expected, atol=1e-5, rtol=1e-5), target


def test_locon_tucker_and_row_dora(tmp_path):
    gen = torch.Generator().manual_seed(1)
    up, mid, down = _r(gen, 32, 2, 1, 1), _r(gen, 2, 2, 3, 3), _r(gen, 2, 32, 1, 1)
    t1, t2 = _r(gen, 2, 2, 3, 3), _r(gen, 2, 2, 3, 3)
    a1, b1, a2, b2 = _r(gen, 32, 2), _r(gen, 2, 32), _r(gen, 32, 2), _r(gen, 2, 32)
    qa, qb = _r(gen, 32, 4), _r(gen, 4, 32)
    m = 1.0 + _r(gen, 32, 1)  # LyCORIS wd_on_out: dora_scale [out, 1], the norm per output row

    def row_dora(W):
        full = W + 0.5 * qa @ qb
        return m * full / torch.sqrt((full ** 2).sum(dim=1, keepdim=True)) - W
    cases = {
        CONV: (LayerPatch("lora", {"up": up, "mid": mid, "down": down}, alpha=torch.tensor(1.0)),
               lambda W: 0.5 * _tucker_taps(mid, up[:, :, 0, 0], down[:, :, 0, 0])),
        ("unet", "down_blocks.0.resnets.0.conv2"): (
            LayerPatch("loha", {"w1a": a1, "w1b": b1, "w2a": a2, "w2b": b2, "t1": t1, "t2": t2}, alpha=torch.tensor(2.0)),
            lambda W: _tucker_taps(t1, a1, b1) * _tucker_taps(t2, a2, b2)),
        Q: (LayerPatch("lora", {"up": qa, "down": qb}, alpha=torch.tensor(2.0), dora=m, dora_kind="lycoris"), row_dora),
    }
    names = {**NAMES, ("unet", "down_blocks.0.resnets.0.conv2"): "lora_unet_down_blocks_0_resnets_0_conv2"}
    path = _write(tmp_path, cases, names=names)
    c = tiny_components("sd1")
    base = {t: _weight(c, t) for t in cases}
    applied = apply_adapters(c, [(path, 1.0)])
    for target, (_, delta) in cases.items():
        assert torch.allclose(_weight(c, target), base[target] + delta(base[target]), atol=1e-5, rtol=1e-5), target
    applied.remove()
    assert all(torch.equal(_weight(c, t), base[t]) for t in cases)


def test_lycoris_round_trip_bit_exact(tmp_path):
    cases = _cases(torch.Generator().manual_seed(2))
    for p, _ in cases.values():  # fp16 tensors as most shared files are
        p.tensors = {k: v.half() for k, v in p.tensors.items()}
    first = _write(tmp_path, cases, "a.safetensors")
    write_kohya_lora(tmp_path / "b.safetensors", load_lora_file(first))
    a, b = open_weights(first), open_weights(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and a.metadata == b.metadata
    assert {k.split(".", 1)[1] for k in a.keys()} >= {"hada_w1_a", "lokr_w1", "lokr_w2_a", "dora_scale", "alpha"}
    for key in a.keys():
        assert torch.equal(a.get(key), b.get(key)) and a.dtype(key) == b.dtype(key)


def test_unsupported_lycoris_kind_fails_loudly(tmp_path):
    """An OFT layer (a LyCORIS kind stablekit does not apply) beside good ones: refused, nothing changes."""
    from stablekit.errors import StablekitError
    from stablekit.formats.weights import write_safetensors

    cases = _cases(torch.Generator().manual_seed(3))
    path = _write(tmp_path, cases)
    w = open_weights(path)
    tensors = {k: w.get(k) for k in w.keys()}
    tensors[NAMES[Q].replace("to_q", "to_k") + ".oft_blocks"] = torch.zeros(4, 8, 8)
    write_safetensors(tmp_path / "oft.safetensors", [(k, (lambda t=t: t), tuple(t.shape), t.dtype) for k, t in tensors.items()])
    c = tiny_components("sd1")
    before = _weight(c, FF)
    with pytest.raises(StablekitError, match=r"4 of 4 layers match the model; 1 keys of no known LoRA kind \(e.g. .*oft_blocks"):
        apply_adapters(c, [(tmp_path / "oft.safetensors", 1.0)])
    assert torch.equal(_weight(c, FF), before)
