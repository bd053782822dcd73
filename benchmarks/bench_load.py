"""Load time and peak RSS: `stablekit.load` against diffusers' loaders, each in a fresh process, taking turns.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_load.py \
        [--model sd15] [--repeats 3] [--configs stablekit,diffusers-pretrained,...] [--profile CONFIG]

Configurations (every one ends with a usable pipeline in memory, weights on the CPU):
  stablekit            stablekit.load(folder): the default (dtype auto: bf16 on SD 1.5 here)
  stablekit-nocache    the default with the cast-weights cache off (STABLEKIT_WEIGHT_CACHE_GB=0): every
                       load reads and casts the fp32 file (the loader before the cache)
  stablekit-fp32       stablekit.load(folder, dtype="fp32")
  stablekit-baseline   the default from another source tree (--baseline-src, e.g. `git archive main src`):
                       before/after in one run
  stablekit-single     stablekit.load(single file): the LDM-layout file, converted while read
  NAME-cold            any stablekit configuration with an empty cast-weights cache (a fresh folder per
                       process, removed after it): the first load, which also makes the cache entry;
                       `wall s` is the whole process, so it includes waiting at exit for the entry's writer
  diffusers-pretrained StableDiffusionPipeline.from_pretrained(folder) (fp32, its defaults)
  diffusers-bf16       the same with torch_dtype=torch.bfloat16
  diffusers-single     StableDiffusionPipeline.from_single_file(file, config=folder) (fp32)
Each process prints its import time (torch + the library), its load time, the time of one small
image after it (64x64, 1 step: lazily mapped weights are read there) and its peak RSS (ru_maxrss); rounds take turns (A B C, A B C, ...) so load drifts on a shared machine hit all
alike, and the files stay in the page cache across rounds (the first round warms it: it is
dropped from the medians when there is more than one round). --profile CONFIG runs one process
under cProfile and prints the top functions instead. "sd15" is the full-size SD 1.5 architecture
with random weights that benchmarks/peers.py builds (reused from --workdir).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("stablekit", "stablekit-nocache", "stablekit-baseline", "stablekit-fp32", "stablekit-single",
           "diffusers-pretrained", "diffusers-bf16", "diffusers-single")


def _load(config: str, folder: str, single: str):
    import torch

    config = config.removesuffix("-cold")
    if config.startswith("stablekit"):
        import stablekit

        path = single if config == "stablekit-single" else folder
        return stablekit.load(path, dtype="fp32" if config == "stablekit-fp32" else "auto", progress=False)
    from diffusers import StableDiffusionPipeline

    kw = dict(safety_checker=None, requires_safety_checker=False, local_files_only=True)
    if config == "diffusers-single":
        return StableDiffusionPipeline.from_single_file(single, config=folder, **kw)
    dtype = torch.bfloat16 if config == "diffusers-bf16" else torch.float32
    return StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, **kw)


def worker(config: str, folder: str, single: str, profile: bool) -> None:
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    if config.startswith("stablekit"):
        import stablekit  # noqa: F401
    import diffusers  # noqa: F401  (both need it: stablekit builds diffusers modules)

    t1 = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        _load(config, folder, single)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    else:
        pipe = _load(config, folder, single)
    t2 = time.perf_counter()
    out = {"import_s": t1 - t0, "load_s": t2 - t1, "load_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if not profile:  # one small image: lazily mapped weights are read here, so RSS and time count them
        with torch.inference_mode():
            if config.startswith("stablekit"):
                pipe.generate("a red star", steps=1, cfg=7.0, seed=1, width=64, height=64, output="np")
            else:
                pipe("a red star", num_inference_steps=1, guidance_scale=7.0, height=64, width=64, output_type="np")
        out["image_s"] = time.perf_counter() - t2
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


BASELINE_SRC = ""


def run(config: str, folder: Path, single: Path, profile: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    if config == "stablekit-nocache":
        env["STABLEKIT_WEIGHT_CACHE_GB"] = "0"
    cold = config.endswith("-cold")
    if cold:  # an empty cache of its own: this process makes the entry
        env["STABLEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="cold-cache-", dir=folder.parent)
    if config.removesuffix("-cold") == "stablekit-baseline":
        if not BASELINE_SRC:
            return {"error": "give --baseline-src PATH (a src folder of the code to compare with)"}
        env["PYTHONPATH"] = BASELINE_SRC
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", config, "--folder", str(folder), "--single-file",
                           str(single)] + (["--profile", config] if profile else []),
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if cold:
        entries = list(Path(env["STABLEKIT_CACHE_DIR"], "weights").glob("*.json"))
        shutil.rmtree(env["STABLEKIT_CACHE_DIR"], ignore_errors=True)
    if profile:
        print(proc.stdout[-12000:])
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall, **({"entries_made": len(entries)} if cold else {})}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def make_sd15_half(workdir: Path) -> tuple[Path, Path]:
    """SD 1.5's architecture at half the UNet width and half the text encoder's layers (random seeded
    weights, 1.4 GB fp32 in all; every component file still over the cast cache's 64 MiB threshold):
    the load path of SD 1.5 at about a third of its cost, for a shared CPU."""
    folder, single = workdir / "sd15-half" / "diffusers", workdir / "sd15-half" / "model.safetensors"
    if folder.exists() and single.exists():
        return folder, single
    import torch

    from stablekit.formats import save_model
    from stablekit.formats.archs import build_modules, shipped_configs, tokenizers_for
    from stablekit.formats.assemble import make_components

    torch.manual_seed(0)
    cfg = shipped_configs("sd1")
    cfg["unet"] = {**cfg["unet"], "block_out_channels": [160, 320, 640, 640]}
    cfg["text_encoder"] = {**cfg["text_encoder"], "num_hidden_layers": 6}
    mods = {k: v.eval() for k, v in build_modules(cfg).items() if v is not None}
    comps = make_components("sd1", mods, cfg, tokenizers_for("sd1", cfg), "sd15-half", "", "", {})
    save_model(comps, folder, to="diffusers")
    save_model(comps, single, to="single-file")
    return folder, single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd15", help="sd15 (random full-size, built by peers.py), sd15-half (half width, built here) "
                                                       "or a diffusers folder")
    ap.add_argument("--single-file", default=None, help="the same weights as one LDM-layout .safetensors")
    ap.add_argument("--configs", default="stablekit,stablekit-nocache,diffusers-pretrained,diffusers-bf16,"
                                         "stablekit-single,diffusers-single")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/stablekit-peers")
    ap.add_argument("--profile", default=None, metavar="CONFIG", help="one cProfile'd process of CONFIG, then stop")
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline-src", default=None, help="src folder for the stablekit-baseline configuration")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.folder, a.single_file, a.profile is not None)
    global BASELINE_SRC
    BASELINE_SRC = str(Path(a.baseline_src).resolve()) if a.baseline_src else ""
    if a.model == "sd15":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from peers import make_sd15

        folder, single = make_sd15(Path(a.workdir))
    elif a.model == "sd15-half":
        folder, single = make_sd15_half(Path(a.workdir))
    else:
        folder, single = Path(a.model), Path(a.single_file or "")
    if a.profile:
        print(run(a.profile, folder, single, profile=True))
        return
    configs = a.configs.split(",")
    results: dict[str, list[dict]] = {c: [] for c in configs}
    print(f"# {a.model}: {a.repeats} rounds taking turns, 1 thread, {time.strftime('%Y-%m-%d %H:%M')} UTC, "
          f"load average {os.getloadavg()[0]:.1f} (CPU shared)")
    for r in range(a.repeats):
        for c in configs:
            results[c].append(run(c, folder, single))
            print(f"# round {r + 1} {c}: {json.dumps(results[c][-1])}", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    ref = "diffusers-pretrained"
    med = {}
    for c, rs in results.items():
        ok = [x for x in rs if "error" not in x]
        ok = ok[1:] if len(ok) > 1 else ok  # the first round warms the page cache
        if ok:
            med[c] = {k: statistics.median(x[k] for x in ok) for k in ("import_s", "load_s", "image_s", "peak_rss_mib",
                                                                       "wall_s")}
    print("\n| configuration | import s | load s | import + load vs diffusers from_pretrained | first image s "
          "(64 px, 1 step) | wall s (process) | peak RSS MiB (after the image) | RSS vs diffusers from_pretrained |")
    print("|---|---|---|---|---|---|---|---|")
    for c in configs:
        if c not in med:
            print(f"| {c} | failed: {results[c][-1].get('error')} | | | | | | |")
            continue
        m, ref_m = med[c], med.get(ref)
        total = m["import_s"] + m["load_s"]
        speed = f"{(ref_m['import_s'] + ref_m['load_s']) / total:.2f}x" if ref_m else ""
        rss = f"{m['peak_rss_mib'] / ref_m['peak_rss_mib']:.2f}" if ref_m else ""
        print(f"| {c} | {m['import_s']:.1f} | {m['load_s']:.1f} | {speed} | {m['image_s']:.1f} | {m['wall_s']:.1f} | "
              f"{m['peak_rss_mib']:.0f} | {rss} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
