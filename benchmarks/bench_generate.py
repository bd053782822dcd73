"""Generation speed: stablekit vs diffusers' StableDiffusionPipeline on the same model and sampler.

    .venv/bin/python benchmarks/bench_generate.py [--model PATH] [--steps 20] [--repeats 10]

One image, batch 1, CFG on, Euler with the same sigmas in both, warm (one untimed run first).
Prints a Markdown row per implementation with the median time and the ratio, and JSON with --json.
Absolute times on a shared 2-core machine are noisy; the ratio, measured in the same run, is the figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import stablekit
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from stablekit.generate.noise import ImageNoise

    pipe = stablekit.load(args.model, progress=False)
    c = pipe.components
    size = pipe.native_size
    prompt, negative = "a large red star on a blue background", ""
    ref = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=EulerDiscreteScheduler.from_config({**c.scheduler_config, "timestep_spacing": "linspace"}),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    latents = ImageNoise([1]).initial_latents(c.unet.config.in_channels, size // c.vae_scale_factor, size // c.vae_scale_factor)

    def ours():
        pipe.generate(prompt, negative_prompt=negative, steps=args.steps, cfg=7.0, sampler="Euler", schedule="Normal",
                      seed=1, width=size, height=size)

    def theirs():
        ref(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.0, height=size,
            width=size, latents=latents, output_type="pil")

    results = {}
    with torch.inference_mode():
        for name, fn in (("stablekit", ours), ("diffusers", theirs)):
            fn()  # warm-up
        times = {"stablekit": [], "diffusers": []}
        for _ in range(args.repeats):  # interleave so background load hits both alike
            for name, fn in (("stablekit", ours), ("diffusers", theirs)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        results[name] = statistics.median(ts)
    ratio = results["diffusers"] / results["stablekit"]
    if args.json:
        print(json.dumps({"model": str(args.model or "embedded"), "size": size, "steps": args.steps,
                          "threads": torch.get_num_threads(), "median_s": results, "speedup_vs_diffusers": ratio}))
        return
    print(f"| implementation | median s / image ({size}x{size}, {args.steps} steps, CFG, batch 1, {torch.get_num_threads()} threads) |")
    print("|---|---|")
    for name, t in results.items():
        print(f"| {name} | {t:.3f} |")
    print(f"\nstablekit is {ratio:.2f}x the speed of diffusers here")


if __name__ == "__main__":
    main()
