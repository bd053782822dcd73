"""Tiny seeded random Stable Diffusion models for tests.

`tiny_components(arch, seed)` returns Components whose modules have the same block structure as
the real architecture (block types and counts, layers per block, SD2's linear projections,
SDXL's text_time embedding and per-level transformer depths), so the LDM key layout and its
conversion are the real ones; only the widths are tiny. Built from the shipped configs in
`stablekit/formats/configs/<arch>/` with the widths overridden. Same seed -> same weights.
Import from a test module as `from fixtures import tiny_components` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import contextlib

import torch

from stablekit.components import Components
from stablekit.formats.archs import ARCHS, build_modules, shipped_configs, tokenizers_for

# Width overrides per component; everything not listed keeps the real value.
_TINY_UNET = {
    "sd1": dict(block_out_channels=[32, 64, 64, 64], attention_head_dim=8, cross_attention_dim=32),
    "sd2": dict(block_out_channels=[32, 64, 64, 64], attention_head_dim=[2, 4, 4, 4], cross_attention_dim=32),
    "sdxl": dict(
        block_out_channels=[32, 64, 64],
        attention_head_dim=[2, 4, 4],
        transformer_layers_per_block=[1, 2, 2],
        cross_attention_dim=32 + 64,  # text_encoder hidden + text_encoder_2 hidden, as 768 + 1280
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 64,  # 6 size/crop numbers + pooled text
        addition_embed_type_num_heads=4,
    ),
}
_TINY_UNET["sd2-v"] = _TINY_UNET["sd2"]
_TINY_VAE = dict(block_out_channels=[32, 32, 64, 64])
_TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
_TINY_CLIP_2 = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, projection_dim=64)

LATENT_SIZE = 8  # the tiny models' default latent size (64 px images)


def tiny_configs(arch: str = "sd1") -> dict:
    """The shipped configs of `arch` with tiny widths (see module docstring)."""
    configs = shipped_configs(arch)
    configs["unet"].update(_TINY_UNET[arch], sample_size=LATENT_SIZE)
    configs["vae"].update(_TINY_VAE, sample_size=LATENT_SIZE * 8)
    configs["text_encoder"].update(_TINY_CLIP)
    if configs["text_encoder_2"] is not None:
        configs["text_encoder_2"].update(_TINY_CLIP_2)
    return configs


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: for tiny tensors thread start-up costs more than it saves
    (measured 3x CPU time on the 2 shared cores). Restores the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_components(arch: str = "sd1", seed: int = 0) -> Components:
    """Tiny random Components for arch in "sd1", "sd2", "sd2-v", "sdxl"; seeded, CPU, fp32, eval mode.

    Every parameter gets a small seeded perturbation on top of the default init so that no two
    tensors are equal (norm weights are not all ones): a key mapping that swaps two tensors of
    the same shape cannot pass a round-trip test by accident.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    configs = tiny_configs(arch)
    with one_thread():
        modules = _seeded_modules(configs, seed)
    tokenizer, tokenizer_2 = tokenizers_for(arch, configs)
    return Components(
        arch=arch,
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=tokenizer,
        scheduler_config=configs["scheduler"],
        text_encoder_2=modules["text_encoder_2"],
        tokenizer_2=tokenizer_2,
        name=f"tiny-{arch}",
    )


def _seeded_modules(configs: dict, seed: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_modules(configs)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
                module = modules[name]
                if module is None:
                    continue
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.02)
                module.eval()
    return modules
