"""Training speed against diffusers' example scripts: same model, data, resolution, batch and steps.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_train_peers.py \
        --diffusers-repo /work/.mirror/huggingface+diffusers/repo [--methods lora,finetune] \
        [--steps 20,100] [--batch 8] [--images 64] [--out runs/bench-train-peers]
    # full-size SD 1.5 (random weights), 256 px, each side at its default precision and the peer also in bf16:
    ... --model sd15-random --resolution 256 --steps 1,3 --batch 1 --images 8 --methods lora \
        --configs diffusers,diffusers-bf16,stablekit-warm
    # before/after in one run: an older stablekit (git archive OLD | tar -x -C DIR) as before-warm / before-nocache
    ... --before-src DIR/src --configs diffusers,diffusers-bf16,before-warm,before-nocache,stablekit-warm,stablekit-nocache

The peers are diffusers' `examples/text_to_image/train_text_to_image_lora.py` (lora),
`train_text_to_image.py` (finetune: the full UNet), `examples/textual_inversion/textual_inversion.py`
(textual-inversion) and `examples/dreambooth/train_dreambooth_lora.py` (dreambooth-lora, without
prior preservation), read from a local diffusers git repository at
benchmark time (`fetch` brings one; nothing of it is committed) and run through
benchmarks/peer_shims/run_peer.py, which stands in for the six torchvision transforms they use
(torchvision cannot be installed beside torch 2.13.0 here). stablekit runs `stablekit train METHOD`
on the same diffusers folder (the embedded model's) and the same images (with a metadata.jsonl both
read for lora/finetune; images alone for the other two), fp32, AdamW (weight decay 0.01), constant learning rate,
no warm-up, gradient clipping 1.0, no EMA, no sampling, no checkpoints, seed 0, 1 thread.

Every configuration runs as its own process at two step counts; samples/s is
batch x (steps2 - steps1) / (time2 - time1), so imports, loading and the final save (paid once
per run by both) cancel out; they are reported apart as "fixed s". Peak RSS is the process's
maximum resident set at steps2 (os.wait4). stablekit runs three ways: `cold` (a fresh encoder
cache per run: a user's first run), `warm` (the cache filled by an earlier run: every rerun on the
same data) and `nocache` (STABLEKIT_TRAIN_CACHE=off). One difference is left on purpose: stablekit's
LoRA adapts kohya's default target set (attention q/k/v/out, proj_in/out and the feed-forward
Linears) where diffusers' script adapts q/k/v/out only, so stablekit trains more weights per step.
Only ratios within one run are comparable; the CPU here is shared.

Precision: the peers run at their default `--mixed_precision no` (fp32); `diffusers-bf16` adds
`--mixed_precision bf16`, where the scripts also cast the weights that do not train to bf16.
stablekit runs at its default (`mixed_precision = "auto"`: bf16 with the frozen UNet layers in
bf16 where generation's per-machine probe picks bf16, i.e. a full-size UNet on a CPU with bf16
kernels; fp32 for the embedded model), and says what it used in its log. `--model sd15-random`
builds a full-size SD 1.5 with random weights under --out (about 5 GB; delete it after). With
`--resolution` other than 64, stablekit reads the images through a dataset TOML at that resolution
(the same images and captions), as the peers' `--resolution`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("diffusers", "stablekit-cold", "stablekit-warm", "stablekit-nocache", "diffusers-bf16", "before-warm",
           "before-nocache", "before-cold")
PEER_SCRIPTS = {"lora": "examples/text_to_image/train_text_to_image_lora.py",
                "finetune": "examples/text_to_image/train_text_to_image.py",
                "textual-inversion": "examples/textual_inversion/textual_inversion.py",
                "dreambooth-lora": "examples/dreambooth/train_dreambooth_lora.py"}
LR = {"lora": 1e-4, "finetune": 1e-5, "textual-inversion": 5e-3, "dreambooth-lora": 1e-4}
# Method settings beyond the common ones, as each side names them. Textual inversion learns "<sks>"
# from "square"; DreamBooth-LoRA learns "a sks square" without prior preservation (no class images).
PEER_ARGS = {"lora": ["--rank", "8"], "finetune": [],
             "textual-inversion": ["--placeholder_token", "<sks>", "--initializer_token", "square",
                                   "--learnable_property", "object", "--save_steps", "1000000"],
             "dreambooth-lora": ["--instance_prompt", "a sks square", "--rank", "8"]}
# stablekit reads captions beside the images; these two peers caption from a template / the prompt.
OURS_CAPTION = {"textual-inversion": "a photo of a <sks>", "dreambooth-lora": "a sks square"}
OURS_ARGS = {"lora": ["--rank", "8", "--alpha", "8", "--no-conv"], "finetune": [],
             "textual-inversion": ["--token", "<sks>", "--init-word", "square", "--vectors", "1"],
             "dreambooth-lora": ["--lora", "--instance-prompt", "a sks square", "--rank", "8", "--alpha", "8", "--no-conv"]}


def make_data(folder: Path, n: int, captions: bool) -> Path:
    """n rendered shapes-world images, with a metadata.jsonl both trainers read (no .txt beside them),
    or images alone (textual inversion and DreamBooth read every file of their folder as an image)."""
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "stablekit", "shapes", "render", "--n", str(n), "--out", str(folder)],
                   check=True, stdout=subprocess.DEVNULL)
    (folder / "metadata.json").unlink(missing_ok=True)
    lines = []
    for image in sorted(folder.glob("*.png")):
        caption = image.with_suffix(".txt")
        lines.append(json.dumps({"file_name": image.name, "text": caption.read_text().strip()}))
        caption.unlink()
    if captions:
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def captioned_copy(images: Path, folder: Path, caption: str) -> Path:
    """The same images (symlinked) with one caption each, for stablekit's side."""
    if not folder.exists():
        folder.mkdir(parents=True)
        for image in sorted(images.glob("*.png")):
            (folder / image.name).symlink_to(image)
            (folder / image.with_suffix(".txt").name).write_text(caption)
    return folder


