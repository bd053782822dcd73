"""The training loop: loss goes down, a killed run resumes exactly, checkpoints are atomic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import tiny_components

from stablekit.errors import StablekitError
from stablekit.train import TrainConfig, train
from stablekit.train.checkpoint import latest_checkpoint, list_checkpoints, save_atomic
from stablekit.train.loop import BatchOrder, lr_factor
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies import DiffusionStrategy


class LatentSet:
    """A few fixed latents with fixed text: small enough to overfit in a few dozen steps."""

    def __init__(self, n=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        # one flat colour per latent channel: structure a small UNet learns in a few dozen steps
        self.latents = torch.randn(n, 4, 1, 1, generator=g).expand(n, 4, 8, 8).clone()
        self.text = torch.randn(n, 77, 32, generator=g)
        self.uncond = torch.zeros(77, 32)

    def __len__(self):
        return len(self.latents)

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices))
        return {"latents": self.latents[idx], "text": self.text[idx], "uncond": self.uncond}


class Crash(Exception):
    pass


def _strategy(crash_at=None):
    unet = tiny_components("sd1").unet
    strategy = DiffusionStrategy(unet, {"prediction_type": "v_prediction"}, caption_dropout=0.1, snr_gamma=5.0)
    if crash_at is not None:  # simulate a kill: die in the middle of step `crash_at`
        real, calls = strategy.loss, {"n": 0}

        def loss(batch, rng):
            calls["n"] += 1
            if calls["n"] > crash_at:
                raise Crash()
            return real(batch, rng)

        strategy.loss = loss
    return strategy


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), steps=8, batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=3,
                sample_every=0, ema_decay=0.9, seed=3, keep_checkpoints=2)
    return TrainConfig(**{**base, **kw})


def test_loss_decreases(tmp_path):
    torch.set_num_threads(1)
    data, strategy = LatentSet(), _strategy()
    batch = data.get_batch(np.arange(len(data)))

    def held_loss():  # same noise, timesteps and dropout every time: only the weights change
        with torch.no_grad():
            return float(strategy.loss(batch, BatchRandom(torch.Generator().manual_seed(123)))[0])

    before = held_loss()
    train(_cfg(tmp_path, steps=40, checkpoint_every=40, batch_size=8, ema_decay=0.0, lr=5e-3), strategy, data,
          progress=False)
    after = held_loss()
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    full = train(_cfg(tmp_path / "a"), _strategy(), LatentSet(), progress=False)
    with pytest.raises(Crash):
        train(_cfg(tmp_path / "b"), _strategy(crash_at=7), LatentSet(), progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3, 6]
    resumed = train(_cfg(tmp_path / "b"), _strategy(), LatentSet(), progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    # and the final weights are identical
    ref = torch.load(latest_checkpoint(tmp_path / "a"), weights_only=True)["strategy"]["unet"]
    got = torch.load(latest_checkpoint(tmp_path / "b"), weights_only=True)["strategy"]["unet"]
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_partial_checkpoint_file_is_ignored(tmp_path):
    torch.set_num_threads(1)
    train(_cfg(tmp_path, steps=3), _strategy(), LatentSet(), progress=False)
    # a kill during a write leaves only a .tmp file: it is never taken for a checkpoint
    (tmp_path / "checkpoints" / "step-000009.pt.tmp").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path).name == "step-000003.pt"


def test_save_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "x.pt"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert not list(tmp_path.glob("*.tmp"))


def test_batch_order_is_a_permutation_per_epoch():
    order = BatchOrder(10, seed=1)
    epoch0 = order.indices(0, 10)
    assert sorted(epoch0.tolist()) == list(range(10))
    assert np.array_equal(order.indices(3, 4), epoch0[3:7])
    spanning = order.indices(8, 4)  # crosses into epoch 1
    assert spanning[:2].tolist() == epoch0[8:].tolist()


def test_lr_schedule_warmup_and_cosine_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 99) == pytest.approx(0.1, abs=0.01)


def test_config_rejects_unknown_settings(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('steps = 5\nlearning_rate = 0.1\n')
    with pytest.raises(StablekitError, match="learning_rate"):
        TrainConfig.from_toml(toml)
    toml.write_text('steps = 5\nlr = 0.1\nbetas = [0.9, 0.99]\n')
    assert TrainConfig.from_toml(toml).betas == (0.9, 0.99)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_lr_schedules_match_diffusers_after_warmup(schedule):
    from diffusers.optimization import get_scheduler

    from stablekit.train.optim import build_scheduler

    cfg = TrainConfig(steps=60, warmup_steps=10, lr=1.0, lr_schedule=schedule, min_lr_ratio=0.0, lr_cycles=3,
                      lr_power=2.0)
    ours = build_scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    ref = get_scheduler(schedule, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), num_warmup_steps=10,
                        num_training_steps=60, num_cycles=3, power=2.0)
    a, b = [], []
    for _ in range(60):
        a.append(ours.get_last_lr()[0])
        b.append(ref.get_last_lr()[0])
        ours.optimizer.step(), ours.step(), ref.optimizer.step(), ref.step()
    # diffusers' warm-up starts at 0 and peaks one step later; the decays agree (its polynomial
    # ends at lr_end = 1e-7 instead of 0)
    assert a[10:] == pytest.approx(b[10:], abs=2e-7)
    assert a[9] == 1.0 and a[0] == pytest.approx(0.1)
    if schedule == "cosine_with_restarts":  # three cycles: the rate jumps back up twice
        assert sum(y > x + 0.5 for x, y in zip(a[10:], a[11:])) == 2


@pytest.mark.parametrize("name,cls", [("adamw", "AdamW"), ("adafactor", "Adafactor"), ("sgd", "SGD")])
def test_optimizers_by_name_train(tmp_path, name, cls):
    from stablekit.train.optim import build_optimizer

    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = build_optimizer(TrainConfig(optimizer=name, lr=0.1, momentum=0.9), [p])
    assert type(opt).__name__ == cls
    (p**2).sum().backward()
    opt.step()
    assert float(p.detach().abs().max()) < 1.0


def test_metrics_jsonl_and_tensorboard_and_config_beside_checkpoints(tmp_path):
    torch.set_num_threads(1)
    train(_cfg(tmp_path, steps=4, checkpoint_every=2), _strategy(), LatentSet(), progress=False)
    rows = [__import__("json").loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    pytest.importorskip("tensorboard")
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    for step in (2, 4):
        import tomllib

        saved = tomllib.loads((tmp_path / "checkpoints" / f"step-{step:06d}.toml").read_text())
        assert saved["steps"] == 4 and saved["strategy"] == "unet"


def test_config_rejects_bad_choices():
    for bad in (dict(optimizer="lion"), dict(lr_schedule="cosine_restarts"), dict(device="tpu"),
                dict(mixed_precision="fp8")):
        with pytest.raises(StablekitError, match=list(bad.values())[0]):
            TrainConfig(**bad).validate()
    for bad in (dict(checkpoint_every=0), dict(log_every=0), dict(sample_every=-1), dict(keep_checkpoints=0)):
        with pytest.raises(StablekitError, match="checkpoint_every >= 1"):  # 0 once crashed the loop (modulo by 0)
            TrainConfig(**bad).validate()
