"""The training core: one loop (loop.py), strategies for what differs between methods, and the
methods users run (methods.py, run.py).

    import stablekit.train
    stablekit.train("lora", data="outline/", steps=800, rank=4)      # the module is callable
    stablekit.train.textual_inversion(data="hexagons/", token="<hexagon>", init_word="shape")

`stablekit.train.train(cfg, strategy, dataset)` is the bare loop (used by `shapes pretrain`).
"""
import sys
import types

from stablekit.train.config import TrainConfig
from stablekit.train.loop import train
from stablekit.train.methods import METHODS
from stablekit.train.run import run


def finetune(**settings) -> dict:
    """Full fine-tune (see stablekit.train.run)."""
    return run("finetune", **settings)


def lora(**settings) -> dict:
    """LoRA / LoCon (see stablekit.train.run)."""
    return run("lora", **settings)


def textual_inversion(**settings) -> dict:
    """Textual inversion (see stablekit.train.run)."""
    return run("textual-inversion", **settings)


def dreambooth(**settings) -> dict:
    """DreamBooth, full or with lora=True (see stablekit.train.run)."""
    return run("dreambooth", **settings)


class _CallableModule(types.ModuleType):
    # `stablekit.train(...)` reads like the tutorials while `stablekit.train.X` stays a package.
    def __call__(self, method: str, **settings) -> dict:
        return run(method, **settings)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["TrainConfig", "train", "run", "METHODS", "finetune", "lora", "textual_inversion", "dreambooth"]
