"""ESRGAN-family upscaler models for the hires fix: the two architectures, finding a model by its
A1111 name, and running one as A1111 does.

Architectures (module names are BasicSR's, so formats/upscalers.py's state dicts load as they are):
  RRDBNet: ESRGAN (Wang et al. 2018, arXiv:1809.00219), Real-ESRGAN's generator (Wang et al. 2021,
    arXiv:2107.10833); BasicSR basicsr/archs/rrdbnet_arch.py.
  CompactNet: Real-ESRGAN's SRVGGNetCompact (realesrgan/archs/srvgg_arch.py).
Names: a model file is known by its stem (A1111's ESRGAN folder lists "4x-UltraSharp" for
4x-UltraSharp.pth); Real-ESRGAN's released files by A1111's labels ("R-ESRGAN 4x+" for
RealESRGAN_x4plus.pth, modules/realesrgan_model.py), which are what A1111 writes as `Hires upscaler`.
Running follows A1111 v1.10 modules/upscaler.py (Upscaler.upscale, images.resize_image) and
upscaler_utils.py (upscale_pil_patch): the 8-bit image in BGR order, up to 3 passes of the model
until the target is reached, 8-bit after each, then Lanczos to the exact size. A1111 splits images
larger than its ESRGAN_tile setting (192 px) into overlapping tiles; stablekit runs the whole image
(A1111 with tile size 0), which is the same model without seams.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from stablekit.errors import StablekitError
from stablekit.formats.upscalers import SUFFIXES, UpscalerSpec, read_upscaler

ENV_DIR = "STABLEKIT_UPSCALER_DIR"
# the folders under a server's --models-dir that hold upscalers: A1111's models/ESRGAN and
# models/RealESRGAN (modules/esrgan_model.py, realesrgan_model.py), ComfyUI's models/upscale_models
MODELS_SUBDIRS = ("ESRGAN", "RealESRGAN", "upscale_models")
# A1111's labels for Real-ESRGAN's and ESRGAN's released models -> the file stems they are saved as
ALIASES = {
    "R-ESRGAN 4x+": ("RealESRGAN_x4plus",),
    "R-ESRGAN 4x+ Anime6B": ("RealESRGAN_x4plus_anime_6B",),
    "R-ESRGAN 2x+": ("RealESRGAN_x2plus",),
    "R-ESRGAN General 4xV3": ("realesr-general-x4v3",),
    "R-ESRGAN General WDN 4xV3": ("realesr-general-wdn-x4v3",),
    "R-ESRGAN AnimeVideo": ("realesr-animevideov3",),
    "ESRGAN_4x": ("ESRGAN_4x", "ESRGAN"),  # A1111 saves KAIR's ESRGAN.pth as ESRGAN_4x.pth
}
ALIAS_SCALES = {"R-ESRGAN 2x+": 2}  # A1111 lists every other ESRGAN-family model as 4x


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier output (dense connections);
    the last one's output scaled by 0.2 and added to the input."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        for i in range(5):
            out = features if i == 4 else growth
            setattr(self, f"conv{i + 1}", nn.Conv2d(features + i * growth, out, 3, 1, 1))

    def forward(self, x):
        outs = [x]
        for i in range(1, 5):
            outs.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(outs, 1)), 0.2))
        return self.conv5(torch.cat(outs, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled by 0.2 and added to the input."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(features, growth) for _ in range(3))

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator: conv_first, RRDB blocks and conv_body as a residual, then per 2x a
    nearest-neighbour upsample + conv + LeakyReLU(0.2), conv_hr + LeakyReLU, conv_last. With
    shuffle > 1 (Real-ESRGAN x2/x1) the input is reflect-padded to a multiple of it and
    pixel-unshuffled first, and the output cropped to the input size times the scale."""

    def __init__(self, in_channels=3, out_channels=3, features=64, blocks=23, growth=32, upsamples=2, shuffle=1):
        super().__init__()
        self.shuffle, self.scale = shuffle, 2 ** upsamples // shuffle
        self.conv_first = nn.Conv2d(in_channels * shuffle ** 2, features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.upsamples = upsamples
        for i in range(upsamples):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(features, features, 3, 1, 1))
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, out_channels, 3, 1, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.shuffle > 1:
            x = F.pad(x, (0, -w % self.shuffle, 0, -h % self.shuffle), mode="reflect")
            x = F.pixel_unshuffle(x, self.shuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.upsamples):
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{i + 1}")(up), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        return out[..., :h * self.scale, :w * self.scale] if self.shuffle > 1 else out


