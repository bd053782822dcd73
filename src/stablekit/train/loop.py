"""The one training loop. Reads top to bottom; what differs between methods is the strategy.

A strategy (see strategies/) says which parameters train, how a batch becomes a loss, and how
to draw a validation grid. The loop owns everything else: device (accelerate picks it), the
optimizer and LR schedule with warm-up, gradient accumulation and clipping, data-parallel
gradient averaging, EMA, mixed precision, atomic checkpoints, exact resume, the progress bar,
metrics (JSONL + TensorBoard), sample grids and the loss plot.

Exact resume: every source of randomness is derived from (seed, step) -- the data order from
the dataset's batch order, the step's noise from a generator seeded by the step -- so a run
killed and resumed from a checkpoint follows the same loss curve as one that never stopped.
Data parallel (`accelerate launch -m stablekit train ...`): see parallel.py for why N processes
give the result of one process with the same global batch.
"""
from __future__ import annotations

import functools
import inspect
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from stablekit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stablekit.train.config import TrainConfig, to_toml
from stablekit.train.ema import EMA
from stablekit.train.logs import MetricsLog
from stablekit.train.optim import build_optimizer, build_scheduler, lr_factor
from stablekit.train.parallel import BatchRandom, average_gradients, micro_generator
from stablekit.train.plots import save_loss_plot
from stablekit.train.precision import cast_frozen, resolve as resolve_precision

__all__ = ["train", "TrainHooks", "BatchOrder", "lr_factor", "Dataset", "Strategy"]


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def get_batch(self, indices: np.ndarray) -> dict: ...  # may also take a generator (CONTRACTS.md)


