"""stablekit: Stable Diffusion in one offline toolkit.

    import stablekit
    pipe = stablekit.load()                      # the embedded shapes model
    pipe = stablekit.load("model.safetensors")   # or any SD 1.x / 2.x / SDXL file or diffusers folder
    images = pipe.generate("a large red star on a blue background", steps=20, cfg=7, seed=1, batch_size=3)
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

EMBEDDED_MODEL = Path(__file__).parent / "shapes" / "model" / "shapes.safetensors"


def default_model_path() -> Path:
    """The embedded default model (the shapes-world model trained by `stablekit shapes pretrain`)."""
    from stablekit.errors import StablekitError

    if not EMBEDDED_MODEL.exists():
        raise StablekitError(f"the embedded model {EMBEDDED_MODEL} is missing; pass --model PATH or run 'stablekit shapes pretrain'")
    return EMBEDDED_MODEL


def load(path: str | Path | None = None, *, device="auto", dtype=None, arch: str | None = None,
         allow_pickle: bool = False, prediction_type: str | None = None, progress: bool = True):
    """Load a model (diffusers folder, single .safetensors; None: the embedded model) as a Pipeline.

    device: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N", "mps" or a
    torch.device (stablekit.devices.resolve_device). dtype: torch dtype of the weights (default
    float32) or its name "fp32", "fp16", "bf16". Bad values are one-line StablekitErrors naming
    the argument.
    """
    import torch

    from stablekit.devices import resolve_device
    from stablekit.errors import StablekitError
    from stablekit.formats import load_model
    from stablekit.formats.weights import parse_dtype
    from stablekit.generate.pipeline import Pipeline

    target = resolve_device(device)  # before the (slow) load: a bad device fails at once
    if dtype is not None and not isinstance(dtype, (torch.dtype, str)):
        raise StablekitError(f"dtype must be a torch dtype such as torch.float32 or a name fp32, fp16, bf16 (got {dtype!r})")
    dtype = parse_dtype(dtype)
    if path is not None and not isinstance(path, (str, Path)):
        raise StablekitError(f"path must be a file or folder path (got {path!r}); leave it out for the embedded model")
    if path is not None and not Path(path).exists():
        raise StablekitError(f"model {path} does not exist; give a .safetensors file or diffusers folder, "
                             "or leave out --model (path=None) to use the embedded shapes model")
    components = load_model(path or default_model_path(), arch=arch, dtype=dtype or torch.float32,
                            allow_pickle=allow_pickle, prediction_type=prediction_type)
    return Pipeline(components, progress=progress, device=target)


__all__ = ["load", "__version__"]


def __getattr__(name: str):
    """`stablekit.train(...)` without importing stablekit.train first (it pulls accelerate, so it
    stays out of `import stablekit`); the module itself is callable (train/__init__.py)."""
    if name == "train":
        import importlib

        return importlib.import_module("stablekit.train")
    raise AttributeError(f"module 'stablekit' has no attribute {name!r}")
