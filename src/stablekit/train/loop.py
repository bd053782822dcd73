"""The one training loop. Reads top to bottom; what differs between methods is the strategy.

A strategy (see strategies/) says which parameters train, how a batch becomes a loss, and how
to draw a validation grid. The loop owns everything else: optimizer, LR schedule with warm-up,
gradient accumulation and clipping, EMA, mixed precision (through accelerate), atomic
checkpoints, exact resume, the progress bar, sample grids and the loss plot.

Exact resume: every source of randomness is derived from (seed, step) -- the data order from a
per-epoch permutation, the step's noise from a generator seeded by the step -- so a run killed
and resumed from a checkpoint follows the same loss curve as one that never stopped.
"""
from __future__ import annotations

import functools
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from stablekit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stablekit.train.config import TrainConfig
from stablekit.train.ema import EMA
from stablekit.train.plots import save_loss_plot


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def get_batch(self, indices: np.ndarray) -> dict: ...


class Strategy(Protocol):
    name: str

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def samples(self, step: int): ...  # a PIL image, or None


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant / linear / cosine decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    shape = 1 - progress if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def step_generator(seed: int, step: int) -> torch.Generator:
    # Distinct, reproducible stream per step; independent of how the run was split into pieces.
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class BatchOrder:
    """Example indices for any global position: a fresh permutation of the dataset per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count)
        return np.array([self._perm(int(p // self.n))[p % self.n] for p in pos])


@contextmanager
def ema_weights(ema: EMA | None):
    """Temporarily swap the EMA weights in (for sampling), then restore the trained ones."""
    if ema is None:
        yield
        return
    backup = [p.detach().clone() for p in ema.params]
    ema.copy_to(ema.params)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(ema.params, backup):
                p.copy_(b)


def train(cfg: TrainConfig, strategy: Strategy, dataset: Dataset, progress: bool = True) -> dict:
    """Run (or resume) training to cfg.steps. Returns {'step', 'history', 'run_dir'}."""
    from accelerate import Accelerator

    cfg.validate()
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"strategy": strategy.name, **cfg.to_dict()}, indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # accelerate keeps one process-wide state; reset it so stages with different precision can run in turn.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=True)

    params = strategy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    order = BatchOrder(len(dataset), cfg.seed)

    step, history = 0, []
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        strategy.load_state_dict(state["strategy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step, history = state["step"], state["history"]

    def save(step: int) -> None:
        state = {
            "step": step,
            "history": history,
            "config": cfg.to_dict(),
            "strategy": strategy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
        }
        save_checkpoint(run_dir, step, state, keep=cfg.keep_checkpoints)
        save_loss_plot(history, run_dir / "loss.png", title=f"{strategy.name}: loss")

    bar = tqdm(total=cfg.steps, initial=step, desc=strategy.name, disable=not progress, dynamic_ncols=True)
    t_last = time.time()
    while step < cfg.steps:
        generator = step_generator(cfg.seed, step)
        logs: dict = {}
        loss_total = 0.0
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size
            batch = dataset.get_batch(order.indices(first, cfg.batch_size))
            with accelerator.autocast():
                loss, logs = strategy.loss(batch, generator)
            accelerator.backward(loss / cfg.grad_accum)
            loss_total += float(loss.detach()) / cfg.grad_accum
        grad_norm = float(accelerator.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0 else 0.0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        step += 1
        history.append({"step": step, "loss": loss_total, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        **{k: float(v) for k, v in logs.items()}})
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            recent = [h["loss"] for h in history[-cfg.log_every:]]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{history[-1]['lr']:.2e}",
                            s_per_step=f"{(time.time() - t_last) / cfg.log_every:.2f}")
            t_last = time.time()
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
            with ema_weights(ema), torch.no_grad():
                grid = strategy.samples(step)
            if grid is not None:
                (run_dir / "samples").mkdir(exist_ok=True)
                grid.save(run_dir / "samples" / f"step-{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(step)
    bar.close()
    if ema is not None:  # leave the module holding the EMA weights: those are the ones to export
        ema.copy_to(ema.params)
    return {"step": step, "history": history, "run_dir": str(run_dir)}
