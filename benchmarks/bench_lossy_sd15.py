"""What token merging and a tiny VAE decoder save at full size: SD 1.5 architecture (random weights).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_lossy_sd15.py \
        [--size 512] [--repeats 2] [--ratio 0.5]

One process, stablekit's default load (bf16 here), configurations taking turns: one UNet call
(batch 2, as with CFG) exact and with ToMe at --ratio, and the VAE decode of one image with the
model's VAE and with a tiny decoder of TAESD's real size (diffusers AutoencoderTiny defaults, 64
channels; random weights, so only its time means anything). Medians. Random weights say nothing
about quality: ToMe's cost in adherence is measured on the embedded model (bench_accelerators.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--workdir", default="/tmp/stablekit-peers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from diffusers import AutoencoderTiny
    from peers import make_sd15

    import stablekit
    from stablekit.generate.tome import tome

    folder, _ = make_sd15(Path(args.workdir))
    pipe = stablekit.load(folder, progress=False)
    c = pipe.components
    dtype = c.unet.dtype
    lat = args.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, lat, lat, generator=g).to(dtype)
    ctx = torch.randn(2, 77, 768, generator=g).to(dtype)
    t = torch.tensor([500.0, 500.0])
    z = torch.randn(1, 4, lat, lat, generator=g).to(dtype)
    tiny = AutoencoderTiny().to(dtype).eval()
    tiny.decoder.to(memory_format=torch.channels_last)

    def unet(ratio):
        def run():
            with tome(c.unet, ratio):
                return c.unet(x, t, encoder_hidden_states=ctx).sample
        return run

    runs = {"unet call exact": unet(0.0), f"unet call tome {args.ratio}": unet(args.ratio),
            "vae decode (model's VAE)": lambda: c.vae.decode(z / c.vae.config.scaling_factor).sample,
            "vae decode (tiny, TAESD size)": lambda: tiny.decode(z).sample}
    times = {k: [] for k in runs}
    outs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                outs[k] = fn()
                times[k].append(time.perf_counter() - t0)
    ref, merged = outs["unet call exact"].float(), outs[f"unet call tome {args.ratio}"].float()
    rel = ((merged - ref).norm() / ref.norm()).item()
    print(f"# SD 1.5 architecture (random weights), {args.size}x{args.size}, {pipe.acceleration.describe()}, 1 thread, "
          f"{args.repeats} rounds taking turns, {time.strftime('%Y-%m-%d %H:%M')} UTC, load average "
          f"{os.getloadavg()[0]:.1f} (CPU shared)")
    print("\n| part | median s | vs exact |\n|---|---|---|")
    base = {"unet": statistics.median(times["unet call exact"]),
            "vae": statistics.median(times["vae decode (model's VAE)"])}
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.2f} | {base['unet' if k.startswith('unet') else 'vae'] / m:.2f}x |")
    print(f"# ToMe {args.ratio}: relative L2 difference of the UNet output vs exact {rel:.4f}")


if __name__ == "__main__":
    main()
