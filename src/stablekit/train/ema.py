"""Exponential moving average of parameters (the weights diffusion models are sampled from)."""
from __future__ import annotations

import torch


class EMA:
    """Keeps a float32 shadow copy of `params`; `decay` warms up as min(decay, (1+n)/(10+n))."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_to(self, params) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)
        self.updates = state["updates"]
