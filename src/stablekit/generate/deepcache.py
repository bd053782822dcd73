"""DeepCache (Ma, Fang & Wang 2023, arXiv:2312.00858): reuse the UNet's deep features between steps.

Adjacent sampler steps change the UNet's deep (low-resolution) features very little. DeepCache
runs the whole UNet every N-th call and, in between, only its shallowest branch: conv_in, the
first down block, and the last up block, which is fed the output the second-to-last up block
produced at the last full call (the paper's uniform 1:N schedule, cache branch 0). Lossy: opt-in
as `deepcache=N` / `--deepcache N`; its prompt-adherence cost is measured in docs/reports/speed.md.

A full call is diffusers' own forward (traced or not) with a hook keeping the second-to-last up
block's output; a cached call runs diffusers' forward steps for the shallow branch only
(`DeepCache.shallow`, checked equal to a full call on the same input in tests/test_deepcache.py).
A sampling run is recognised by its timesteps: a call whose
timestep is not below the previous one (a new image, batch or hires pass) or with other shapes
runs in full and refills the cache. Calls with ControlNet / adapter residuals always run in full.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_FULL_ONLY = ("down_block_additional_residuals", "mid_block_additional_residual", "down_intrablock_additional_residuals",
              "attention_mask", "encoder_attention_mask")


class DeepCache:
    """The replacement `forward` of a UNet while DeepCache is on; `stats` counts full and cached calls."""

    def __init__(self, unet, interval: int):
        self.unet, self.interval = unet, int(interval)
        self.inner = unet.__dict__.get("forward") or type(unet).forward.__get__(unet)
        self.source = unet.up_blocks[-2]  # its output is the last up block's input: the cached feature
        self.cached: torch.Tensor | None = None
        self.last_t: float | None = None
        self.key: tuple | None = None
        self.count = 0
        self.stats = {"full": 0, "cached": 0}

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        key = (tuple(sample.shape), sample.dtype, tuple(getattr(encoder_hidden_states, "shape", ())))
        new_run = self.last_t is None or t >= self.last_t or key != self.key
        self.last_t, self.key = t, key
        self.count = 0 if new_run else self.count + 1
        full = (new_run or self.cached is None or self.count % self.interval == 0 or self.unet.config.addition_embed_type
                == "image_hint" or any(kwargs.get(k) is not None for k in _FULL_ONLY))
        if full:
            self.stats["full"] += 1
            handle = self.source.register_forward_hook(self._keep)
            try:
                return self.inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
            finally:
                handle.remove()
        self.stats["cached"] += 1
        out = self.shallow(sample, timestep, encoder_hidden_states, kwargs)
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _keep(self, module, inputs, output) -> None:
        self.cached = output

    def shallow(self, sample, timestep, states, kwargs: dict) -> torch.Tensor:
        """The UNet's shallowest branch on the cached deep features: diffusers' forward (steps 0-2, the
        first down block, the last up block, post-process) without the blocks in between."""
        u, xattn, added = self.unet, kwargs.get("cross_attention_kwargs"), kwargs.get("added_cond_kwargs")
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), kwargs.get("timestep_cond"))
        class_emb = u.get_class_embed(sample=sample, class_labels=kwargs.get("class_labels"))
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else emb + class_emb
        aug = u.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added)
        emb = emb + aug if aug is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        states = u.process_encoder_hidden_states(encoder_hidden_states=states, added_cond_kwargs=added)
        x = u.conv_in(sample)
        first, last = u.down_blocks[0], u.up_blocks[-1]
        if getattr(first, "has_cross_attention", False):
            h, res = first(hidden_states=x, temb=emb, encoder_hidden_states=states, cross_attention_kwargs=xattn)
        else:
            h, res = first(hidden_states=x, temb=emb)
        # the last up block reads the first len(resnets) skips: conv_in's and the first block's resnets'
        skips = ((x,) + tuple(res))[:len(last.resnets)]
        if getattr(last, "has_cross_attention", False):
            h = last(hidden_states=self.cached, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=states,
                     cross_attention_kwargs=xattn)
        else:
            h = last(hidden_states=self.cached, temb=emb, res_hidden_states_tuple=skips)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


@contextmanager
def deepcache(unet, interval: int):
    """DeepCache on `unet` for the duration (interval N: a full UNet call every N calls; N <= 1: off)."""
    if interval is None or interval <= 1 or len(unet.up_blocks) < 2:
        yield None
        return
    own = unet.__dict__.get("forward")
    dc = DeepCache(unet, interval)
    unet.forward = dc
    try:
        yield dc
    finally:
        if own is None:
            del unet.forward
        else:
            unet.forward = own
