"""The shapes world's own feature extractor for in-domain FID/KID (Inception needs a download).

A small CNN trained only on rendered images (stablekit.shapes.render) to read every attribute
(shape, color, background, size, position, hollow) and the continuous geometry (center,
diameter, rotation), and to measure how degraded the image is (blur radius, noise level). The
128 values before its heads are the features: they move when a distribution of images differs
in what is drawn, where, how large, or how cleanly, which is what FID should see in this world.
The judge's shape classifier is not enough (it sees only the silhouette, never color or place).

Train (a few minutes on 2 cores): `python -m stablekit.evaluate.shapes_features`; the weights
ship as shapes_features.safetensors (float16, about 460 KB) and load with no download.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablekit.errors import StablekitError
from stablekit.shapes.render import ALL_COLORS, ALL_SHAPES, POSITIONS, SIZES, render, sample_spec

WEIGHTS_PATH = Path(__file__).with_name("shapes_features.safetensors")
FEATURE_DIM = 128
# classification heads: name -> classes, in logit order
HEADS = {"shape": list(ALL_SHAPES), "color": list(ALL_COLORS), "background": list(ALL_COLORS),
         "size": list(SIZES), "position": list(POSITIONS), "hollow": [False, True]}
N_REGRESS = 6  # cx, cy, diameter, rotation, blur, noise (all scaled to about [-1, 1])


class ShapesFeatureNet(nn.Module):
    """64x64 RGB -> 128 features (+ heads used only in training). About 230k parameters; the first
    conv already strides (a full-resolution layer made training 3.5x slower for no use here)."""

    def __init__(self):
        super().__init__()
        chans = [(3, 32, 2), (32, 64, 2), (64, 64, 2), (64, 64, 2)]  # 64 -> 4 px
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, stride=s, padding=1) for i, o, s in chans)
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)  # flattened, not pooled: position matters
        self.heads = nn.Linear(FEATURE_DIM, sum(len(v) for v in HEADS.values()) + N_REGRESS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [n, 3, 64, 64] in [-1, 1]."""
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(F.silu(self.features(x)))


