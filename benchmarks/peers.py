"""stablekit against the CPU runtimes a user could pick, in one run, on the same weights and settings.

    nice -n 19 .venv/bin/python benchmarks/peers.py --model embedded            # 64x64, 20 steps
    nice -n 19 .venv/bin/python benchmarks/peers.py --model sd15 --size 256 --steps 4
    (--threads 1|2, --peers-python PATH: a venv with optimum-intel / stable-diffusion-cpp-python)

Every configuration runs in its own process (fair peak RSS, cold start measured from a fresh
interpreter): cold start = imports + load + first image; then one warm image with the time per
component (text encoder, UNet per call, VAE decode) from forward hooks. The same prompt, negative,
seed (the same start latents where the runtime accepts them), Euler sampler, steps, CFG 7 and size
everywhere. PSNR is against diffusers' fp32 image. "sd15" builds the full-size SD 1.5 architecture
with random weights from the shipped config (seeded) in --workdir and reuses it. Peers that cannot
be installed or run are printed with their error. Absolute times on a shared machine are noisy:
read the ratios, measured in the same run with the same thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT, NEGATIVE, SEED, CFG = "a large red star on a blue background", "blurry", 1, 7.0
CONFIGS = ("diffusers-fp32", "stablekit-default", "stablekit-fp32", "diffusers-cpu-tuned", "openvino", "sdcpp")
PEER_CONFIGS = ("openvino", "sdcpp")  # run by --peers-python


# ----------------------------------------------------------------------------- worker side
class Timers:
    """Wall time spent inside a module's forward, by forward pre/post hooks."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def watch(self, name: str, module) -> None:
        start = {}
        module.register_forward_pre_hook(lambda *_: start.__setitem__("t", time.perf_counter()))

        def done(*_):
            self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start["t"]
            self.calls[name] = self.calls.get(name, 0) + 1

        module.register_forward_hook(done)

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()


