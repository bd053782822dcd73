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


def load(path: str | Path | None = None, *, device="auto", dtype="auto", arch: str | None = None,
         allow_pickle: bool = False, prediction_type: str | None = None, progress: bool = True,
         compile: bool = False, backend: str = "torch"):
    """Load a model (diffusers folder, single .safetensors; None: the embedded model) as a Pipeline.

    device: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N", "mps" or a
    torch.device (stablekit.devices.resolve_device). dtype: "auto" (default: the fastest exact
    path measured on this machine, bf16 where its kernels are faster for this model, else fp32;
    STABLEKIT_DTYPE overrides) or a torch dtype / name "fp32", "fp16", "bf16" (fp32: exactly the
    reference computation). compile: torch.compile the UNet and VAE decoder (slow first image).
    backend: "torch" (default) or "openvino": UNet calls compiled by OpenVINO for the CPU
    (generate/openvino_unet.py; needs `pip install openvino==2026.4.1`); there dtype is OpenVINO's
    precision (auto: bf16 where the CPU has bf16 kernels, else f32) and the torch modules stay fp32,
    except the VAE under dtype auto where the probe picks bf16 for this model (bf16, channels_last).
    The choice is in `pipe.acceleration` (generate/acceleration.py). Bad values are one-line
    StablekitErrors naming the argument.
    """
    from stablekit.devices import resolve_device
    from stablekit.errors import StablekitError
    from stablekit.formats import load_model
    from stablekit.generate.acceleration import apply, check_request, choose, unet_config_of
    from stablekit.generate.pipeline import Pipeline

    target = resolve_device(device)  # before the (slow) load: a bad device fails at once
    check_request(dtype)
    if path is not None and not isinstance(path, (str, Path)):
        raise StablekitError(f"path must be a file or folder path (got {path!r}); leave it out for the embedded model")
    if path is not None and not Path(path).exists():
        raise StablekitError(f"model {path} does not exist; give a .safetensors file or diffusers folder, "
                             "or leave out --model (path=None) to use the embedded shapes model")
    path = path or default_model_path()
    precision = _openvino_precision(backend, dtype, target, compile)  # before loading: a missing package fails at once
    # chosen before reading weights, so they are read straight into the chosen dtype
    unet_config = unet_config_of(path, arch, allow_pickle)
    acc = choose("fp32" if precision else dtype, target, unet_config, compile)
    vae_dtype = _openvino_vae(acc, precision, dtype, target, unet_config)
    components = load_model(path, arch=arch, dtype=acc.dtype, allow_pickle=allow_pickle,
                            prediction_type=prediction_type, component_dtypes=vae_dtype)
    pipe = Pipeline(components, progress=progress, device=target)
    apply(components, acc)
    if precision:
        from stablekit.generate import openvino_unet

        openvino_unet.install(components.unet, precision, openvino_unet.cache_root(), trace_fallback=bool(acc.trace))
        acc.backend, acc.openvino_precision = "openvino", precision
    pipe.acceleration = acc
    return pipe


def _openvino_vae(acc, precision, dtype, device, unet_config) -> dict | None:
    """With backend="openvino" and dtype auto, the VAE (which stays on torch) takes the torch
    default's bf16 + channels_last where the probe picks bf16 for this model: at SD 1.5 size, 512 px,
    on an AMX CPU the fp32 contiguous decode was 20.1 of the image's 84.6 CPU s against 4.2 in the
    torch default's bf16 (docs/reports/speed.md, Session 15). The UNet stays fp32 for OpenVINO's
    conversion and the bit-exact torch fallback; an explicit dtype keeps everything fp32 as before."""
    import torch

    from stablekit.generate.acceleration import choose, requested_dtype

    if not precision or requested_dtype(dtype) != "auto":
        return None
    torch_default = choose(dtype, device, unet_config)
    if torch_default.dtype != torch.bfloat16:
        return None
    acc.vae_channels_last = True
    acc.reason += "; VAE bf16 channels_last (the torch default's verdict for this model)"
    return {"vae": torch.bfloat16}


def _openvino_precision(backend, dtype, device, compile: bool) -> str | None:
    """OpenVINO's precision for backend="openvino" (None for torch); one-line errors for what it cannot do."""
    from stablekit.errors import StablekitError
    from stablekit.generate.openvino_unet import check_backend, choose_precision, import_openvino

    if check_backend(backend) == "torch":
        return None
    if device.type != "cpu":
        raise StablekitError(f"backend 'openvino' runs on the CPU (got device {device}); use device='cpu' or backend 'torch'")
    if compile:
        raise StablekitError("compile=True is torch.compile, for backend 'torch'; leave it out with backend 'openvino'")
    import_openvino()
    return choose_precision(dtype)


__all__ = ["load", "__version__"]


def __getattr__(name: str):
    """`stablekit.train(...)` without importing stablekit.train first (it pulls accelerate, so it
    stays out of `import stablekit`); the module itself is callable (train/__init__.py)."""
    if name == "train":
        import importlib

        return importlib.import_module("stablekit.train")
    raise AttributeError(f"module 'stablekit' has no attribute {name!r}")
