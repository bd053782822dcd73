"""Full fine-tuning: every UNet weight trains (optionally the text encoders too).

The Keras fine-tuning tutorial and diffusers' train_text_to_image.py train the UNet only, with the
VAE and text encoder frozen; kohya's fine_tune.py adds `--train_text_encoder`. EMA (loop option
`ema_decay`) keeps the averaged weights that are exported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stablekit.train.strategies.sd import SDStrategy


@dataclass
class FinetuneStrategy(SDStrategy):
    train_text_encoder: bool = False
    name: str = "finetune"

    def __post_init__(self):
        super().__post_init__()
        self.components.unet.requires_grad_(True)
        if self.train_text_encoder:
            for te in self.text_encoders():
                te.requires_grad_(True)

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        c = self.components
        named = {"unet": c.unet}
        if self.train_text_encoder:
            named.update({k: m for k, m in (("text_encoder", c.text_encoder), ("text_encoder_2", c.text_encoder_2))
                          if m is not None})
        return named

    def trainable_parameters(self):
        """Every trained weight; the text encoders' ones marked for `text_encoder_lr`."""
        from stablekit.train.optim import ParamGroups

        named = self.trained_modules()
        unet = [p for p in named.pop("unet").parameters() if p.requires_grad]
        return ParamGroups(unet, [p for m in named.values() for p in m.parameters() if p.requires_grad])

    def state_dict(self) -> dict:
        return {k: m.state_dict() for k, m in self.trained_modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.trained_modules().items():
            m.load_state_dict(state[k])
