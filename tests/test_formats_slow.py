"""Full-size SD 1.5, SD 2.1-v and SDXL architectures: LDM export, detection and reload (slow).

Random weights in the real shapes (from the shipped configs) are written as LDM single files
*without* stablekit's metadata record, as a file from elsewhere would be, loaded back through key
detection, and compared tensor for tensor and by UNet output. SDXL runs in bf16 (fp32 would need
about 28 GB for the two copies). Run with: pytest -m slow tests/test_formats_slow.py
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from stablekit.components import Components
from stablekit.formats import load_model
from stablekit.formats.archs import build_modules, shipped_configs, tokenizers_for
from stablekit.formats.ldm import layout_for, write_items
from stablekit.formats.weights import write_safetensors

pytestmark = pytest.mark.slow
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")
# In LDM names output_blocks.11.1.transformer_blocks.0.norm1.bias, ComfyUI's v-model statistic.
V_PROBE = "up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"


def random_full_size(arch: str, dtype: torch.dtype, seed: int = 0) -> Components:
    """The real architecture with N(0, 0.02) weights, built on meta and filled in `dtype`."""
    configs = shipped_configs(arch)
    modules = {k: v for k, v in build_modules(configs, empty=True).items() if v is not None}
    gen = torch.Generator().manual_seed(seed)
    for module in modules.values():
        module.to(dtype).to_empty(device="cpu")  # cast while still on meta: no fp32 detour
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        if hasattr(module, "embeddings"):  # to_empty left the position_ids buffer uninitialised
            module.embeddings.position_ids.copy_(torch.arange(module.embeddings.position_ids.shape[-1])[None])
        elif hasattr(module, "text_model"):
            ids = module.text_model.embeddings.position_ids
            ids.copy_(torch.arange(ids.shape[-1])[None])
        module.eval()
    if arch == "sd2-v":  # emulate a trained v-model for detection (random norm biases are tiny)
        with torch.no_grad():
            bias = modules["unet"].get_parameter(V_PROBE)
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.5)
    tok1, tok2 = tokenizers_for(arch, configs)
    return Components(arch=arch, unet=modules["unet"], vae=modules["vae"], text_encoder=modules["text_encoder"],
                      tokenizer=tok1, scheduler_config=configs["scheduler"],
                      text_encoder_2=modules.get("text_encoder_2"), tokenizer_2=tok2)


def write_foreign_ldm(comps: Components, path) -> None:
    """An LDM file with no stablekit record, so loading must detect the architecture."""
    configs = shipped_configs(comps.arch)
    modules = {name: getattr(comps, name) for name in MODULES if getattr(comps, name) is not None}
    write_safetensors(path, write_items(modules, layout_for(comps.arch, configs), configs, None), {"format": "pt"})


def unet_output(comps: Components) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    dtype = comps.unet.dtype
    x = torch.randn(1, 4, 8, 8, generator=gen).to(dtype)
    context = torch.randn(1, 77, comps.unet.config.cross_attention_dim, generator=gen).to(dtype)
    kwargs = {}
    if comps.is_sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, generator=gen).to(dtype),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).to(dtype)}
    with torch.no_grad():
        return comps.unet(x, 500, encoder_hidden_states=context, **kwargs).sample


@pytest.mark.parametrize("arch, dtype, prediction", [
    ("sd1", torch.float32, "epsilon"),
    ("sd2-v", torch.float32, "v_prediction"),
    ("sdxl", torch.bfloat16, "epsilon"),
])
def test_full_size_ldm_round_trip(arch, dtype, prediction, tmp_path):
    original = random_full_size(arch, dtype)
    path = tmp_path / f"{arch}.safetensors"
    write_foreign_ldm(original, path)
    loaded = load_model(path, dtype=dtype)
    assert (loaded.arch, loaded.prediction_type) == (arch, prediction)
    for name in MODULES:
        a, b = getattr(original, name), getattr(loaded, name)
        if a is None:
            assert b is None
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    expected = unet_output(original)
    assert torch.isfinite(expected).all()
    # Weights are bit-equal (above); outputs from memory-mapped vs freshly allocated weights may
    # differ by a few ulps (kernels chosen by alignment, see tests/test_formats.py OUTPUT_ATOL), so
    # compare within a few ulps of the dtype at the output's scale; a mapping bug is far larger.
    ulp = torch.finfo(dtype).eps * expected.abs().max().item()
    ulps = 64 if dtype == torch.float32 else 4  # bf16's ulp is already 2**-8 of the scale
    torch.testing.assert_close(unet_output(loaded), expected, rtol=0, atol=ulps * ulp)


_PEAK_SCRIPT = textwrap.dedent("""
    import sys, threading, time, torch
    from stablekit.formats import load_model

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    peak, done = [anon_kb()], []
    def sample():
        while not done:
            peak.append(anon_kb())
            time.sleep(0.005)
    base = anon_kb()
    thread = threading.Thread(target=sample)
    thread.start()
    comps = load_model(sys.argv[1], dtype=torch.float16)
    done.append(1)
    thread.join()
    size = sum(p.numel() * p.element_size() for m in (comps.unet, comps.vae, comps.text_encoder) for p in m.parameters())
    print(base, max(peak), size)
""")


def test_loading_into_fp16_needs_no_fp32_copy(tmp_path):
    # Anonymous memory (not the memory-mapped file) while an fp32 SD 1.5 file loads as fp16 stays
    # near the fp16 model size (1.7 GB), far below a full fp32 copy (4.3 GB).
    path = tmp_path / "sd1.safetensors"
    write_foreign_ldm(random_full_size("sd1", torch.float32), path)
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    base_kb, peak_kb, size = map(int, out.stdout.split())
    growth = (peak_kb - base_kb) * 1024
    assert growth < 1.25 * size + 200e6, (growth, size)
