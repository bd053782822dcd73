"""What a text encoder hands the UNet, for one prompt (batch of 1) or a batch of prompts."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """hidden_states: [B, 77*k, D] cross-attention context (k = number of 75-token chunks).
    pooled: [B, D2] SDXL's pooled text embedding (the UNet's `text_embeds`), else None.
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat(self, n: int) -> "Conditioning":
        return Conditioning(
            self.hidden_states.repeat(n, 1, 1),
            None if self.pooled is None else self.pooled.repeat(n, 1),
        )

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        pooled = [c.pooled for c in items]
        return Conditioning(
            torch.cat([c.hidden_states for c in items]),
            None if pooled[0] is None else torch.cat(pooled),
        )
