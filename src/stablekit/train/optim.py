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


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (torch), Adafactor (transformers; with an explicit lr, no relative step, so the
    schedule applies as for the others) or SGD with `momentum`."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
