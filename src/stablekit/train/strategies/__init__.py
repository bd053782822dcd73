"""Training strategies: what trains and what the loss is. The loop (train/loop.py) does the rest.

The pretraining stages (autoencoder, contrastive text encoder, diffusion) are used directly by
`stablekit.shapes.pretrain`; the user-facing methods (finetune, lora, textual-inversion,
dreambooth) are picked by name through `stablekit.train.methods.METHODS`.
"""
from stablekit.train.strategies.autoencoder import AutoencoderStrategy
from stablekit.train.strategies.contrastive import ContrastiveTextStrategy
from stablekit.train.strategies.diffusion import DiffusionStrategy, diffusion_loss

__all__ = ["AutoencoderStrategy", "ContrastiveTextStrategy", "DiffusionStrategy", "diffusion_loss"]