def toml_copy(data: Path, folder: Path, resolution: int) -> Path:
    """A kohya dataset TOML at `resolution` over the images of `data`, captions as .txt beside
    symlinks (from its metadata.jsonl, or the .txt files a captioned copy already has)."""
    if not folder.exists():
        folder.mkdir(parents=True)
        meta = data / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text().splitlines()] if meta.exists() else \
            [{"file_name": p.name, "text": p.with_suffix(".txt").read_text()} for p in sorted(data.glob("*.png"))]
        for row in rows:
            (folder / row["file_name"]).symlink_to((data / row["file_name"]).resolve())
            (folder / row["file_name"]).with_suffix(".txt").write_text(row["text"])
    toml = folder.with_suffix(".toml")
    toml.write_text(f'[general]\nresolution = {resolution}\ncaption_extension = ".txt"\n\n'
                    f'[[datasets]]\n\n  [[datasets.subsets]]\n  image_dir = "{folder}"\n')
    return toml


def peer_command(method: str, script: Path, model: Path, data: Path, out: Path, steps: int, batch: int,
                 resolution: int = 64, precision: str = "no") -> list[str]:
    data_flag = "--instance_data_dir" if method == "dreambooth-lora" else "--train_data_dir"
    cmd = [sys.executable, str(ROOT / "benchmarks/peer_shims/run_peer.py"), str(script),
           "--pretrained_model_name_or_path", str(model), data_flag, str(data), "--resolution", str(resolution),
           "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--learning_rate", str(LR[method]),
           "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--seed", "0", "--output_dir", str(out),
           "--dataloader_num_workers", "0", "--mixed_precision", precision, "--checkpointing_steps", "1000000"]
    return cmd + PEER_ARGS[method]