def _to_input(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1


class ShapesFeatures:
    """uint8 (or [0, 1] float) images [n, 64, 64, 3] -> features [n, 128] (float64)."""

    name = "shapes-features-v1"

    def __init__(self, path: str | Path | None = None, batch_size: int = 256):
        from safetensors.torch import load_file

        path = Path(path or WEIGHTS_PATH)
        if not path.is_file():
            raise StablekitError(f"shapes feature weights not found at {path}; "
                                 f"run `python -m stablekit.evaluate.shapes_features` to train them")
        from safetensors import safe_open

        state = {k: v.float() for k, v in load_file(str(path)).items()}
        # v2 files carry the features' RMS on renders: dividing by it puts KID's cubic kernel
        # (x.y/d + 1)^3 on an Inception-like scale (v1's raw features gave KIDs in the thousands)
        self.scale = float(state.pop("feature_scale")) if "feature_scale" in state else 1.0
        with safe_open(str(path), "pt") as f:
            self.name = (f.metadata() or {}).get("name", ShapesFeatures.name)
        self.model = ShapesFeatureNet()
        self.model.load_state_dict(state)
        self.model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        from stablekit.evaluate.fid import quantize

        images = quantize(images)
        if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
            raise StablekitError(f"the shapes feature extractor reads 64x64 RGB images, got shape "
                                 f"{images.shape[1:]}; use --features inception for other sizes")
        out = [self.model.features(_to_input(images[s:s + self.batch_size])).double().numpy() / self.scale
               for s in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


# ---- training -------------------------------------------------------------------------------

def _render_pool(n: int, seed: int):
    """n rendered images over every shape, color (teal too) and the outline style, with labels."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 64, 64, 3), np.uint8)
    labels = np.empty((n, len(HEADS)), np.int64)
    geometry = np.empty((n, 4), np.float32)
    for i in range(n):
        spec = sample_spec(rng, shapes=ALL_SHAPES, colors=tuple(ALL_COLORS), backgrounds=tuple(ALL_COLORS),
                           hollow=bool(rng.random() < 0.15))
        images[i] = render(spec)
        labels[i] = [HEADS[k].index(getattr(spec, k)) for k in HEADS]
        cx, cy = POSITIONS[spec.position]  # nominal place + jitter (shift-in of large objects ignored)
        geometry[i] = [(cx + spec.dx - 32) / 32, (cy + spec.dy - 32) / 32, spec.diameter / 18 - 1, spec.rotation / 10]
    return images, labels, geometry


def degrade(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Gaussian blur (sigma 0-2 px, half the batch) and noise (std 0-0.25, half the batch)
    on inputs in [-1, 1]; returns the images and the two amounts scaled to [-1, 1]."""
    n = len(x)
    blur = torch.where(torch.rand(n, generator=gen) < 0.5, torch.rand(n, generator=gen) * 2.0, torch.zeros(n))
    noise = torch.where(torch.rand(n, generator=gen) < 0.5, torch.rand(n, generator=gen) * 0.25, torch.zeros(n))
    r = torch.arange(-4, 5, dtype=torch.float32)
    k = torch.exp(-r[None] ** 2 / (2 * blur.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [n, 9]; sigma ~0 gives a delta
    xp = F.pad(x, (4, 4, 4, 4), mode="replicate").reshape(1, n * 3, 72, 72)
    kh = k.repeat_interleave(3, 0)
    x = F.conv2d(xp, kh[:, None, None, :], groups=n * 3)
    x = F.conv2d(x, kh[:, None, :, None], groups=n * 3).reshape(n, 3, 64, 64)
    x = x + noise[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.5, 1.5), torch.stack([blur - 1, noise * 8 - 1], 1)


def train(out: Path = WEIGHTS_PATH, n_images: int = 10000, steps: int = 1200, batch: int = 64,
          lr: float = 2e-3, seed: int = 0, init: Path | None = None, log=print) -> dict:
    """Train the extractor on freshly rendered images and save float16 weights to `out`
    (`init`: continue from saved weights, e.g. for a second round with a new seed)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    images, labels, geometry = _render_pool(n_images, seed)
    log(f"rendered {n_images} images in {time.time() - t0:.0f} s")
    x_all, y_all, g_all = _to_input(images), torch.from_numpy(labels), torch.from_numpy(geometry)
    model = ShapesFeatureNet()
    if init:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    sizes = [len(v) for v in HEADS.values()]
    for step in range(steps):
        idx = torch.randint(0, n_images, (batch,), generator=gen)
        x, amounts = degrade(x_all[idx], gen)
        out_ = model(x)
        logits = out_[:, :sum(sizes)].split(sizes, 1)
        # the shape is the hardest head (small objects are 14 px): weighted up
        ce = sum(F.cross_entropy(lg, y_all[idx, j]) * (3.0 if j == 0 else 1.0) for j, lg in enumerate(logits))
        target = torch.cat([g_all[idx], amounts], 1)
        mse = F.mse_loss(out_[:, sum(sizes):], target)
        loss = ce + 4 * mse
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.3f} (ce {ce.item():.3f}, mse {mse.item():.4f}) {time.time() - t0:.0f} s")
    report = check(model, seed + 1)
    log(f"held-out accuracy {report}")
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"name": ShapesFeatures.name, "steps": str(steps), "n_images": str(n_images),
                        "accuracy": str(report)})
    return report


@torch.no_grad()
def check(model: ShapesFeatureNet, seed: int, n: int = 1000) -> dict:
    """Per-attribute accuracy on n freshly rendered, undegraded images."""
    images, labels, _ = _render_pool(n, seed)
    model.eval()
    sizes = [len(v) for v in HEADS.values()]
    logits = model(_to_input(images))[:, :sum(sizes)].split(sizes, 1)
    model.train()
    return {k: round(float((lg.argmax(1).numpy() == labels[:, j]).mean()), 4) for j, (k, lg) in enumerate(zip(HEADS, logits))}


def finalize(path: Path, out: Path, name: str = "shapes-features-v2", n: int = 1000) -> dict:
    """Store the features' RMS on fresh renders as `feature_scale` (see ShapesFeatures) under `name`."""
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(path)).items() if k != "feature_scale"}
    net = ShapesFeatureNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    images, _, _ = _render_pool(n, 4242)
    with torch.no_grad():
        rms = float(net.features(_to_input(images)).pow(2).mean().sqrt())
    acc = check(net, seed=99, n=n)
    save_file({**state, "feature_scale": torch.tensor(rms, dtype=torch.float32)}, str(out),
              metadata={"name": name, "accuracy": str(acc), "feature_scale": f"{rms:.6g}"})
    return {"feature_scale": rms, "accuracy": acc}


def sensitivity(path: Path | None = None, n: int = 1000) -> dict:
    """FID of shifted rendered sets against a rendered reference, relative to the floor (two
    disjoint rendered sets): what the extractor notices. Ratios, so v1 and v2 compare."""
    from stablekit.evaluate.data import REFERENCE_SEED, shapes_reference
    from stablekit.evaluate.fid import fid
    from stablekit.shapes.captions import make_batch
    from stablekit.shapes.render import BASE_SHAPES

    feats = ShapesFeatures(path)
    a, b = shapes_reference(n).images, shapes_reference(n, seed=REFERENCE_SEED + 1).images
    fa = feats(a)
    floor = fid(fa, feats(b))
    no_star = tuple(x for x in BASE_SHAPES if x != "star")
    shifts = {
        "circles only": make_batch(n, seed=5, shapes=("circle",))[0],
        "no stars": make_batch(n, seed=8, shapes=no_star)[0],  # one base shape of the mix missing
        "hexagons mixed in": make_batch(n, seed=9, shapes=(*BASE_SHAPES, "hexagon"))[0],
        "small only": make_batch(n, seed=10, sizes=("small",))[0],
        "red only": make_batch(n, seed=6, colors=("red",))[0],
        "6 px off place": np.roll(b, 6, axis=2),
        "noise std 20/255": np.clip(b + np.random.default_rng(0).normal(0, 20, b.shape), 0, 255).astype(np.uint8),
    }
    out = {"name": feats.name, "floor": floor}
    out.update({k: round(fid(fa, feats(v)) / floor, 2) for k, v in shifts.items()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the shapes-world feature extractor for in-domain FID.")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="continue from these weights")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared CPU)")
    p.add_argument("--finalize", type=Path, default=None, metavar="WEIGHTS",
                   help="only add the feature scale to trained WEIGHTS and write --out (name shapes-features-v2)")
    p.add_argument("--sensitivity", type=Path, default=None, metavar="WEIGHTS",
                   help="only print FID of shifted rendered sets / the floor for WEIGHTS")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.finalize or args.sensitivity:
        print(finalize(args.finalize, args.out) if args.finalize else sensitivity(args.sensitivity))
        return 0
    train(args.out, n_images=args.images, steps=args.steps, seed=args.seed, init=args.init, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
