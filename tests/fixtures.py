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


# ----------------------------------------------------------------------------- released-file layout
def ldm_schedule_buffers(configs: dict) -> dict[str, torch.Tensor]:
    """The 12 noise-schedule buffers LDM's DDPM.register_schedule stores in SD 1.x/2.x files
    (float32, computed in float64 as ldm/models/diffusion/ddpm.py does; v_posterior = 0)."""
    sched = configs["scheduler"]
    n = sched.get("num_train_timesteps", 1000)
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    cumprod = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - cumprod)
    buffers = {
        "betas": betas, "alphas_cumprod": cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - cumprod).log(), "sqrt_recip_alphas_cumprod": (1.0 / cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / cumprod - 1).sqrt(), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - cumprod),
    }
    return {k: v.float() for k, v in buffers.items()}


def ldm_extras(arch: str, configs: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors released LDM files hold that the diffusers modules have no place for, in tiny widths.

    SD 1.x (v1-5-pruned-emaonly): CLIP's position_ids + the schedule buffers. SD 2.x (v2-1_768-ema):
    the schedule buffers + OpenCLIP's last resblock (SD 2 conditions on the penultimate layer, so
    diffusers' text encoder has one layer fewer), `text_projection` (x @ W) and `logit_scale`.
    SDXL base: position_ids of the first encoder and `logit_scale` of the second (its
    text_projection is used). Same seed -> same tensors.
    """
    gen = torch.Generator().manual_seed(seed + 7)
    ids = torch.arange(77, dtype=torch.int64)[None]
    logit_scale = torch.tensor(4.6052)  # ln(1 / 0.07), OpenCLIP's init; shape [] as released
    if arch == "sdxl":
        return {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": ids,
                "conditioner.embedders.1.model.logit_scale": logit_scale}
    extras = ldm_schedule_buffers(configs)
    if arch == "sd1":
        extras["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ids
        return extras
    te = configs["text_encoder"]
    width, hidden, last = te["hidden_size"], te["intermediate_size"], te["num_hidden_layers"]
    block = f"cond_stage_model.model.transformer.resblocks.{last}."
    shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
              "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
              "ln_2.weight": (width,), "ln_2.bias": (width,), "mlp.c_fc.weight": (hidden, width),
              "mlp.c_fc.bias": (hidden,), "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,)}
    extras.update({block + k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()})
    extras["cond_stage_model.model.text_projection"] = torch.randn(width, te.get("projection_dim", width), generator=gen)
    extras["cond_stage_model.model.logit_scale"] = logit_scale
    return extras


# SDXL base 1.0 ships this kind of metadata (Stability's model spec); kept to check it survives.
SDXL_FILE_METADATA = {"modelspec.architecture": "stable-diffusion-xl-v1-base", "modelspec.title": "tiny"}


def tiny_ldm_file(arch: str, path, seed: int = 0, record: bool = True):
    """A tiny single file in the layout of the released checkpoints: tiny_components' weights in LDM
    keys plus `ldm_extras` (and SDXL's model-spec metadata). record=False leaves out stablekit's
    metadata record, as in a file from elsewhere; loading it then needs the tiny configs in place
    of the shipped ones (monkeypatch `stablekit.formats.single_file.shipped_configs`)."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    from stablekit.formats import save_model

    path = Path(path)
    save_model(tiny_components(arch, seed), path)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    tensors.update(ldm_extras(arch, tiny_configs(arch), seed))
    if not record:
        metadata.pop("stablekit", None)
    if arch == "sdxl":
        metadata.update(SDXL_FILE_METADATA)
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def tiny_controlnet(arch: str = "sd1", seed: int = 0):
    """A tiny seeded random diffusers ControlNetModel for `tiny_components(arch)`'s UNet: the real
    block structure (so the real key layouts), tiny widths; every tensor perturbed (zero
    convolutions included) so no two are equal. Same seed -> same weights."""
    from diffusers import ControlNetModel

    from stablekit.formats.controlnet import controlnet_config

    config = controlnet_config(tiny_configs(arch)["unet"])
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_config(config)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net.eval()


def a1111_text_only_png(source, dest, size=None):
    """A PNG whose only metadata is `source`'s A1111 "parameters" text (no stablekit record), as
    A1111 writes it; blank pixels of `size` (default: the source's size)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(source) as im:
        text, size = im.info["parameters"], size or im.size
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", size).save(dest, pnginfo=info)
    return dest
