"""Contrastive image-text pretraining of a CLIP-architecture text encoder (Radford et al. 2021).

SD freezes a CLIP text encoder that was trained this way; we do the same on the target domain.
A small image encoder exists only to give the text encoder something to agree with and is
thrown away. The text side uses the pooled (end-of-text) state, as CLIP does.

Optional hard negatives (NegCLIP, Yuksekgonul et al. 2023): a batch may carry
`negative_input_ids` [B, K, L], captions known to be wrong for image i (one attribute changed).
They join image i's row of the image->text logits only, so they can never be false negatives
for another image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallImageEncoder(nn.Module):
    """Strided convs to 4x4, then a linear layer over the whole map: keeps *where* as well as *what*."""

    def __init__(self, dim: int, width: int = 32, image_size: int = 64):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        side = image_size // 16
        self.head = nn.Linear(chans[-1] * side * side, dim)

    def forward(self, x):
        return self.head(self.convs(x).flatten(1))


@dataclass
class ContrastiveTextStrategy:
    text_encoder: nn.Module  # transformers CLIPTextModel
    image_encoder: nn.Module
    embed_dim: int
    name: str = "text-encoder"
    text_projection: nn.Module = field(init=False)
    logit_scale: nn.Parameter = field(init=False)

    def __post_init__(self):
        hidden = self.text_encoder.config.hidden_size
        self.text_projection = nn.Linear(hidden, self.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # ln(1/0.07), CLIP's initial temperature

    def trainable_parameters(self):
        return (list(self.text_encoder.parameters()) + list(self.image_encoder.parameters())
                + list(self.text_projection.parameters()) + [self.logit_scale])

    def to(self, device) -> None:
        for m in (self.text_encoder, self.image_encoder, self.text_projection):
            m.to(device)
        with torch.no_grad():
            self.logit_scale.data = self.logit_scale.data.to(device)

    def loss(self, batch: dict, rng):
        self.text_encoder.train()
        self.image_encoder.train()
        img = F.normalize(self.image_encoder(batch["pixels"]).float(), dim=-1)
        txt = self._text(batch["input_ids"])
        # Identical captions in a batch are not negatives of each other's images.
        same = batch["caption_ids"][:, None] == batch["caption_ids"][None, :]
        scale = self.logit_scale.clamp(max=4.6052).exp()
        logits = scale * img @ txt.T
        target = same.float() / same.float().sum(1, keepdim=True)
        text_loss = F.cross_entropy(logits.T, target.T)
        stats = {}
        negatives = batch.get("negative_input_ids")
        if negatives is not None:
            b, k, length = negatives.shape
            neg = self._text(negatives.reshape(b * k, length)).reshape(b, k, -1)
            hard = scale * torch.einsum("bd,bkd->bk", img, neg)
            with torch.no_grad():
                stats["hard_acc"] = (logits.diagonal()[:, None] > hard).all(1).float().mean()
            logits = torch.cat([logits, hard], dim=1)
            target = torch.cat([target, torch.zeros_like(hard)], dim=1)
        loss = 0.5 * (F.cross_entropy(logits, target) + text_loss)
        with torch.no_grad():
            stats["acc"] = (logits[:, :len(txt)].argmax(1) == torch.arange(len(txt), device=logits.device)).float().mean()
        return loss, stats

    def _text(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_encoder(input_ids=input_ids).pooler_output
        return F.normalize(self.text_projection(pooled).float(), dim=-1)

    def state_dict(self) -> dict:
        return {
            "text_encoder": self.text_encoder.state_dict(),
            "image_encoder": self.image_encoder.state_dict(),
            "text_projection": self.text_projection.state_dict(),
            "logit_scale": self.logit_scale.detach().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.image_encoder.load_state_dict(state["image_encoder"])
        self.text_projection.load_state_dict(state["text_projection"])
        with torch.no_grad():
            self.logit_scale.copy_(state["logit_scale"])

    def samples(self, step: int):
        return None
