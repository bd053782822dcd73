"""Training strategies: what trains and what the loss is. The loop (train/loop.py) does the rest.

Registry by name so configs and the CLI pick a strategy with a string.
"""
from stablekit.train.strategies.autoencoder import AutoencoderStrategy
from stablekit.train.strategies.contrastive import ContrastiveTextStrategy
from stablekit.train.strategies.diffusion import DiffusionStrategy

STRATEGIES = {
    "autoencoder": AutoencoderStrategy,
    "contrastive-text": ContrastiveTextStrategy,
    "diffusion": DiffusionStrategy,
}

__all__ = ["STRATEGIES", "AutoencoderStrategy", "ContrastiveTextStrategy", "DiffusionStrategy"]