class CompactNet(nn.Module):
    """SRVGGNetCompact: conv + PReLU, `convs` x (conv + PReLU), a conv to out * scale**2 channels,
    pixel shuffle, plus the nearest-neighbour upscaled input (the network learns the residual)."""

    def __init__(self, in_channels=3, out_channels=3, features=64, convs=16, scale=4):
        super().__init__()
        self.scale = scale
        layers = [nn.Conv2d(in_channels, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, out_channels * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def build(spec: UpscalerSpec, path="the file") -> nn.Module:
    """The module of a read file with its weights, in eval mode; keys that do not fit are one line."""
    if spec.arch == "Compact":
        model = CompactNet(spec.in_channels, spec.out_channels, spec.features, spec.blocks, spec.scale)
    else:
        model = RRDBNet(spec.in_channels, spec.out_channels, spec.features, spec.blocks, spec.growth, spec.upsamples,
                        spec.shuffle)
    try:
        model.load_state_dict(spec.state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise StablekitError(f"{path} does not fit a {spec.describe()}: {detail}; the file is incomplete or another "
                             "architecture") from None
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def _cached(path: str, mtime_ns: int, size: int, device: str) -> nn.Module:
    return build(read_upscaler(path), path).to(device)


def load_upscaler(path, device="cpu") -> nn.Module:
    """The model in a file, built once per file version and device (the two most recent are kept)."""
    path = Path(path).resolve()
    stat = path.stat() if path.is_file() else None
    if stat is None:
        read_upscaler(path)  # the one-line "not found"
    return _cached(str(path), stat.st_mtime_ns, stat.st_size, str(torch.device(device)))


def upscaler_dirs(dirs=()) -> list[Path]:
    """The folders searched for models: the given ones, then $STABLEKIT_UPSCALER_DIR (os.pathsep-separated)."""
    found = [Path(d).expanduser() for d in dirs or ()]
    found += [Path(d).expanduser() for d in os.environ.get(ENV_DIR, "").split(os.pathsep) if d]
    return found


def models_dir_upscalers(models_dir) -> list[Path]:
    """A models folder's upscaler subfolders (MODELS_SUBDIRS), in that order; none for None."""
    return [Path(models_dir) / sub for sub in MODELS_SUBDIRS] if models_dir is not None else []


def a1111_name(path) -> str:
    """The name A1111 shows and writes for a model file: its label for Real-ESRGAN's and ESRGAN's
    released files, else the file stem."""
    stem = Path(path).stem
    for name, stems in ALIASES.items():
        if stem.lower() in (s.lower() for s in stems):
            return name
    return stem


def list_upscalers(dirs=()) -> list[tuple[str, Path]]:
    """(A1111 name, path) of every model file in the upscaler dirs (not recursive), sorted by name;
    the first file of a name wins."""
    found: dict[str, Path] = {}
    for folder in upscaler_dirs(dirs):
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if file.is_file() and file.suffix.lower() in SUFFIXES:
                    found.setdefault(a1111_name(file), file)
    return sorted(found.items(), key=lambda item: item[0].lower())


def lookup_upscaler(name_or_path, dirs=(), paths: bool = True) -> Path | None:
    """A model file by path, by A1111 label ("R-ESRGAN 4x+") or by file stem ("4x-UltraSharp"), in
    any case, searched in the upscaler dirs; None when there is none. paths=False: names only (a
    server's clients name a model in its folders, never a file on its disk)."""
    given = Path(str(name_or_path)).expanduser()
    if paths and given.is_file():
        return given
    wanted = str(name_or_path).strip().lower()
    for name, path in list_upscalers(dirs):
        if wanted in (name.lower(), path.stem.lower(), path.name.lower()):
            return path
    return None


def search_note(dirs=()) -> str:
    """Where models were looked for and what was found there, for one-line errors."""
    searched = [str(d) for d in upscaler_dirs(dirs)]
    if not searched:
        return (f"no upscaler dir given: --upscaler-dir DIR or ${ENV_DIR} (stablekit serve: --models-dir with "
                f"{', '.join(d + '/' for d in MODELS_SUBDIRS)})")
    found = [name for name, _ in list_upscalers(dirs)]
    return f"found in {', '.join(searched)}: {', '.join(found) or 'no .pth/.safetensors files'}"


def find_upscaler(name_or_path, dirs=()) -> Path:
    """lookup_upscaler, with an unknown name as one line listing what was found."""
    found = lookup_upscaler(name_or_path, dirs)
    if found is None:
        raise StablekitError(f"unknown upscaler model {str(name_or_path)!r} ({search_note(dirs)}); give a path to an "
                             "ESRGAN-family .pth/.safetensors file or put it in an upscaler dir")
    return found


def run_model(model: nn.Module, image: Image.Image) -> Image.Image:
    """One pass as A1111's upscale_pil_patch: the 8-bit image as BGR floats in [0, 1], the model,
    clamped, rounded back to 8-bit RGB."""
    param = next(model.parameters())
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
    with torch.inference_mode():
        out = model(torch.from_numpy(bgr)[None].to(param.device, param.dtype))[0]
    arr = (255.0 * np.moveaxis(out.float().cpu().clamp(0, 1).numpy(), 0, 2)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[:, :, ::-1]), "RGB")


def upscale_with_model(model: nn.Module, image: Image.Image, width: int, height: int) -> Image.Image:
    """The image at width x height as A1111's resize_image with a model upscaler: the model run until
    the image reaches int(size * scale) // 8 * 8 (at most 3 passes; a pass that changes nothing
    stops), Lanczos to that size, then Lanczos to width x height when they differ."""
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
        for _ in range(3):
            shape = image.size
            image = run_model(model, image)
            if image.size == shape or (image.width >= dest[0] and image.height >= dest[1]):
                break
        if image.size != dest:
            image = image.resize(dest, Image.LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return image


def _comfy_pad(model: nn.Module, x: Tensor) -> Tensor:
    """spandrel's size requirements for the two architectures (ESRGAN: at least 2 px, a multiple of 4
    with pixel-unshuffle; Compact: none), padded as its pad_tensor: reflect, then replicate."""
    if not isinstance(model, RRDBNet):
        return x
    multiple = 4 if model.shuffle > 1 else 1
    h, w = x.shape[-2:]
    pad_h, pad_w = (-(-max(2, size) // multiple) * multiple - size for size in (h, w))
    reflect_w, reflect_h = min(pad_w, w - 1), min(pad_h, h - 1)
    if reflect_w or reflect_h:
        x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_w - reflect_w or pad_h - reflect_h:
        x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x


def upscale_tensor(model: nn.Module, images: Tensor) -> Tensor:
    """An IMAGE [B, H, W, C] of floats in [0, 1] upscaled by the model's scale, as ComfyUI's
    ImageUpscaleWithModel (comfy_extras/nodes_upscale_model.py) runs a spandrel model: the RGB
    floats as they are (A1111's run_model feeds 8-bit BGR instead), one pass per image, padded as
    spandrel's ImageModelDescriptor pads and cropped back, clamped to [0, 1]; a 4th (alpha) channel is
    resized bilinearly. ComfyUI splits images larger than 512 px into 512 px tiles with 32 px of
    feathered overlap; stablekit runs the whole image, the same model without seams."""
    param = next(model.parameters())
    out = []
    for image in images[..., :3].movedim(-1, 1):
        x = image[None].to(param.device, param.dtype)
        h, w = x.shape[-2:]
        with torch.inference_mode():
            y = model(_comfy_pad(model, x)).clamp(0, 1)[..., :h * model.scale, :w * model.scale]
        out.append(y.float().cpu())
    upscaled = torch.cat(out).movedim(1, -1)
    if images.shape[-1] == 4:
        alpha = F.interpolate(images[..., 3:4].movedim(-1, 1).float(), size=upscaled.shape[1:3], mode="bilinear")
        upscaled = torch.cat((upscaled, alpha.movedim(1, -1)), dim=-1)
    return upscaled
