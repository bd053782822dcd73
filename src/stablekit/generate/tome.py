"""Token merging for Stable Diffusion (ToMe, Bolya & Hoffman 2023; the math of the `tomesd` package).

In the transformer blocks at the UNet's highest resolution(s), the tokens entering self-attention
are merged by bipartite soft matching: the image is cut into 2x2 cells, one token per cell is a
destination, and the `ratio` share of all tokens most similar (cosine, on the block's input) to a
destination are averaged into it; self-attention runs on the fewer tokens, and its output is copied
back to every merged position ("unmerge") before the residual add. Cross-attention and the MLP are
left alone, as tomesd's defaults. Destinations are each cell's top-left token, as A1111's built-in
"Token merging" (tomesd's use_rand=False: the random choice upsets some samplers), so images stay
a pure function of the seed. Lossy and opt-in: `generate(..., tome=0.5)`, `--tome 0.5`.

Implemented with hooks (the UNet records the latent size; each BasicTransformerBlock computes the
matching on its input; its attn1 merges its input and unmerges its output), so diffusers' forward
code is not copied and the hooks come off afterwards. The traced UNet (generate/traced.py) sees the
hooks and runs diffusers' forward while they are on.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from stablekit.errors import StablekitError


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def bipartite_soft_matching_2d(metric: torch.Tensor, w: int, h: int, r: int, sx: int = 2, sy: int = 2):
    """(merge, unmerge) functions for tokens [B, N = h*w, C]: merge removes the r tokens of the non-
    destination set most similar to a destination (averaging them into it); unmerge restores N tokens."""
    B, N, _ = metric.shape
    if r <= 0:
        return _identity, _identity
    with torch.no_grad():
        hsy, wsx = h // sy, w // sx
        # -1 marks each cell's destination (its top-left token), 0 the others; argsort puts dst first
        cells = torch.zeros(hsy, wsx, sy * sx, dtype=torch.int64, device=metric.device)
        cells[..., 0] = -1
        cells = cells.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if hsy * sy < h or wsx * sx < w:  # a ragged edge: those tokens are never destinations
            grid = torch.zeros(h, w, dtype=torch.int64, device=metric.device)
            grid[:hsy * sy, :wsx * sx] = cells
            cells = grid
        order = cells.reshape(1, -1, 1).argsort(dim=1, stable=True)
        num_dst = hsy * wsx
        a_idx, b_idx = order[:, num_dst:, :], order[:, :num_dst, :]  # sources, destinations

        def split(x):
            c = x.shape[-1]
            return (x.gather(1, a_idx.expand(B, N - num_dst, c)), x.gather(1, b_idx.expand(B, num_dst, c)))

        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(metric)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(-2, src_idx)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        n, t1, c = src.shape
        unm = src.gather(-2, unm_idx.expand(n, t1 - r, c))
        src = src.gather(-2, src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        c = unm.shape[-1]
        src = dst.gather(-2, dst_idx.expand(B, r, c))
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(-2, b_idx.expand(B, num_dst, c), dst)
        sources = a_idx.expand(B, a_idx.shape[1], 1)
        out.scatter_(-2, sources.gather(1, unm_idx).expand(B, unm_len, c), unm)
        out.scatter_(-2, sources.gather(1, src_idx).expand(B, r, c), src)
        return out

    return merge, unmerge


def check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise StablekitError(f"tome must be a ratio 0 <= r < 1 (got {ratio!r}): the share of tokens merged in "
                             "self-attention, e.g. 0.5; 0 turns it off")
    return float(ratio)


@contextmanager
def tome(unet, ratio: float, max_downsample: int = 1):
    """Token merging in `unet`'s self-attention for the duration (ratio 0: nothing changes).
    max_downsample: merge in blocks whose token grid is at most this much smaller than the latent
    (1: only the highest resolution, tomesd's and A1111's default; 2, 4, 8 reach deeper)."""
    ratio = check_ratio(ratio)
    if ratio <= 0:
        yield None
        return
    from diffusers.models.attention import BasicTransformerBlock

    state: dict = {"size": None, "calls": 0, "merged": 0}
    handles = [unet.register_forward_pre_hook(lambda m, args, kwargs: state.__setitem__(
        "size", tuple((args[0] if args else kwargs["sample"]).shape[-2:])), with_kwargs=True)]

    def block_pre(block, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        h, w = state["size"]
        downsample = int(math.ceil(math.sqrt(h * w // x.shape[1])))
        block._tome = (_identity, _identity)
        if downsample <= max_downsample:
            hh, ww = int(math.ceil(h / downsample)), int(math.ceil(w / downsample))
            if hh * ww == x.shape[1]:
                block._tome = bipartite_soft_matching_2d(x, ww, hh, int(x.shape[1] * ratio))
                state["merged"] += 1
        state["calls"] += 1

    def attn_pre(block):
        def hook(attn, args, kwargs):
            merge = block._tome[0]
            if args:
                return (merge(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": merge(kwargs["hidden_states"])}
        return hook

    def attn_post(block):
        return lambda attn, args, output: block._tome[1](output)

    try:
        for block in unet.modules():
            if isinstance(block, BasicTransformerBlock) and not getattr(block, "only_cross_attention", False):
                handles += [block.register_forward_pre_hook(block_pre, with_kwargs=True),
                            block.attn1.register_forward_pre_hook(attn_pre(block), with_kwargs=True),
                            block.attn1.register_forward_hook(attn_post(block))]
        yield state
    finally:
        for handle in handles:
            handle.remove()
        for block in unet.modules():
            if hasattr(block, "_tome"):
                del block._tome
