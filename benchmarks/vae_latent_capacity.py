"""Is it the latent or the encoder? Small shapes through the embedded autoencoder, decoded from
(a) the encoder's posterior mean and (b) a latent optimised for the decoder (start at the
posterior mean, Adam on the edge-weighted L1 + MSE reconstruction through the frozen decoder).

If (b) reads much better than (a), the 16x16x4 latent and the decoder can carry small shapes and
the loss is in what the encoder was trained to keep (the objective); if not, the latent (its
channels or resolution) or the decoder is the limit.

    .venv/bin/python benchmarks/vae_latent_capacity.py --n 240 --iters 150
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
import torch

import stablekit
from stablekit.shapes.captions import make_batch
from stablekit.shapes.judge import Judge
from stablekit.shapes.vae_loss import local_contrast


def judged(judge, x: torch.Tensor, specs) -> dict:
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    found = judge.judge(u8)
    acc = collections.defaultdict(list)
    for f, s in zip(found, specs):
        acc["shape"].append(f["shape"] == s.shape)
        acc["abstained"].append(f["shape"] is None)
        acc[f"shape {s.shape}"].append(f["shape"] == s.shape)
    return {k: round(float(np.mean(v)), 3) for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="small-shape renders (seed 777, base distribution)")
    ap.add_argument("--iters", type=int, default=150, help="Adam steps on the latents")
    args = ap.parse_args()
    torch.manual_seed(0)
    vae = stablekit.load(progress=False).components.vae.float().eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    images, _, specs = make_batch(args.n, seed=777, sizes=("small",))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    judge = Judge.load()
    t = time.time()
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mean
        rec0 = vae.decode(z0).sample
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    w = 1.0 + 8.0 * local_contrast(x)
    for _ in range(args.iters):
        rec = vae.decode(z).sample
        loss = (((rec - x).abs() + (rec - x) ** 2) * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rec1 = vae.decode(z).sample
    out = {"n": args.n, "iters": args.iters, "seconds": round(time.time() - t),
           "latent std (encoder / optimised)": [round(float(z0.std()), 3), round(float(z.std()), 3)],
           "encoder posterior mean": judged(judge, rec0, specs),
           "optimised latent": judged(judge, rec1, specs)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
