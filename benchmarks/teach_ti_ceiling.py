"""Can the frozen UNet draw a hexagon at all? A ceiling for textual inversion.

Textual inversion may only change a few token embeddings, which then pass through the frozen text
encoder. This experiment removes that bottleneck: the whole cross-attention context (77 x D, the
text encoder's output) is optimised directly with the diffusion loss on the 5 textual-inversion
hexagon images, the UNet and VAE frozen. `--mode per-image` gives each image its own context (the
most generous ceiling: each context only has to reproduce one image); `--mode shared` one context
for all five (what a token is asked to do). Then images are drawn from the learned contexts
through the public Pipeline (default sampler, CFG and negative) and the shapes judge reads them.
If even these contexts do not make the UNet draw hexagons, no textual inversion of this base
model can reach the target.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_ti_ceiling.py --mode per-image --steps 400
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stablekit
from stablekit.formats import load_model
from stablekit.generate.denoiser import alphas_cumprod_from_config
from stablekit.generate.pipeline import Pipeline
from stablekit.prompts.conditioning import Conditioning
from stablekit.shapes import teach_eval as te
from stablekit.shapes.judge import Judge
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies.diffusion import diffusion_loss
from stablekit.train.strategies.sd import _encode

GRIDS = Path(__file__).resolve().parents[1] / "docs" / "reports" / "teach"


def load_images(folder: Path) -> tuple[torch.Tensor, list[str], list[Image.Image]]:
    paths = sorted(folder.glob("*.png"))
    images = [Image.open(p).convert("RGB") for p in paths]
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2)
    return pixels / 127.5 - 1.0, captions, images


def with_context(pipe: Pipeline, context: torch.Tensor):
    """Make `pipe` condition every prompt on `context` [1, 77, D] (the negative is left alone)."""
    original = pipe.prompts.encode_pair_schedule

    def encode_pair_schedule(*args, **kwargs):
        cond, uncond = original(*args, **kwargs)
        return [(end, Conditioning(context.to(c.hidden_states), c.pooled)) for end, c in cond], uncond

    pipe.prompts.encode_pair_schedule = encode_pair_schedule
    return original


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("per-image", "shared"), default="per-image")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seeds", type=int, default=4, help="images drawn per learned context")
    ap.add_argument("--init", default="circle", help="the word replacing the token in the starting captions")
    ap.add_argument("--out", default="runs/teach")
    ap.add_argument("--name", default="", help="report / grid name (default ti-ceiling-MODE)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    c = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32)
    for m in (c.unet, c.vae, c.text_encoder):
        m.requires_grad_(False).eval()
    folder = te.render_method_data("textual-inversion", Path(args.out) / "data")["data"]
    pixels, captions, train_images = load_images(folder)
    start_text = [t.replace(te.TOKEN, args.init) for t in captions]
    if args.mode == "shared":
        start_text = [f"a {args.init}"]
    with torch.no_grad():
        vae = c.vae
        x0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        start, _ = _encode(c.text_encoder, c.tokenizer, start_text, "last")
    context = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([context], lr=args.lr)
    acp = alphas_cumprod_from_config(c.scheduler_config)
    losses = []
    for step in range(args.steps):
        rng = BatchRandom(torch.Generator().manual_seed(step))
        ctx = context if args.mode == "per-image" else context.expand(len(x0), -1, -1)
        loss, _ = diffusion_loss(c.unet, x0, ctx, rng, acp, c.prediction_type)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f}", flush=True)
    train_seconds = time.time() - t0
    judge = Judge.load()
    pipe = Pipeline(c, progress=False)
    drawn, asked, start_drawn = [], [], []
    for i in range(len(context)):
        original = with_context(pipe, context.detach()[i:i + 1])
        for s in range(args.seeds):
            drawn.append(pipe.generate("x", seed=s, steps=20)[0])
        pipe.prompts.encode_pair_schedule = original
        with_context(pipe, start.detach()[i:i + 1])  # the starting context: what the init word draws
        for s in range(args.seeds):
            start_drawn.append(pipe.generate("x", seed=s, steps=20)[0])
        pipe.prompts.encode_pair_schedule = original
        asked += [{"shape": "hexagon"}] * args.seeds
    verdicts, start_verdicts, train_verdicts = judge(drawn), judge(start_drawn), judge(train_images)
    report = {
        "mode": args.mode, "steps": args.steps, "lr": args.lr, "init": args.init, "contexts": len(context),
        "images": len(drawn), "final_loss_mean_last50": float(np.mean(losses[-50:])), "first_loss": losses[0],
        "hexagon_learned": te.score(verdicts, asked)["shape"],
        "hexagon_start": te.score(start_verdicts, asked)["shape"],
        "hexagon_training_images": te.score(train_verdicts, [{"shape": "hexagon"}] * len(train_images))["shape"],
        "shapes_learned": dict(Counter(v.get("shape") for v in verdicts)),
        "shapes_start": dict(Counter(v.get("shape") for v in start_verdicts)),
        "train_seconds": train_seconds, "total_seconds": time.time() - t0,
        "command": " ".join(["benchmarks/teach_ti_ceiling.py", *(argv or sys.argv[1:])]),
    }
    name = args.name or f"ti-ceiling-{args.mode}"
    te.write_report(Path(args.out) / f"{name}-report.json", report)
    GRIDS.mkdir(parents=True, exist_ok=True)
    te.grid(list(train_images) + [Image.new("RGB", train_images[0].size, (128, 128, 128))] * 3
            + drawn + start_drawn).save(GRIDS / f"{name}.png")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