class Strategy(Protocol):
    name: str

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def loss(self, batch: dict, rng: BatchRandom) -> tuple[torch.Tensor, dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def samples(self, step: int): ...  # a PIL image, or None
    # optional: to(device), enable_gradient_checkpointing()


class BatchOrder:
    """Example indices for any global position: a fresh permutation of the dataset per epoch.
    Used when the dataset has no bucket-aware `batch_order(seed, batch_size)` of its own."""

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


def make_accelerator(cfg: TrainConfig, mixed_precision: str = "no"):
    """An Accelerator for cfg.device with `mixed_precision` resolved ("no" or "bf16"); under
    `accelerate launch` it also owns the process group."""
    import os

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state; reset it so stages with different precision can run
    # in turn. The process group of a launched run must survive, so keep it when there is one.
    AcceleratorState._reset_state(reset_partial_state=int(os.environ.get("WORLD_SIZE", "1")) <= 1)
    if cfg.device.startswith("cuda:"):
        torch.cuda.set_device(int(cfg.device.split(":")[1]))
    return Accelerator(mixed_precision=mixed_precision, cpu=cfg.device == "cpu")


@dataclass
class TrainHooks:
    """What a caller (server job, eval-in-training, a notebook) may attach to the loop.

    on_step(step, row, strategy): after every optimizer step, before the row is logged; it may
    add metrics to `row` (they are logged and kept in the history). Runs on the main process.
    should_stop(): checked after every step; True saves a checkpoint at that step and returns
    with "stopped": True, so a cancelled run resumes later exactly where it stopped.
    """

    on_step: Callable[[int, dict, "Strategy"], None] | None = None
    should_stop: Callable[[], bool] | None = None


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_reader(dataset):
    """dataset.get_batch, given a generator when it takes one (caption shuffle / dropout)."""
    takes_generator = len(inspect.signature(dataset.get_batch).parameters) >= 2
    return lambda idx, g: dataset.get_batch(idx, g) if takes_generator else dataset.get_batch(idx)


def train(cfg: TrainConfig, strategy: Strategy, dataset: Dataset, progress: bool = True,
          record: dict | None = None, hooks: TrainHooks | None = None) -> dict:
    """Run (or resume) training to cfg.steps. Returns {'step', 'history', 'run_dir', 'stopped',
    'mixed_precision' (what was used, and why)}.

    record: the resolved run configuration (method settings and all) to store in every
    checkpoint and write beside it as TOML; by default cfg itself. hooks: see TrainHooks.
    """
    hooks = hooks or TrainHooks()
    cfg.validate()
    if len(dataset) == 0:
        from stablekit.errors import StablekitError

        raise StablekitError("the training dataset is empty; give a folder, CSV, metadata.jsonl or TOML with images")
    run_dir = Path(cfg.out_dir)
    record = dict(record or {"strategy": strategy.name, **cfg.to_dict()})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    unet = getattr(getattr(strategy, "components", None), "unet", None)
    precision, why = resolve_precision(cfg.mixed_precision, cfg.device, dict(unet.config) if unet is not None else None)
    record.setdefault("mixed_precision_used", f"{precision} ({why})")
    accelerator = make_accelerator(cfg, precision)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(record, indent=2))
    if hasattr(strategy, "to"):
        strategy.to(accelerator.device)
    if precision == "bf16" and unet is not None:
        cast_frozen(unet)  # after .to(device): the weights that never train, read in bf16 (precision.py)
    if progress and main and unet is not None:
        tqdm.write(f"{strategy.name}: mixed precision {record['mixed_precision_used']}")
    if cfg.gradient_checkpointing and hasattr(strategy, "enable_gradient_checkpointing"):
        strategy.enable_gradient_checkpointing()

    params = strategy.trainable_parameters()
    optimizer = build_optimizer(cfg, params)
    scheduler = build_scheduler(cfg, optimizer)
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    micro_batch = cfg.batch_size * world  # one micro-step's global batch
    order = (dataset.batch_order(cfg.seed, micro_batch) if hasattr(dataset, "batch_order")
             else BatchOrder(len(dataset), cfg.seed))
    read = _batch_reader(dataset)

    step, history, stopped = 0, [], False
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        strategy.load_state_dict(state["strategy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step, history = state["step"], state["history"]
    log = MetricsLog(run_dir, step, tensorboard=cfg.tensorboard) if main else None

    def save(step: int) -> None:
        state = {
            "step": step,
            "history": history,
            "config": record,
            "strategy": strategy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
        }
        path = save_checkpoint(run_dir, step, state, keep=cfg.keep_checkpoints)
        path.with_suffix(".toml").write_text(to_toml(record))
        save_loss_plot(history, run_dir / "loss.png", title=f"{strategy.name}: loss")

    bar = tqdm(total=cfg.steps, initial=step, desc=strategy.name, disable=not (progress and main), dynamic_ncols=True)
    while step < cfg.steps:
        logs: dict = {}
        loss_total = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * micro_batch
            indices = np.asarray(order.indices(first, micro_batch))[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
            generator = micro_generator(cfg.seed, step, micro)
            data_generator = micro_generator(cfg.seed + 7919 * (rank + 1), step, micro)
            batch = _to_device(read(indices, data_generator), accelerator.device)
            rng = BatchRandom(generator, rank * cfg.batch_size, (rank + 1) * cfg.batch_size, micro_batch,
                              accelerator.device)
            # torch's global generator too (dropout in LoRA / text encoders draws from it): seeded by
            # (seed, step, micro, rank) so a resumed run draws what an unbroken one would have
            torch.manual_seed((cfg.seed * 1_000_003 + step * 1_009 + micro + 7_919 * (rank + 1)) % (2**63))
            with accelerator.autocast():
                loss, logs = strategy.loss(batch, rng)
            (loss / cfg.grad_accum).backward()
            loss_total += loss.detach().float() / cfg.grad_accum
        average_gradients(params, world)
        if world > 1:
            torch.distributed.all_reduce(loss_total)
            loss_total /= world
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0 else 0.0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        step += 1
        history.append({"step": step, "loss": float(loss_total), "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        **{k: float(v) for k, v in logs.items()}})
        bar.update(1)
        if main and hooks.on_step is not None:
            hooks.on_step(step, history[-1], strategy)
        if main:
            log.write(history[-1])
        if step % cfg.log_every == 0 or step == cfg.steps:
            recent = [h["loss"] for h in history[-cfg.log_every:]]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{history[-1]['lr']:.2e}")
        if main and cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
            with ema_weights(ema), torch.no_grad():
                grid = strategy.samples(step)
            if grid is not None:
                (run_dir / "samples").mkdir(exist_ok=True)
                grid.save(run_dir / "samples" / f"step-{step:06d}.png")
                log.image("samples", grid, step)
        saved = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if main and saved:
            save(step)
        if step < cfg.steps and hooks.should_stop is not None and hooks.should_stop():
            if main and not saved:  # a cancelled run must resume where it stopped, not at the last checkpoint
                save(step)
            stopped = True
            break
    bar.close()
    if log is not None:
        log.close()
    if ema is not None:  # leave the module holding the EMA weights: those are the ones to export
        ema.copy_to(ema.params)
    accelerator.wait_for_everyone()
    return {"step": step, "history": history, "run_dir": str(run_dir), "stopped": stopped,
            "mixed_precision": record["mixed_precision_used"]}
