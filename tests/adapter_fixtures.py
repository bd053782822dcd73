"""Tiny random adapters for the adapter tests (beside tests/fixtures.py, which builds the models).

`random_peft_lora(components, rank, seed)` gives PEFT-style state dicts ("<module>.lora_A.weight")
for the UNet attention/projection layers (and with conv=True the ResNet convolutions, LoCon) and
the text encoder(s), with lora_B non-zero so the adapter changes the output.
"""
from __future__ import annotations

import torch

from stablekit.formats.lora_keys import adaptable_modules

IDS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])  # "a photo of a cat"
UNET_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
               "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
CONV_LAYERS = ("conv1", "conv2")
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_targets(module, suffixes) -> dict:
    return {p: m for p, m in adaptable_modules(module).items() if p.endswith(suffixes)}


def _lora_state(targets: dict, rank: int, gen: torch.Generator, scale: float = 0.1) -> dict:
    state = {}
    for path, m in sorted(targets.items()):
        w = m.weight
        down_shape = (rank, *w.shape[1:])
        up_shape = (w.shape[0], rank, *([1] * (w.dim() - 2)))
        state[f"{path}.lora_A.weight"] = torch.randn(down_shape, generator=gen) * scale
        state[f"{path}.lora_B.weight"] = torch.randn(up_shape, generator=gen) * scale
    return state


def random_peft_lora(components, rank: int = 4, seed: int = 0, conv: bool = False, text: bool = True):
    """(unet_state, [text_state, (text_state_2)]) of a random LoRA for `components`."""
    gen = torch.Generator().manual_seed(seed)
    unet = lora_targets(components.unet, UNET_LAYERS + (CONV_LAYERS if conv else ()))
    unet_state = _lora_state(unet, rank, gen)
    texts = []
    if text:
        for enc in (components.text_encoder, components.text_encoder_2):
            if enc is not None:
                texts.append(_lora_state(lora_targets(enc, TEXT_LAYERS), rank, gen))
    return unet_state, texts


def unet_inputs(components, seed: int = 0, batch: int = 2):
    """Fixed (sample, timestep, encoder_hidden_states, added_cond_kwargs) for a UNet forward."""
    gen = torch.Generator().manual_seed(seed)
    cfg = components.unet.config
    sample = torch.randn(batch, cfg.in_channels, 8, 8, generator=gen)
    hidden = torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen)
    extra = None
    if components.is_sdxl:
        pooled = components.text_encoder_2.config.projection_dim
        extra = {"text_embeds": torch.randn(batch, pooled, generator=gen),
                 "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}
    return sample, torch.tensor([500] * batch), hidden, extra


@torch.no_grad()
def unet_out(components, inputs) -> torch.Tensor:
    sample, t, hidden, extra = inputs
    return components.unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=extra).sample


@torch.no_grad()
def text_out(encoder, ids: torch.Tensor) -> torch.Tensor:
    return encoder(input_ids=ids).last_hidden_state


def diffusers_pipe(c):
    """A diffusers StableDiffusion(XL)Pipeline sharing the modules of Components `c`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    sched = DDIMScheduler.from_config(c.scheduler_config)
    if c.is_sdxl:
        return StableDiffusionXLPipeline(vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2,
                                         tokenizer=c.tokenizer, tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=sched)
    return StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