def _latents(channels: int, size: int, factor: int):
    from stablekit.generate.noise import ImageNoise

    return ImageNoise([SEED]).initial_latents(channels, size // factor, size // factor)


def _diffusers_pipe(folder: str, dtype, tuned: bool):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config({**pipe.scheduler.config, "timestep_spacing": "linspace"})
    if tuned:  # diffusers' documented CPU settings: channels_last (+ bf16 weights via torch_dtype)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_torch(config: str, a) -> dict:
    """stablekit or diffusers in this process: cold start, warm per-component times, image."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    out: dict = {}
    pipe, mods, image = torch_setup(config, a, out)
    out["load_s"] = time.perf_counter() - t0
    timers = Timers()
    for name, m in mods.items():
        timers.watch(name, m)
    img = image()
    out["cold_start_s"] = time.perf_counter() - t0
    out["warm_s"] = out["cold_start_s"] - out["load_s"]  # --once: the first image stands in for a warm one
    if not a.once:
        timers.reset()
        t1 = time.perf_counter()
        img = image()
        out["warm_s"] = time.perf_counter() - t1
    out["components_s"] = dict(timers.total)
    out["unet_calls"] = timers.calls.get("unet", 0)
    np.save(a.image_out, np.asarray(img, dtype=np.float32))
    return out


def interleaved(a, configs: list[str], rounds: int) -> dict:
    """The torch configurations in one process, taking turns (A B C D, A B C D, ...), so load
    drifts on a shared machine hit all alike; median warm seconds per image."""
    import statistics

    import torch

    torch.set_num_threads(a.threads)
    images = {c: torch_setup(c, a, {})[2] for c in configs}
    for fn in images.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for c, fn in images.items():
            times[c].append(_timed(fn))
    return {c: statistics.median(t) for c, t in times.items()}


def torch_setup(config: str, a, out: dict):
    """(pipeline, {component: module}, image function) of a torch configuration."""
    import torch
    if config.startswith("stablekit"):
        import stablekit

        pipe = stablekit.load(a.folder, dtype="auto" if config == "stablekit-default" else "fp32", progress=False)
        c = pipe.components
        out["acceleration"] = pipe.acceleration.describe()
        mods = {"text_encoder": c.text_encoder, "unet": c.unet, "vae_decode": c.vae.decoder}

        def image():
            with torch.inference_mode():
                return pipe.generate(PROMPT, negative_prompt=NEGATIVE, steps=a.steps, cfg=CFG, sampler="Euler",
                                     schedule="Normal", seed=SEED, width=a.size, height=a.size, output="np")[0]
    else:
        tuned = config == "diffusers-cpu-tuned"
        pipe = _diffusers_pipe(a.folder, torch.bfloat16 if tuned else torch.float32, tuned)
        mods = {"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae_decode": pipe.vae.decoder}
        latents = _latents(pipe.unet.config.in_channels, a.size, pipe.vae_scale_factor)

        def image():
            with torch.inference_mode():
                return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=a.steps, guidance_scale=CFG,
                            height=a.size, width=a.size, latents=latents.to(pipe.unet.dtype),
                            output_type="np").images[0]
    return pipe, mods, image


def run_openvino(a) -> dict:
    """OpenVINO through optimum-intel: exported once from the same diffusers folder, static shapes."""
    t0 = time.perf_counter()
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    exported = Path(a.workdir) / f"openvino-{Path(a.folder).name}"
    out = {}
    if not exported.exists():
        te = time.perf_counter()
        OVStableDiffusionPipeline.from_pretrained(a.folder, export=True, compile=False).save_pretrained(exported)
        out["export_s"] = time.perf_counter() - te
    pipe = OVStableDiffusionPipeline.from_pretrained(exported, compile=False,
                                                     ov_config={"INFERENCE_NUM_THREADS": str(a.threads)})
    pipe.reshape(batch_size=1, height=a.size, width=a.size, num_images_per_prompt=1)
    pipe.compile()
    pipe.scheduler = EulerDiscreteScheduler.from_config({**pipe.scheduler.config, "timestep_spacing": "linspace"})
    latents = _latents(4, a.size, 8).numpy()

    def image():
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=a.steps, guidance_scale=CFG, height=a.size,
                    width=a.size, latents=latents, output_type="np").images[0]

    t1 = time.perf_counter()
    img = image()
    out["cold_start_s"] = time.perf_counter() - t0
    out["warm_s"] = time.perf_counter() - t1
    if not a.once:
        t1 = time.perf_counter()
        img = image()
        out["warm_s"] = time.perf_counter() - t1
    np.save(a.image_out, np.asarray(img, dtype=np.float32))
    return out


def run_sdcpp(a) -> dict:
    """stable-diffusion.cpp (stable-diffusion-cpp-python) on the same single file; its own RNG, so no PSNR."""
    t0 = time.perf_counter()
    from stable_diffusion_cpp import StableDiffusion

    sd = StableDiffusion(model_path=a.single_file, n_threads=a.threads, verbose=False)

    def image():
        return sd.generate_image(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=CFG, width=a.size, height=a.size,
                                 sample_method="euler", sample_steps=a.steps, seed=SEED)[0]

    t1 = time.perf_counter()
    img = image()
    out = {"cold_start_s": time.perf_counter() - t0, "warm_s": time.perf_counter() - t1}
    if not a.once:
        t1 = time.perf_counter()
        img = image()
        out["warm_s"] = time.perf_counter() - t1
    np.save(a.image_out, np.asarray(img, dtype=np.float32) / 255.0)
    out["note"] = "own noise (no latents argument): PSNR not comparable"
    return out


def worker(a) -> None:
    try:
        if a.worker == "openvino":
            out = run_openvino(a)
        elif a.worker == "sdcpp":
            out = run_sdcpp(a)
        else:
            out = run_torch(a.worker, a)
    except Exception as exc:  # reported as the peer's result, not dropped
        out = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- parent side
def make_sd15(workdir: Path) -> tuple[Path, Path]:
    """Full-size SD 1.5 architecture, random seeded weights: a diffusers folder and a single file."""
    folder, single = workdir / "sd15-random" / "diffusers", workdir / "sd15-random" / "model.safetensors"
    if folder.exists() and single.exists():
        return folder, single
    import torch

    from stablekit.formats import save_model
    from stablekit.formats.archs import build_modules, shipped_configs, tokenizers_for
    from stablekit.formats.assemble import make_components

    torch.manual_seed(0)
    cfg = shipped_configs("sd1")
    mods = {k: v.eval() for k, v in build_modules(cfg).items() if v is not None}
    comps = make_components("sd1", mods, cfg, tokenizers_for("sd1", cfg), "sd15-random", "", "", {})
    save_model(comps, folder, to="diffusers")
    save_model(comps, single, to="single-file")
    return folder, single


def matmul_peaks(threads: int) -> dict:
    """GFLOP/s of a 2048^3 matmul in fp32 and bf16 on `threads` threads (best of 5)."""
    import torch

    torch.set_num_threads(threads)
    n, out = 2048, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        x @ y
        best = min(_timed(lambda: x @ y) for _ in range(5))
        out[name] = 2 * n**3 / best / 1e9
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def unet_flops(folder: Path, size: int) -> float:
    """FLOPs of one UNet call at batch 2 (CFG) and this size, counted on the meta device."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = json.loads((folder / "unet" / "config.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    unet.to("meta")
    lat = size // 8
    x = torch.randn(2, config["in_channels"], lat, lat, device="meta")
    ctx = torch.randn(2, 77, config["cross_attention_dim"], device="meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(x, torch.tensor([500.0, 500.0], device="meta"), encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


def versions(python: str) -> str:
    try:
        code = ("import importlib.metadata as m\nout=[]\nfor p in ('torch','diffusers','transformers','openvino',"
                "'optimum-intel','stable-diffusion-cpp-python'):\n  try: out.append(p+' '+m.version(p))\n"
                "  except m.PackageNotFoundError: pass\nprint(', '.join(out))")
        return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"


def run_config(config: str, a, folder: Path, single: Path, image: Path) -> dict:
    python = a.peers_python if config in PEER_CONFIGS else sys.executable
    if config in PEER_CONFIGS and not a.peers_python:
        return {"error": "not run: give --peers-python (a venv with optimum-intel openvino / stable-diffusion-cpp-python)"}
    cmd = [python, __file__, "--worker", config, "--folder", str(folder), "--single-file", str(single),
           "--size", str(a.size), "--steps", str(a.steps), "--threads", str(a.threads), "--workdir", str(a.workdir),
           "--image-out", str(image)] + (["--once"] if a.once else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="embedded, sd15 (random full-size), or a diffusers folder")
    ap.add_argument("--single-file", default=None, help="the same weights as one .safetensors (for stable-diffusion.cpp)")
    ap.add_argument("--size", type=int, default=None, help="image side (default: 64 embedded, 256 otherwise)")
    ap.add_argument("--steps", type=int, default=None, help="Euler steps (default: 20 embedded, 4 otherwise)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every configuration (default 1)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--peers-python", default=None, help="python of a venv with the peers installed")
    ap.add_argument("--workdir", default="/tmp/stablekit-peers", help="random models and exports are kept here")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--once", action="store_true",
                    help="one image per configuration: its time (without loading) stands for the warm time")
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="also time the torch configurations in one process taking turns, ROUNDS rounds (medians)")
    ap.add_argument("--no-processes", action="store_true", help="only the --interleaved comparison")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--image-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    embedded = a.model == "embedded"
    a.size = a.size or (64 if embedded else 256)
    a.steps = a.steps or (20 if embedded else 4)
    if embedded:
        folder = Path(__file__).resolve().parents[1] / "src" / "stablekit" / "shapes" / "model" / "diffusers"
        single = Path(a.single_file or folder.parent / "shapes.safetensors")
    elif a.model == "sd15":
        folder, single = make_sd15(workdir)
    else:
        folder, single = Path(a.model), Path(a.single_file or "")
    peaks = matmul_peaks(a.threads)
    flops = unet_flops(folder, a.size)
    print(f"# {a.model}: {a.size}x{a.size}, {a.steps} Euler steps, CFG {CFG}, batch 1, {a.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {versions(sys.executable)}")
    if a.peers_python:
        print(f"# peers venv: {versions(a.peers_python)}")
    print(f"# matmul peak ({a.threads} thread(s)): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
          f"UNet call (batch 2) {flops / 1e9:.1f} GFLOP")
    results = {}
    for config in ([] if a.no_processes else a.configs.split(",")):
        image = workdir / f"{a.model if embedded or a.model == 'sd15' else folder.name}-{a.size}-{a.steps}-{config}.npy"
        image.unlink(missing_ok=True)
        results[config] = run_config(config, a, folder, single, image)
        results[config]["image"] = str(image)
        print(f"# done {config}: {json.dumps(results[config])}", flush=True)
    if results:
        _table(results, peaks, flops)
    if a.interleaved:
        torch_configs = [c for c in a.configs.split(",") if c not in PEER_CONFIGS]
        a.folder = str(folder)
        medians = interleaved(a, torch_configs, a.interleaved)
        ref = medians.get("diffusers-fp32")
        print(f"\n| runtime (one process, {a.interleaved} interleaved rounds) | median s/image | speed vs diffusers fp32 |")
        print("|---|---|---|")
        for c, t in medians.items():
            print(f"| {c} | {t:.3f} | {ref / t if ref else float('nan'):.2f}x |")
        results["interleaved_median_s"] = medians
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "peaks": peaks, "unet_flops": flops, "results": results},
                                           indent=1))


