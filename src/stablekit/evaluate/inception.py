"""The FID Inception network (TensorFlow's inception-2015-12-05) built in code, weights from a file.

The weights are the ones pytorch-fid and torch-fidelity use: `pt_inception-2015-12-05-*.pth`, a
plain state dict ported from TensorFlow (load with torch.load(weights_only=True); a .safetensors
copy of the same dict works too). Module names match that dict, so loading needs no mapping.
The FID variant differs from torchvision's Inception v3 in three places (TF's graph): average
pools ignore the zero padding, and the last block's pool branch is a max pool. Features are the
2,048 values after the final average pool ("pool3"), for 299x299 inputs scaled as TF's graph
does, (x - 128) / 128 on [0, 255] (clean-fid's convention). Nothing here downloads anything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablekit.errors import StablekitError

FEATURE_DIM = 2048
WEIGHTS_HINT = ("get pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights) on a machine with "
                "internet and pass its path with --inception PATH, or use --features shapes in the shapes world")


class Conv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, as TF) + ReLU; named conv/bn as in the weights."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


def _row(cin, cout):  # 1x7
    return Conv(cin, cout, (1, 7), padding=(0, 3))


def _col(cin, cout):  # 7x1
    return Conv(cin, cout, (7, 1), padding=(3, 0))


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), _row(c7, c7), _col(c7, 192)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), _col(c7, c7)
        self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = _row(c7, c7), _col(c7, c7), _row(c7, 192)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b = x
        for i in range(1, 6):
            b = getattr(self, f"branch7x7dbl_{i}")(b)
        return torch.cat([self.branch1x1(x), a, b, self.branch_pool(_tf_avg_pool(x))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), _row(192, 192)
        self.branch7x7x3_3, self.branch7x7x3_4 = _col(192, 192), Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # TF's graph: the last block pools with max, the one before with avg
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """Inception v3 as in TF's FID graph; forward() returns the 2,048 pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weights file; unused for features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def read_state_dict(path: str | Path) -> dict:
    """A state dict from .pth/.pt (torch.load with weights_only=True: never unpickles code) or
    .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise StablekitError(f"Inception weights not found at {path}; {WEIGHTS_HINT}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user mistake
        raise StablekitError(f"cannot read Inception weights {path} ({type(exc).__name__}); {WEIGHTS_HINT}") from None
    if not isinstance(state, dict):
        raise StablekitError(f"{path} is not a state dict; {WEIGHTS_HINT}")
    return state


def load_inception(path: str | Path) -> FIDInception:
    """The FID Inception with the weights at `path`, in eval mode."""
    state = read_state_dict(path)
    model = FIDInception()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent in older saves
    if missing or unexpected:
        raise StablekitError(f"{path} is not the FID Inception state dict ({len(missing)} missing keys such as "
                             f"{(missing or unexpected)[0]!r}); {WEIGHTS_HINT}")
    return model.eval()


class InceptionFeatures:
    """uint8 images [n, H, W, 3] -> pool3 features [n, 2048], with clean-fid's resize."""

    name = "inception-2015-12-05"

    def __init__(self, path: str | Path, batch_size: int = 16):
        self.model = load_inception(path)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from stablekit.evaluate.fid import clean_resize, quantize

        images = quantize(images)
        out = []
        for s in range(0, len(images), self.batch_size):
            x = np.stack([clean_resize(im) for im in images[s:s + self.batch_size]])
            x = torch.from_numpy(x).permute(0, 3, 1, 2)
            out.append(self.model((x - 128.0) / 128.0).numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