def stablekit_command(method: str, model: Path, data: Path, out: Path, steps: int, batch: int) -> list[str]:
    cmd = [sys.executable, "-m", "stablekit", "train", method.removesuffix("-lora"), "--model", str(model), "--data", str(data),
           "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--lr", str(LR[method]),
           "--lr-schedule", "constant", "--warmup-steps", "0", "--weight-decay", "0.01", "--grad-clip", "1.0",
           "--ema-decay", "0", "--sample-every", "0", "--checkpoint-every", "1000000", "--no-tensorboard",
           "--threads", "1", "--seed", "0"]
    return cmd + OURS_ARGS[method]


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of one process; a failure stops
    the benchmark with its log. CPU time is the steadier figure on a shared machine: time slices
    lost to other jobs do not count in it (cache and memory-bandwidth contention still do)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}\nlog: {log}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-repo", required=True, help="a local diffusers git repository (its HEAD's examples run)")
    parser.add_argument("--methods", default="lora,finetune", help=f"any of {','.join(PEER_SCRIPTS)}")
    parser.add_argument("--steps", default="20,100", help="the two step counts (S1,S2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--model", default=str(ROOT / "src/stablekit/shapes/model/diffusers"),
                        help="a diffusers folder, or sd15-random (full-size SD 1.5, random weights, built under --out)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", default=",".join(CONFIGS[:4]), help=f"any of {','.join(CONFIGS)}")
    parser.add_argument("--out", default="runs/bench-train-peers")
    parser.add_argument("--before-src", default="",
                        help="another stablekit src/ folder (e.g. `git archive` of an older commit): configs "
                             "before-warm / before-nocache run it beside this one, for before/after in one run")
    args = parser.parse_args(argv)
    s1, s2 = (int(s) for s in args.steps.split(","))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.model == "sd15-random":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from peers import make_sd15

        args.model = str(make_sd15(out)[0])
    configs = args.configs.split(",")
    repo = Path(args.diffusers_repo)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    base_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for method in args.methods.split(","):
        captions = method in ("lora", "finetune")
        data = make_data(out / ("data" if captions else "data-images"), args.images, captions)
        ours_data = data if captions else captioned_copy(data, out / f"data-{method}", OURS_CAPTION[method])
        if args.resolution != 64:
            ours_data = toml_copy(ours_data, out / f"data-{method}-{args.resolution}", args.resolution)
        script = out / Path(PEER_SCRIPTS[method]).name
        script.write_text(subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{PEER_SCRIPTS[method]}"],
                                         capture_output=True, text=True, check=True).stdout)
        warm_cache = out / f"cache-warm-{method}"
        shutil.rmtree(warm_cache, ignore_errors=True)
        env_warm = dict(base_env, STABLEKIT_TRAIN_CACHE=str(warm_cache))
        env_before = dict(base_env, PYTHONPATH=os.pathsep.join([str(Path(args.before_src).resolve()),
                                                                os.environ.get("PYTHONPATH", "")]))
        fills = {}
        for tag, env in (("stablekit", env_warm), ("before", dict(env_before, STABLEKIT_TRAIN_CACHE=str(warm_cache)))):
            if f"{tag}-warm" in configs:  # (the two versions' entries sit in separate folders when their keys differ)
                fill = fills[f"{tag}-warm"] = timed(stablekit_command(method, Path(args.model), ours_data, out / f"fill-{tag}",
                                                                      s1, args.batch), env, out / f"fill-{tag}.log")
                print(f"{method} {tag} fill (cold cache) {s1} steps: {fill[0]:.1f} s, {fill[1]:.0f} MiB, CPU {fill[2]:.1f} s",
                      flush=True)
        results: dict[str, dict[int, tuple[float, float, float]]] = {}
        # each configuration's two runs back to back: a load change between them would bias its rate
        for config in configs:
            for steps in (s1, s2):
                run = out / f"{method}-{config}-{steps}"
                shutil.rmtree(run, ignore_errors=True)
                run.mkdir()
                if config.startswith("diffusers"):
                    cmd = peer_command(method, script, Path(args.model), data, run, steps, args.batch, args.resolution,
                                       "bf16" if config == "diffusers-bf16" else "no")
                    env = base_env
                else:
                    tag, kind = config.split("-")
                    cache = {"cold": str(run / "cache"), "warm": str(warm_cache), "nocache": "off"}[kind]
                    cmd, env = stablekit_command(method, Path(args.model), ours_data, run, steps, args.batch), \
                        dict(env_before if tag == "before" else base_env, STABLEKIT_TRAIN_CACHE=cache)
                results.setdefault(config, {})[steps] = timed(cmd, env, run / "log.txt")
                print(f"{method} {config} {steps} steps: {results[config][steps][0]:.1f} s, "
                      f"{results[config][steps][1]:.0f} MiB, CPU {results[config][steps][2]:.1f} s", flush=True)
        peer_rate = peer_cpu_rate = None
        for config, by_steps in results.items():
            (t1, _, c1), (t2, rss, c2) = by_steps[s1], by_steps[s2]
            rate, cpu_rate = args.batch * (s2 - s1) / (t2 - t1), args.batch * (s2 - s1) / (c2 - c1)
            if config == configs[0]:
                peer_rate, peer_cpu_rate = rate, cpu_rate
            rows.append({"method": method, "config": config, "samples_per_s": rate, "samples_per_cpu_s": cpu_rate,
                         "fixed_s": t1 - s1 * args.batch / rate, "peak_rss_mib": rss,
                         "wall_s": {s1: t1, s2: t2}, "cpu_s": {s1: c1, s2: c2},
                         **({"fill_run": dict(zip(("wall_s", "peak_rss_mib", "cpu_s"), fills[config]), steps=s1)}
                            if config in fills else {})})
        peer_rss = next(r["peak_rss_mib"] for r in rows if r["method"] == method and r["config"] == configs[0])
        for r in rows:
            if r["method"] == method:
                r["speed_vs_diffusers"] = r["samples_per_s"] / peer_rate
                r["cpu_speed_vs_diffusers"] = r["samples_per_cpu_s"] / peer_cpu_rate
                r["rss_vs_diffusers"] = r["peak_rss_mib"] / peer_rss
    print(f"\nratios against {configs[0]}")
    print(f"\n| method | config | samples/s | vs diffusers | samples/CPU-s | vs diffusers (CPU) | fixed s | peak RSS MiB | RSS vs diffusers |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['config']} | {r['samples_per_s']:.2f} | {r['speed_vs_diffusers']:.2f}x | "
              f"{r['samples_per_cpu_s']:.3f} | {r['cpu_speed_vs_diffusers']:.2f}x | "
              f"{r['fixed_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['rss_vs_diffusers']:.2f} |")
    result = {"rows": rows, "steps": [s1, s2], "batch": args.batch, "images": args.images, "model": args.model,
              "resolution": args.resolution, "baseline": configs[0], "before_src": args.before_src,
              "diffusers_commit": commit, "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load": os.getloadavg()}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