def _table(results: dict, peaks: dict, flops: float) -> None:
    ref = results.get("diffusers-fp32", {})
    ref_img = np.load(ref["image"]) if ref.get("image") and Path(ref["image"]).exists() else None
    print("\n| runtime | warm s/image | speed vs diffusers fp32 | cold start s | PSNR vs diffusers fp32 | "
          "text enc s | UNet s/call | UNet % of peak | VAE decode s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | | | | | | | | |")
            continue
        speed = ref.get("warm_s", float("nan")) / r["warm_s"]
        img = np.load(r["image"]) if Path(r["image"]).exists() else None
        quality = f"{psnr(img, ref_img):.1f}" if img is not None and ref_img is not None and "note" not in r else "n/a"
        comp = r.get("components_s", {})
        calls = r.get("unet_calls") or 0
        unet = comp.get("unet", 0) / calls if calls else None
        bf16 = r.get("acceleration", "").startswith("bf16") or name == "diffusers-cpu-tuned"
        frac = f"{100 * flops / unet / 1e9 / peaks['bf16' if bf16 else 'fp32']:.0f}% {'bf16' if bf16 else 'fp32'}" if unet else ""
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ""  # noqa: E731
        print(f"| {name} | {r['warm_s']:.2f} | {speed:.2f}x | {r['cold_start_s']:.1f} | {quality} | "
              f"{fmt(comp.get('text_encoder'))} | {fmt(unet)} | {frac} | {fmt(comp.get('vae_decode'))} | "
              f"{r['peak_rss_mib']:.0f} |")
    for name, r in results.items():
        if r.get("acceleration"):
            print(f"# {name}: {r['acceleration']}")
        if r.get("export_s"):
            print(f"# {name}: export {r['export_s']:.0f} s (once, not in cold start)")


if __name__ == "__main__":
    main()
