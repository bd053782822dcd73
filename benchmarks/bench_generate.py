"""Generation speed: stablekit vs diffusers' StableDiffusionPipeline, same weights and sampler, one process.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generate.py [--model PATH]
        [--steps 20] [--repeats 5] [--threads 1] [--size N] [--configs ...] [--json OUT]
        [--save-images DIR] [--reference NPY]

A full-size model one configuration per process (clean peak RSS per configuration; PSNR against
diffusers' image saved by an earlier process):

    python benchmarks/bench_generate.py --model sd15/diffusers --size 256 --steps 10 --repeats 2 \
        --configs diffusers --save-images imgs
    python benchmarks/bench_generate.py ... --configs stablekit-openvino --save-images imgs \
        --reference imgs/diffusers.npy

One image, batch 1, CFG 7, Euler with the same sigmas and the same start latents everywhere, warm
(one untimed image first; trace / compile time is printed separately). diffusers loads its own
copy of the model from the diffusers folder with its defaults (fp32), so nothing stablekit does to
its modules reaches it. Configurations take turns (A B C, A B C, ...) so load drifts on a shared
machine hit all alike; the table gives medians, the ratio to diffusers and PSNR against diffusers'
image. Configurations: diffusers (fp32 defaults), diffusers-tuned (bf16 + channels_last),
stablekit (the default: `stablekit.load(path)`), stablekit-eager (the default without the UNet
trace), stablekit-fp32, stablekit-compile, and the lossy accelerators stablekit-deepcache-N,
stablekit-tome-R, stablekit-tiny-vae=PATH; stablekit's OpenVINO backend (generate/openvino_unet.py):
stablekit-openvino (dtype auto: bf16 where OpenVINO has bf16 kernels, else f32), stablekit-openvino-f32,
stablekit-openvino-bf16 (its first image converts, or loads the model cached by an earlier run). Peer rows: diffusers-openvino and diffusers-openvino-bf16
are diffusers' pipeline with its UNet replaced by OpenVINO's own compile of the same module
(`openvino.convert_model`, 1 inference thread, precision hint f32 / bf16): optimum-intel does not
install beside this stack (docs/reports/speed.md), the bare `openvino` wheel does; give its folder
with --peer-path if it is not installed (`pip install --target DIR --no-deps openvino openvino-telemetry`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

PROMPT, NEGATIVE, CFG, SEED = "a large red star on a blue background", "", 7.0, 1
EMBEDDED = Path(__file__).resolve().parents[1] / "src" / "stablekit" / "shapes" / "model"


def _diffusers(folder: Path, tuned: bool, steps: int, size: int, openvino: str | None = None, threads: int = 1):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from stablekit.generate.noise import ImageNoise

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16 if tuned else torch.float32,
                                                   safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config({**pipe.scheduler.config, "timestep_spacing": "linspace"})
    if tuned:  # diffusers' documented CPU settings
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    compiled = _openvino_unet(pipe, openvino, threads) if openvino else None
    pipe.set_progress_bar_config(disable=True)
    f = pipe.vae_scale_factor
    latents = ImageNoise([SEED]).initial_latents(pipe.unet.config.in_channels, size // f, size // f)

    def image():
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG, height=size,
                    width=size, latents=latents.to(pipe.unet.dtype), output_type="np").images[0]

    if compiled is not None:
        return image, lambda: f"OpenVINO {compiled['version']} {openvino}: convert + compile {compiled['seconds']:.1f} s"
    return image, ""


def _openvino_unet(pipe, precision: str, threads: int) -> None:
    """Route diffusers' UNet calls through OpenVINO: converted from the same module at the first call's
    shapes (so its static-shape compile fits this benchmark), weights and math otherwise untouched."""
    import openvino as ov
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    from stablekit.generate.traced import _Call

    unet, compiled = pipe.unet, {}
    module = _Call(unet, type(unet).forward.__get__(unet)).eval()

    def forward(sample, timestep, encoder_hidden_states=None, *args, return_dict=True, **kwargs):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0]).contiguous()
        inputs = (sample.float().contiguous(), t, encoder_hidden_states.float().contiguous())
        if "request" not in compiled:
            t0 = time.perf_counter()
            with torch.no_grad():
                model = ov.convert_model(module, example_input=inputs)
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                      "PERFORMANCE_HINT": "LATENCY"}
            compiled["request"] = ov.Core().compile_model(model, "CPU", config).create_infer_request()
            compiled["seconds"] = time.perf_counter() - t0
        out = torch.from_numpy(compiled["request"].infer([x.numpy() for x in inputs])[0].copy())
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    compiled["version"] = ov.__version__
    return compiled


def _stablekit(model, config: str, steps: int, size: int | None = None):
    import stablekit

    env = {"STABLEKIT_TRACE": "0"} if config == "stablekit-eager" else {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    backend = "openvino" if config.startswith("stablekit-openvino") else "torch"
    dtype = {"stablekit-fp32": "fp32", "stablekit-openvino-f32": "fp32", "stablekit-openvino-bf16": "bf16"}.get(config, "auto")
    try:
        pipe = stablekit.load(model, progress=False, dtype=dtype, compile=config == "stablekit-compile", backend=backend)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    settings = dict(negative_prompt=NEGATIVE, steps=steps, cfg=CFG, sampler="Euler", schedule="Normal", seed=SEED,
                    output="np")
    if size:  # else the model's native size (diffusers' rows are given `size` too)
        settings.update(width=size, height=size)
    if config.startswith("stablekit-deepcache-"):
        settings["deepcache"] = int(config.rsplit("-", 1)[1])
    if config.startswith("stablekit-tome-"):
        settings["tome"] = float(config.rsplit("-", 1)[1])
    if config.startswith("stablekit-tiny-vae="):
        settings["tiny_vae"] = config.split("=", 1)[1]

    def image():
        return pipe.generate(PROMPT, **settings)[0]

    if backend == "openvino":  # converts (or loads the cached model) at the first image
        from stablekit.generate.openvino_unet import installed

        fwd = installed(pipe.components.unet)
        return image, lambda: (f"{pipe.acceleration.describe()}; OpenVINO convert/load + compile {fwd.convert_seconds:.1f} s "
                               f"(converted {fwd.stats['converted']}, loaded from cache {fwd.stats['loaded']})"), pipe
    return image, pipe.acceleration.describe(), pipe


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a diffusers folder (default: the embedded model's)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="diffusers,stablekit,stablekit-eager")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's native size)")
    ap.add_argument("--save-images", default=None, metavar="DIR", help="write each configuration's image to DIR/<config>.npy")
    ap.add_argument("--reference", default=None, metavar="NPY",
                    help="PSNR against this image (diffusers' from an earlier run) when diffusers is not among --configs")
    ap.add_argument("--peer-path", default=None, help="a folder with the openvino package (pip install --target)")
    args = ap.parse_args()
    if args.peer_path:
        import sys

        sys.path.append(args.peer_path)
    torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else EMBEDDED / "diffusers"
    model = args.model or None
    configs = args.configs.split(",")
    import stablekit

    size = args.size or stablekit.load(model, progress=False, dtype="fp32").native_size
    fns, notes, setup = {}, {}, {}
    for c in configs:
        t0 = time.perf_counter()
        if c.startswith("diffusers"):
            openvino = ("bf16" if c.endswith("bf16") else "f32") if c.startswith("diffusers-openvino") else None
            fns[c], notes[c] = _diffusers(folder, c == "diffusers-tuned", args.steps, size, openvino, args.threads)
        else:
            fns[c], notes[c], pipe = _stablekit(model, c, args.steps, size)
        setup[c] = time.perf_counter() - t0
    images, first = {}, {}
    with torch.inference_mode():
        for c, fn in fns.items():  # warm-up: the first image pays traces / compiles
            t0 = time.perf_counter()
            images[c] = fn()
            first[c] = time.perf_counter() - t0
        times: dict[str, list[float]] = {c: [] for c in configs}
        cpu: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for c, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[c].append(time.perf_counter() - t0)
                cpu[c].append(time.process_time() - c0)
    med = {c: statistics.median(t) for c, t in times.items()}
    med_cpu = {c: statistics.median(t) for c, t in cpu.items()}
    ref, ref_cpu = med.get("diffusers"), med_cpu.get("diffusers")
    if args.save_images:
        Path(args.save_images).mkdir(parents=True, exist_ok=True)
        for c, img in images.items():
            np.save(Path(args.save_images) / f"{c}.npy", img)
    reference = images.get("diffusers")
    if reference is None and args.reference:
        reference = np.load(args.reference)
    import resource

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    load = os.getloadavg()
    print(f"# {folder.name if args.model else 'embedded'}: {size}x{size}, {args.steps} Euler steps, CFG {CFG}, batch 1, "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {load[0]:.1f}")
    # CPU seconds (all threads of this process) beside wall time: on a shared machine the wall ratio
    # swings with load, the CPU ratio much less (equal thread counts everywhere)
    print("\n| configuration | median s/image | speed vs diffusers | CPU s/image | CPU speed vs diffusers "
          "| PSNR vs diffusers (dB) | setup s | first image s |")
    print("|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for c in configs:
        q = psnr(images[c], reference) if reference is not None else nan
        print(f"| {c} | {med[c]:.3f} | {ref / med[c] if ref else nan:.2f}x | {med_cpu[c]:.3f} | "
              f"{ref_cpu / med_cpu[c] if ref_cpu else nan:.2f}x | {q:.1f} | {setup[c]:.1f} | {first[c]:.2f} |")
    notes = {c: n() if callable(n) else n for c, n in notes.items()}  # OpenVINO compiles at the first image
    for c, n in notes.items():
        if n:
            print(f"# {c}: {n}")
    print(f"# peak RSS of this process ({', '.join(configs)}): {peak_rss:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_s": med, "median_cpu_s": med_cpu, "wall_s": times, "cpu_s": cpu, "first_s": first, "setup_s": setup, "notes": notes,
                                               "threads": args.threads, "steps": args.steps, "size": size, "load": load,
                                               "peak_rss_mib": peak_rss,
                                               "psnr_db": {c: psnr(images[c], reference) if reference is not None else None
                                                           for c in configs}}, indent=1))


if __name__ == "__main__":
    main()
