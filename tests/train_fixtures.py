"""A small in-memory dataset implementing the training-data contract (CONTRACTS.md), for the
method tests until stablekit.data is merged: pixels in [-1, 1], captions, is_reg, keys, batch_order."""
from __future__ import annotations

import copy

import numpy as np
import torch


class TinyImages:
    """n images of flat colour blocks (64x64 by default) with captions; deterministic."""

    def __init__(self, n=4, size=64, captions=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
        self.pixels = colour.expand(n, 3, size, size).clone()
        self.pixels[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] *= -1  # a square in the middle
        self.captions = captions or [f"a picture number {i}" for i in range(n)]
        self.batch_order_calls = []

    def __len__(self):
        return len(self.pixels)

    def get_batch(self, indices, generator=None):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return {"pixels": self.pixels[idx], "captions": [self.captions[i] for i in idx.tolist()],
                "is_reg": torch.zeros(len(idx), dtype=torch.bool), "keys": [f"img{i}" for i in idx.tolist()]}

    def batch_order(self, seed, batch_size):
        from stablekit.train.loop import BatchOrder

        self.batch_order_calls.append((seed, batch_size))
        return BatchOrder(len(self), seed)


class FolderImages(TinyImages):
    """Images + same-name .txt captions from a folder, at their own (equal) size: a stand-in for
    stablekit.data.load_dataset in subprocess tests while the DATA branch is not merged."""

    def __init__(self, folder):
        from pathlib import Path

        from PIL import Image

        paths = sorted(Path(folder).glob("*.png"))
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths]
        self.pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        self.captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
        self.batch_order_calls = []


def write_folder(folder, n=8, size=64, seed=0):
    """n PNGs with .txt captions (what `stablekit shapes render` writes); returns the folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    data = TinyImages(n=n, size=size, seed=seed)
    for i in range(n):
        arr = ((data.pixels[i].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(data.captions[i])
    return folder


_BUILT: dict = {}


def tiny(arch: str = "sd1"):
    """tiny_components(arch), built once per session and deep-copied (building costs seconds)."""
    from fixtures import tiny_components

    if arch not in _BUILT:
        _BUILT[arch] = tiny_components(arch)
    return copy.deepcopy(_BUILT[arch])


def snapshot(components) -> dict[str, torch.Tensor]:
    """Every weight of every model module, cloned ("unet.<key>", "text_encoder.<key>", ...)."""
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(components, name)
        if module is not None:
            out.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return out
