"""Tiny autoencoder decoding (opt-in, lossy): TAESD, as diffusers' `AutoencoderTiny`.

TAESD (madebyollin/taesd) is a small decoder (about 1.2 M parameters against the SD VAE decoder's
49 M) trained to decode the same latents; it works on the latents the UNet sees (scaled by the
VAE's scaling factor), so `decode` undoes stablekit's division by that factor before calling it.
Read from: a diffusers AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors),
a folder holding `taesd_decoder.safetensors` (the original release; also taesdxl_*), or one such
.safetensors file (original layout: keys "1.weight", "3.conv.0.weight", ... with a parameterless
Clamp at index 0 that diffusers folds into DecoderTiny.forward; or diffusers' "decoder.layers.*").
Only the decoder is used: img2img and inpainting still encode with the model's own VAE.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from stablekit.errors import StablekitError

if TYPE_CHECKING:
    import numpy as np

DECODER_FILES = ("taesd_decoder.safetensors", "taesdxl_decoder.safetensors", "diffusion_pytorch_model.safetensors")
_LOADED: dict[tuple, torch.nn.Module] = {}  # (real path, mtime, dtype, device) -> AutoencoderTiny


def decoder_file(path: Path) -> tuple[Path, dict]:
    """(weights file, AutoencoderTiny config overrides) for a --tiny-vae PATH."""
    if not path.exists():
        raise StablekitError(f"tiny VAE {path} does not exist; give a TAESD decoder .safetensors (taesd_decoder."
                             "safetensors) or a diffusers AutoencoderTiny folder")
    config: dict = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except ValueError as exc:
                raise StablekitError(f"cannot read {path / 'config.json'}: {exc}") from None
            if config.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
                raise StablekitError(f"{path} holds a {config['_class_name']}, not an AutoencoderTiny (TAESD); "
                                     "give a tiny autoencoder, or leave out --tiny-vae to use the model's VAE")
        found = [path / n for n in DECODER_FILES if (path / n).is_file()]
        if not found:
            raise StablekitError(f"{path} has no tiny VAE weights (expected one of {', '.join(DECODER_FILES)})")
        path = found[0]
    elif path.suffix.lower() != ".safetensors":
        raise StablekitError(f"tiny VAE {path.name}: only .safetensors is read (pickles can run code); "
                             "use taesd_decoder.safetensors or a diffusers AutoencoderTiny folder")
    return path, config


def decoder_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """The decoder's tensors under diffusers' AutoencoderTiny names ("decoder.layers.N...")."""
    from stablekit.formats.weights import open_weights

    wf = open_weights(file)
    keys = wf.keys()
    if any(k.startswith("decoder.layers.") for k in keys):
        return {k: wf.get(k) for k in keys if k.startswith("decoder.")}
    if "1.weight" in keys and len(wf.shape("1.weight")) == 4:  # original TAESD decoder: index 0 is Clamp
        out = {}
        for k in keys:
            index, _, rest = k.partition(".")
            if not index.isdigit() or int(index) < 1:
                raise StablekitError(f"{file}: unexpected key {k!r} for a TAESD decoder")
            out[f"decoder.layers.{int(index) - 1}.{rest}"] = wf.get(k)
        return out
    if "0.weight" in keys and wf.shape("0.weight")[1:2] == (3,):
        raise StablekitError(f"{file} is a TAESD encoder; give the decoder (taesd_decoder.safetensors)")
    raise StablekitError(f"{file} is not a TAESD / AutoencoderTiny decoder (no 'decoder.layers.*' or '1.weight' keys)")


def load_tiny_vae(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """A diffusers AutoencoderTiny with the decoder from `path` (encoder left empty), cached per file."""
    from diffusers import AutoencoderTiny

    file, config = decoder_file(Path(path))
    key = (os.path.realpath(file), file.stat().st_mtime_ns, dtype, str(device))
    if key in _LOADED:
        return _LOADED[key]
    state = decoder_state_dict(file)
    first = state.get("decoder.layers.0.weight")
    if first is None or first.dim() != 4:
        raise StablekitError(f"{file}: the decoder's first convolution (decoder.layers.0.weight) is missing")
    if not config:  # the original release: every block 64 wide; latent channels from the first conv
        width = first.shape[0]
        config = {"latent_channels": first.shape[1], "decoder_block_out_channels": (width,) * 4,
                  "encoder_block_out_channels": (width,) * 4}
    import inspect

    accepted = inspect.signature(AutoencoderTiny.__init__).parameters
    config = {k: v for k, v in config.items() if k in accepted}  # save_pretrained also writes derived keys
    with torch.device("meta"):
        module = AutoencoderTiny.from_config(config)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise StablekitError(f"{file}: the weights do not fit an AutoencoderTiny decoder ({str(exc).splitlines()[0]})") from None
    missing = [k for k in missing if k.startswith("decoder.")]
    if missing or unexpected:
        raise StablekitError(f"{file}: not a complete TAESD decoder (missing {missing[:3]}, unexpected {unexpected[:3]})")
    module.decoder.to(device=device, dtype=dtype)
    module.eval().requires_grad_(False)
    module.stablekit_name = Path(path).stem if Path(path).is_file() else Path(path).name
    _LOADED[key] = module
    return module


class TinyDecodingVAE:
    """The model's VAE with `decode` done by a tiny decoder; everything else (config, encode,
    parameters) is the model's VAE, so generate/steps.decode and img2img encoding work unchanged."""

    def __init__(self, base, tiny):
        self._base, self._tiny = base, tiny

    def __getattr__(self, name):
        return getattr(self._base, name)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        cfg = self._base.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        latents = (z.float() - shift) * cfg.scaling_factor  # steps.decode divided by it; TAESD wants UNet latents
        param = next(self._tiny.decoder.parameters())
        sample = self._tiny.decode(latents.to(param.device, param.dtype)).sample
        return SimpleNamespace(sample=sample) if return_dict else (sample,)


@contextmanager
def tiny_vae_decoding(components, path):
    """components.vae decodes with the tiny VAE at `path` for the duration (None: unchanged)."""
    if not path:
        yield None
        return
    from stablekit.components import module_dtype

    base = components.vae
    tiny = load_tiny_vae(path, module_dtype(base), next(base.parameters()).device)
    if tiny.config.latent_channels != base.config.latent_channels:
        raise StablekitError(f"tiny VAE {path} decodes {tiny.config.latent_channels}-channel latents but this model "
                             f"makes {base.config.latent_channels}-channel ones; use the TAESD made for this model")
    factor = tiny.config.upsampling_scaling_factor ** (len(tiny.config.decoder_block_out_channels) - 1)
    base_factor = 2 ** (len(base.config.block_out_channels) - 1)
    if factor != base_factor:
        raise StablekitError(f"tiny VAE {path} upscales latents {factor}x but this model's VAE {base_factor}x "
                             "(the images would come out the wrong size); use a tiny VAE made for this model")
    components.vae = TinyDecodingVAE(base, tiny)
    try:
        yield tiny
    finally:
        components.vae = base


def preview(components, latents: torch.Tensor, path) -> "np.ndarray":
    """Float images [B, H, W, 3] in [0, 1] from UNet-space latents (e.g. the `denoised` latents a
    generate() step callback receives) through the tiny decoder at `path`: a live preview for about
    the cost of one small convolution stack, without touching the model's VAE."""
    from stablekit.components import module_dtype

    base = components.vae
    tiny = load_tiny_vae(path, module_dtype(base), next(base.parameters()).device)
    param = next(tiny.decoder.parameters())
    with torch.no_grad():
        x = tiny.decode(latents.to(param.device, param.dtype)).sample.float()
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
