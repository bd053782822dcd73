"""Fine-tune model 3's autoencoder so teal survives a round trip while palette latents stay put,
then write model 3 with that autoencoder (shapes.vae_anchor).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teal_vae_finetune.py \
        --out /work/runs/teal9/vae-anchored --export-to /work/runs/teal9/model [--steps 600 --anchor-weight 100]

Data: the first --images items of the pretraining stream (shapes.wordings.generated_batch, seed 0),
base shapes and palette colours only; --random-colours of each batch recoloured in random RGB.
Training goes through stablekit.train (checkpoints, exact resume: rerun the same command).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import stablekit
from stablekit.data.arrays import PixelData, image_grid, to_pixels, to_u8
from stablekit.formats import load_model
from stablekit.shapes.vae_anchor import AnchoredAutoencoderStrategy, latent_drift, save_with_vae
from stablekit.shapes.wordings import generated_batch
from stablekit.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(stablekit.EMBEDDED_MODEL), help="model whose autoencoder is tuned")
    ap.add_argument("--out", required=True, help="training run folder")
    ap.add_argument("--export-to", default=None, help="write the base model with the new autoencoder here")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--anchor-weight", type=float, default=300.0)
    ap.add_argument("--random-colours", type=float, default=0.5)
    ap.add_argument("--edge-weight", type=float, default=8.0)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    comps = load_model(args.base, dtype=torch.float32)
    vae = comps.vae
    latent_std = 1.0 / float(vae.config.scaling_factor)
    images, _, _ = generated_batch(args.images + 16, seed=0)
    held_out = to_pixels(np.concatenate([images[-8:], _teal_renders(8)]))

    def recon_grid(step):
        rec = vae.decode(vae.encode(held_out).latent_dist.mode()).sample
        return image_grid(to_u8(held_out) + to_u8(rec), cols=16)

    strategy = AnchoredAutoencoderStrategy(vae, sample_fn=recon_grid, edge_weight=args.edge_weight,
                                           random_colours=args.random_colours, anchor_weight=args.anchor_weight,
                                           latent_std=latent_std)
    tc = TrainConfig(out_dir=str(out), steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                     ema_decay=0.0, mixed_precision=args.mixed_precision, seed=0, checkpoint_every=100,
                     sample_every=200, threads=args.threads, weight_decay=0.0, log_every=10)
    result = train(tc, strategy, PixelData(images[:args.images], np.zeros(args.images, dtype=np.int64)))
    vae.eval()
    drift = latent_drift(vae, strategy.reference, to_pixels(images[-16:]), latent_std)
    print("held-out palette drift (latent stds):", json.dumps(drift))
    torch.save(vae.state_dict(), out / "final.pt")
    if args.export_to:
        record = {"base": str(args.base), "vae_finetune": {**vars(args), "step": result["step"]},
                  "note": "model 3 with its autoencoder fine-tuned by benchmarks/teal_vae_finetune.py"}
        save_with_vae(comps, vae.state_dict(), args.export_to, record)
        print("model ->", args.export_to)


def _teal_renders(n: int) -> np.ndarray:
    from stablekit.shapes.render import COLORS, render, sample_spec

    rng = np.random.default_rng(5)
    half = [sample_spec(rng, color="teal", backgrounds=COLORS) for _ in range(n // 2)]
    half += [sample_spec(rng, background="teal", colors=COLORS) for _ in range(n - n // 2)]
    return np.stack([render(s) for s in half])


if __name__ == "__main__":
    main()
