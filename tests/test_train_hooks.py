"""The loop's hooks: on_step sees every step and may add metrics; should_stop saves and resumes exactly."""
import json

import torch

from stablekit.train.config import TrainConfig
from stablekit.train.loop import TrainHooks, train


class _Data:
    def __len__(self):
        return 8

    def get_batch(self, indices):
        x = torch.arange(len(indices), dtype=torch.float32)[:, None] + torch.as_tensor(indices, dtype=torch.float32)[:, None]
        return {"x": x}


class _Strategy:
    name = "toy"

    def __init__(self):
        self.w = torch.nn.Parameter(torch.zeros(1))

    def trainable_parameters(self):
        return [self.w]

    def loss(self, batch, rng):
        noise = rng.randn(batch["x"].shape[0], 1)  # the step's randomness must resume exactly too
        keep = (torch.rand(batch["x"].shape[0], 1) > 0.3).float()  # dropout-like: torch's global generator
        return ((self.w - batch["x"] * 0.1 * keep - 0.01 * noise) ** 2).mean(), {}

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])

    def samples(self, step):
        return None


def _cfg(tmp_path, name):
    return TrainConfig(out_dir=str(tmp_path / name), steps=6, batch_size=2, lr=0.1, warmup_steps=0,
                       checkpoint_every=100, sample_every=0, log_every=1, seed=3)


def test_on_step_adds_metrics_to_history_and_log(tmp_path):
    seen = []

    def on_step(step, row, strategy):
        seen.append(step)
        row["eval/w"] = float(strategy.w.detach())

    result = train(_cfg(tmp_path, "a"), _Strategy(), _Data(), progress=False, hooks=TrainHooks(on_step=on_step))
    assert seen == [1, 2, 3, 4, 5, 6]
    assert all("eval/w" in row for row in result["history"])
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/w"] for r in logged] == [r["eval/w"] for r in result["history"]]


def test_should_stop_saves_and_resume_matches_uninterrupted_run(tmp_path):
    full = train(_cfg(tmp_path, "full"), _Strategy(), _Data(), progress=False)
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] >= 2

    cfg = _cfg(tmp_path, "cut")
    first = train(cfg, _Strategy(), _Data(), progress=False, hooks=TrainHooks(should_stop=stop_after_two))
    assert first["stopped"] and first["step"] == 2
    resumed = train(cfg, _Strategy(), _Data(), progress=False)
    assert not resumed["stopped"] and resumed["step"] == 6
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
