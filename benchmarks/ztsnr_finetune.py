"""Zero-terminal-SNR experiment for the background-colour failures (issue 13): fine-tune a finished
pretrain run's EMA UNet on its own cached latents and text, with the noise schedule as the only
difference between arms, then export a model for bg_colour_rate.py / `stablekit shapes eval`.

    nice -n 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ztsnr_finetune.py \
        --run /work/runs/shapes-v3 --out /work/runs/ztsnr/zero-snr --schedule zero-snr --steps 600
    ... --schedule sd (the control: the same fine-tune on SD's schedule, so "more steps" is separated)

Hypothesis: on SD's schedule the last training step keeps signal (SNR 0.0047 at t=999), so the UNet
learns to take the image's mean colour from the noisy latent, which the pure noise a sampler starts
from lacks (Lin et al. 2024). v-prediction is already the model's target. Resumable (same command).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from stablekit.data.arrays import LatentData
    from stablekit.formats import save_model
    from stablekit.shapes import architecture as arch
    from stablekit.shapes.pretrain import build_components, load_unet_from_checkpoint
    from stablekit.shapes.schedules import SCHEDULES
    from stablekit.train import TrainConfig, train
    from stablekit.train.strategies import DiffusionStrategy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="finished pretrain run (cache.pt, vae/, text/, unet/); "
                    "with --model, a folder for the data and cache (made if missing)")
    ap.add_argument("--model", default="", help="start from this exported model instead of the run's checkpoints")
    ap.add_argument("--out", required=True)
    ap.add_argument("--schedule", choices=tuple(SCHEDULES), required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--snr-gamma", type=float, default=0.0,
                    help="Min-SNR gamma; 0 (plain v loss, as Lin et al.): with v-prediction Min-SNR gives the "
                         "zero-SNR step weight 0, i.e. it would not learn the step the experiment is about")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--cfg", type=float, default=7.0, help="default CFG recorded in the exported model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run, out = Path(args.run), Path(args.out)
    if args.model:
        vae, te, unet, cache = from_model(Path(args.model), run)
        start = json.loads((Path(args.model).parent / "training.json").read_text()).get("unet_step", 0)
    else:
        cache = torch.load(run / "cache.pt", weights_only=True)
        vae, te = arch.build_vae(), arch.build_text_encoder()
        vae.load_state_dict(torch.load(run / "vae" / "final.pt", weights_only=True))
        te.load_state_dict(torch.load(run / "text" / "final.pt", weights_only=True))
        unet, start = load_unet_from_checkpoint(run)
    comps = build_components(vae, te, unet, float(cache["scaling_factor"]), args.schedule)
    strategy = DiffusionStrategy(unet, comps.scheduler_config, caption_dropout=0.1, snr_gamma=args.snr_gamma)
    data = LatentData(cache["latents"], cache["caption_index"].numpy(), cache["text"], cache["uncond"])
    tc = TrainConfig(out_dir=str(out / "unet"), steps=args.steps, batch_size=args.batch, lr=args.lr,
                     warmup_steps=50, ema_decay=args.ema, seed=1, checkpoint_every=100, sample_every=0,
                     threads=1, weight_decay=0.01, log_every=10, tensorboard=False)
    train(tc, strategy, data)  # leaves the EMA weights in `unet`
    comps = build_components(vae, te, unet, float(cache["scaling_factor"]), args.schedule)
    comps.extra["defaults"] = {"cfg": args.cfg}
    save_model(comps, out / "model" / "shapes.safetensors", to="single-file", dtype=torch.float16)
    (out / "model" / "finetune.json").write_text(json.dumps({**vars(args), "init_unet_step": start}, indent=2))
    print(f"exported {out / 'model' / 'shapes.safetensors'}")


def from_model(model: Path, run: Path):
    """The model's fp32 autoencoder, text encoder and UNet, and the training cache in `run`: the
    pretrain data stage with the model's recorded seed/count/word orders, then latents through the
    model's autoencoder scaled by its own scaling factor (not re-measured: the UNet was trained at it)."""
    from stablekit.data.arrays import to_pixels
    from stablekit.data.encode import encode_latents, encode_text
    from stablekit.formats import load_model
    from stablekit.shapes.pretrain import load_data, stage_data
    from stablekit.shapes.pretrain_config import PretrainConfig
    from stablekit.train.checkpoint import save_atomic

    c = load_model(str(model), dtype=torch.float32)
    recorded = json.loads((model.parent / "training.json").read_text())["config"]
    cfg = PretrainConfig(out=str(run), seed=recorded["seed"], n_images=recorded["n_images"],
                         caption_templates=recorded["caption_templates"])
    run.mkdir(parents=True, exist_ok=True)
    stage_data(cfg, run)
    path = run / "cache.pt"
    if not path.exists():
        images, captions, caption_index = load_data(run)
        scale = float(c.vae.config.scaling_factor)
        with torch.no_grad():
            starts = range(0, len(images), 500)
            latents = encode_latents(c.vae, (to_pixels(images[i:i + 500]) for i in starts), desc="cache: latents",
                                     total=len(starts))
            cache = {"latents": latents * scale, "scaling_factor": torch.tensor(scale),
                     "text": encode_text(c.text_encoder, c.tokenizer, captions, desc="cache: text"),
                     "uncond": encode_text(c.text_encoder, c.tokenizer, [""])[0],
                     "caption_index": torch.from_numpy(caption_index)}
        save_atomic(cache, path)
    cache = torch.load(path, weights_only=True)
    return c.vae, c.text_encoder, c.unet.train(), cache


if __name__ == "__main__":
    main()
