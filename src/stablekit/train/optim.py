"""Optimizers and learning-rate schedules, chosen by name in TrainConfig.

Schedules follow diffusers.optimization (the names kohya's sd-scripts use too): linear warm-up,
then constant, linear, cosine, cosine with hard restarts (`lr_cycles` cycles) or polynomial
(`lr_power`) decay. One difference, kept on purpose: every decay ends at `min_lr_ratio * lr`
instead of 0 (min_lr_ratio = 0 gives diffusers' curves exactly, tested), and warm-up reaches
the full rate on its last step rather than one step after it.
"""
from __future__ import annotations

import math

import torch

from stablekit.train.config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of cfg.lr for optimizer update `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.lr_schedule == "linear":
        shape = 1 - progress
    elif cfg.lr_schedule == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.lr_schedule == "cosine_with_restarts":
        if progress >= 1.0:
            shape = 0.0
        else:
            shape = 0.5 * (1 + math.cos(math.pi * ((cfg.lr_cycles * progress) % 1.0)))
    elif cfg.lr_schedule == "polynomial":
        shape = (1 - progress) ** cfg.lr_power
    else:  # validate() has already refused it; keep the error local anyway
        raise ValueError(cfg.lr_schedule)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


class ParamGroups(list):
    """A strategy's trainable parameters: a plain list to the loop (clipping, EMA, all-reduce),
    which also remembers the text encoders' parameters so that `build_optimizer` can give them
    their own learning rate (`text_encoder_lr`, kohya's name) in a second parameter group, and
    `extra` (params, lr) pairs that get groups of their own at a fixed rate (DreamBooth's
    identifier rows at `identifier_lr`, train/pivotal.py)."""

    def __init__(self, main, text=(), extra=()):
        main, text = list(main), list(text)
        extra = [(list(ps), float(lr)) for ps, lr in extra]
        super().__init__(main + text + [p for ps, _ in extra for p in ps])
        self.text_ids = {id(p) for p in text}
        self.extra = extra


def param_groups(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> list[dict]:
    """Optimizer parameter groups: everything at cfg.lr, except that with text_encoder_lr > 0 the
    text encoders' parameters (a ParamGroups' text part) form a second group at that rate, and a
    ParamGroups' `extra` pairs follow as groups at their own rates. The main group comes first,
    so the loop's logged lr (group 0) stays the UNet's."""
    text_ids = getattr(params, "text_ids", set())
    extra = getattr(params, "extra", [])
    own = {id(p) for ps, _ in extra for p in ps}
    split = bool(cfg.text_encoder_lr > 0 and text_ids)
    main = [p for p in params if id(p) not in own and not (split and id(p) in text_ids)]
    groups = [{"params": main, "lr": cfg.lr}]
    if split:
        groups.append({"params": [p for p in params if id(p) in text_ids and id(p) not in own],
                       "lr": cfg.text_encoder_lr})
    groups += [{"params": ps, "lr": lr} for ps, lr in extra]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (torch), Adafactor (transformers; with an explicit lr, no relative step, so the
    schedule applies as for the others) or SGD with `momentum`. The LR schedule multiplies every
    group's own rate (see `param_groups`)."""
    params = param_groups(cfg, params)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
