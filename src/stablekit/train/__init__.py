"""The training core: one loop (loop.py), strategies for what differs between methods."""
from stablekit.train.config import TrainConfig
from stablekit.train.loop import train

__all__ = ["TrainConfig", "train"]
