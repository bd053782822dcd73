"""DeepCache (Ma, Fang & Wang 2023, arXiv:2312.00858): reuse the UNet's deep features between steps.

Adjacent sampler steps change the UNet's deep (low-resolution) features very little. DeepCache
runs the whole UNet every N-th call and, in between, only its shallowest branch: conv_in, the
first down block, and the last up block, which is fed the output the second-to-last up block
produced at the last full call (the paper's uniform 1:N schedule, cache branch 0). Lossy: opt-in
as `deepcache=N` / `--deepcache N`; its prompt-adherence cost is measured in docs/reports/speed.md.

A full call is diffusers' own forward with a hook keeping the second-to-last up block's output; a cached call runs diffusers' forward steps for the shallow branch only
(`DeepCache.shallow`, checked equal to a full call on the same input in tests/test_deepcache.py).
When the UNet runs traced (generate/traced.py), both kinds of call are
traced too (the full one with the kept features as a second output) and cached the same way.
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
            fast = self._traced("full", sample, timestep, encoder_hidden_states, args, kwargs)
            if fast is not None:
                with torch.jit.optimized_execution(False):
                    out, self.cached = fast(sample, timestep, encoder_hidden_states)
                return _output(out, kwargs)
            handle = self.source.register_forward_hook(self._keep)
            try:
                return self.inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
            finally:
                handle.remove()
        self.stats["cached"] += 1
        fast = self._traced("shallow", sample, timestep, encoder_hidden_states, args, kwargs)
        if fast is not None:
            with torch.jit.optimized_execution(False):
                out = fast(sample, timestep, encoder_hidden_states, self.cached)
        else:
            out = self.shallow(sample, timestep, encoder_hidden_states, kwargs, self.cached)
        return _output(out, kwargs)

    def _traced(self, kind: str, sample, timestep, states, args, kwargs):
        """A TorchScript trace of the full call (returning the cached feature too) or of the shallow
        branch, when the UNet runs traced (generate/traced.py) and the call is one a trace covers."""
        from stablekit.generate.traced import TracedForward, installed

        tf = installed(self.unet) if not isinstance(self.inner, TracedForward) else self.inner
        if tf is None or not tf._unchanged():
            return None
        key = TracedForward._key(sample, timestep, states, args, {k: v for k, v in kwargs.items() if k != "return_dict"})
        if key is None:
            return None
        module = _Full(self.unet, tf.eager, self.source) if kind == "full" else _Shallow(self)
        inputs = (sample, timestep, states) if kind == "full" else (sample, timestep, states, self.cached)
        return tf.extra_trace((kind,) + key, module, inputs)

    def _keep(self, module, inputs, output) -> None:
        self.cached = output

    def shallow(self, sample, timestep, states, kwargs: dict, cached: torch.Tensor) -> torch.Tensor:
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
            h = last(hidden_states=cached, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=states,
                     cross_attention_kwargs=xattn)
        else:
            h = last(hidden_states=cached, temb=emb, res_hidden_states_tuple=skips)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


def _output(out, kwargs: dict):
    if kwargs.get("return_dict", True):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)
    return (out,)


class _Full(torch.nn.Module):
    """A full UNet call that also returns the second-to-last up block's output: traced, the hook's
    tensor becomes a second graph output."""

    def __init__(self, unet, forward, source):
        super().__init__()
        self.unet, self._forward, self._source = unet, forward, source

    def forward(self, sample, timestep, states):
        kept = []
        handle = self._source.register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            out = self._forward(sample, timestep, encoder_hidden_states=states, return_dict=False)[0]
        finally:
            handle.remove()
        return out, kept[0]


class _Shallow(torch.nn.Module):
    def __init__(self, dc: "DeepCache"):
        super().__init__()
        self.unet, self._dc = dc.unet, dc

    def forward(self, sample, timestep, states, cached):
        return self._dc.shallow(sample, timestep, states, {}, cached)


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
