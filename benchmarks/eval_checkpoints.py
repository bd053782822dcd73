"""FID/KID (shapes-features-v2) and judge adherence over the kept UNet checkpoints of a shapes
pretraining run, with cluster-bootstrap 95% intervals; one checkpoint at a time, resumable.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/eval_checkpoints.py \
        --run /work/runs/shapes-v2 --steps 1500,5500,3500,2500,4500 --n 512 --per-prompt 4 \
        --out docs/reports/eval/checkpoints-v2 --work /tmp/evalfid-ckpts
    python benchmarks/eval_checkpoints.py --out docs/reports/eval/checkpoints-v2 --summarize

Model per checkpoint: the run's exported model (`RUN/model/shapes.safetensors`: its VAE and text
encoder) with the UNet replaced by the EMA weights of `RUN/kept/step-NNNNNN.pt`, rounded to fp16 as
the export rounds them (so the last checkpoint is the exported model bit for bit), built in memory
by benchmarks/export_checkpoints.py's checkpoint_pipeline. Read-only on RUN.

Images: the first n / K captions of the held-out reference stream (evaluate/data.py, seed 777001),
K seeds per caption in one batch, 20 steps, the pipeline's default sampler and CFG. FID/KID against
`--ref-n` renders of the same stream; the floor is `n` renders of a disjoint stream (seed 777002)
against the same reference. Adherence: the judge on the same images, against the attributes each
caption names (not eval-v1's 240 prompts). 95% intervals: value +- 1.96 bootstrap standard
deviations, resampling whole prompts (K images) of the generated set with the reference held fixed,
since every checkpoint is scored against the same renders (evaluate/bootstrap.py).

Resuming: images are cached in WORK after every chunk, and OUT/step-NNNNNN.json is written when a
checkpoint is done (skipped on the next run); --rescore recomputes finished checkpoints' metrics from
their cached images; --summarize writes OUT/report.md and OUT/checkpoints.png from the JSON files present.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stablekit.evaluate.data import REFERENCE_SEED  # the held-out caption stream (777001)


def judged_items(count: int):
    """The first `count` captions of the reference stream as judge prompts (their named attributes)."""
    from stablekit.evaluate.runner import JudgedPrompt
    from stablekit.shapes.captions import sample_item

    items = []
    for i in range(count):
        _, caption, named = sample_item(REFERENCE_SEED, i)  # the captions shapes_reference renders
        items.append(JudgedPrompt(i, caption, REFERENCE_SEED + i, named))
    return items


def reference_features(work: Path, ref_n: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference features [ref_n], floor features [n]): renders, cached in WORK."""
    from stablekit.evaluate.data import shapes_reference
    from stablekit.evaluate.shapes_features import ShapesFeatures

    path = work / f"reference-{ref_n}-{n}.npz"
    if not path.exists():
        feats = ShapesFeatures()
        ref = feats(shapes_reference(ref_n, seed=REFERENCE_SEED).images)
        floor = feats(shapes_reference(n, seed=REFERENCE_SEED + 1).images)
        np.savez(path, ref=ref, floor=floor, name=feats.name)
    z = np.load(path)
    return z["ref"], z["floor"]


def generate_cached(pipe_fn, captions, seeds, per_prompt: int, steps: int, cache: Path, chunk: int = 8):
    """Images for every caption (K each), appended to `cache` after every `chunk` captions; returns
    (uint8 images, CPU seconds, wall seconds) including the time of earlier, interrupted runs."""
    from stablekit.evaluate.runner import generate

    z = np.load(cache) if cache.exists() else None
    done = z["images"] if z is not None else np.zeros((0, 64, 64, 3), np.uint8)
    cpu, wall = (float(z["cpu"]), float(z["wall"])) if z is not None else (0.0, 0.0)
    pipe = None
    while len(done) < len(captions) * per_prompt:
        pipe = pipe or pipe_fn()
        start = len(done) // per_prompt
        c0, w0 = time.process_time(), time.time()
        images, _ = generate(pipe, captions[start:start + chunk], [s * per_prompt for s in seeds[start:start + chunk]],
                             {"steps": steps}, per_prompt)
        cpu, wall = cpu + time.process_time() - c0, wall + time.time() - w0
        done = np.concatenate([done, images])
        np.savez(cache.with_suffix(".tmp.npz"), images=done, cpu=cpu, wall=wall)
        cache.with_suffix(".tmp.npz").replace(cache)
        print(f"  {len(done)}/{len(captions) * per_prompt} images, {cpu:.0f} CPU s, {wall:.0f} wall s", flush=True)
    return done, cpu, wall


def evaluate_checkpoint(args, step: int, ref: np.ndarray, floor: np.ndarray) -> dict:
    from export_checkpoints import checkpoint_pipeline  # beside this file

    from stablekit.evaluate.bootstrap import fid_interval, kid_interval, mean_interval
    from stablekit.evaluate.shapes_features import ShapesFeatures
    from stablekit.shapes.evaluate import evaluate_images

    k = args.per_prompt
    items = judged_items(args.n // k)
    images, cpu, wall = generate_cached(lambda: checkpoint_pipeline(args.run, args.run / "kept" / f"step-{step:06d}.pt"), [i.prompt for i in items],
                                        [i.seed for i in items], k, args.sampler_steps,
                                        args.work / f"images-{step:06d}-{args.n}-{k}.npz")
    feats = ShapesFeatures()
    gen = feats(images)
    per_image = [it for it in items for _ in range(k)]
    judged = evaluate_images(per_image, images)
    scores = [r["score"] for r in judged["items"]]
    out = {"step": step, "n": len(images), "per_prompt": k, "prompts": len(items), "ref_n": len(ref),
           "features": feats.name, "sampler_steps": args.sampler_steps,
           "fid": fid_interval(gen, ref, group=k, reps=args.reps, resample_reference=False).to_dict(),
           "kid": kid_interval(gen, ref, group=k, reps=max(10, args.reps // 2), resample_reference=False).to_dict(),
           "adherence": mean_interval(scores, group=k).to_dict(),
           "accuracy": judged["accuracy"], "diversity": judged["diversity_overall"],
           "abstained_total": judged["abstained_total"],
           "generation_cpu_seconds": round(cpu, 1), "generation_wall_seconds": round(wall, 1),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return out


def floor_figures(args, ref: np.ndarray, floor: np.ndarray) -> dict:
    from stablekit.evaluate.bootstrap import fid_interval, kid_interval

    path = args.out / "floor.json"
    if not path.exists() or args.rescore:
        out = {"n": len(floor), "ref_n": len(ref),
               "fid": fid_interval(floor, ref, reps=args.reps, resample_reference=False).to_dict(),
               "kid": kid_interval(floor, ref, reps=max(10, args.reps // 2), resample_reference=False).to_dict()}
        path.write_text(json.dumps(out, indent=1))
    return json.loads(path.read_text())


def paired_figures(args, ref: np.ndarray) -> None:
    """OUT/paired.json: FID(earlier) - FID(later) with a paired interval for consecutive finished
    checkpoints and for the first against the last (same captions and seeds at every checkpoint)."""
    from stablekit.evaluate.bootstrap import paired_fid_difference
    from stablekit.evaluate.shapes_features import ShapesFeatures

    steps = sorted(int(p.stem.split("-")[1]) for p in args.out.glob("step-*.json"))
    caches = {s: args.work / f"images-{s:06d}-{args.n}-{args.per_prompt}.npz" for s in steps}
    steps = [s for s in steps if caches[s].exists()]
    feats = ShapesFeatures()
    gen = {s: feats(np.load(caches[s])["images"][:args.n]) for s in steps}
    pairs = list(zip(steps, steps[1:])) + ([(steps[0], steps[-1])] if len(steps) > 2 else [])
    out = [{"from": a, "to": b, "fid_drop": paired_fid_difference(gen[a], gen[b], ref, group=args.per_prompt,
                                                                  reps=args.reps).to_dict()} for a, b in pairs]
    (args.out / "paired.json").write_text(json.dumps(out, indent=1))


def fmt(iv: dict, digits: int) -> str:
    return f"{iv['value']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def summarize(out: Path) -> str:
    """report.md (table) and checkpoints.png (FID, KID, adherence vs step with 95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((json.loads(p.read_text()) for p in out.glob("step-*.json")), key=lambda r: r["step"])
    floor = json.loads((out / "floor.json").read_text()) if (out / "floor.json").exists() else None
    lines = ["| UNet step | n (prompts x K) | FID [95% CI] | KID [95% CI] | adherence [95% CI] | shape | colour | "
             "background | position | size | diversity | generation CPU s |", "|" + "---|" * 12]
    for r in rows:
        acc = " | ".join(f"{r['accuracy'][a]:.3f}" if a in r["accuracy"] else "" for a in
                         ("shape", "color", "background", "position", "size"))
        lines.append(f"| {r['step']} | {r['n']} ({r['prompts']}x{r['per_prompt']}) | {fmt(r['fid'], 3)} | "
                     f"{fmt(r['kid'], 4)} | {fmt(r['adherence'], 3)} | {acc} | "
                     f"{r['diversity']:.3f} | {r['generation_cpu_seconds']:.0f} |")
    if floor:
        lines.append(f"| renders (floor) | {floor['n']} | {fmt(floor['fid'], 3)} | {fmt(floor['kid'], 4)} | | | | | | | | |")
    if (out / "paired.json").exists():
        lines += ["", "FID(earlier) - FID(later), paired (same captions and seeds at both checkpoints, prompts "
                  "resampled together; > 0: FID fell):", "", "| from step | to step | FID drop [95% interval] |",
                  "|---|---|---|"]
        lines += [f"| {d['from']} | {d['to']} | {fmt(d['fid_drop'], 3)} |" for d in json.loads((out / "paired.json").read_text())]
    table = "\n".join(lines)
    (out / "report.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "floor": floor}, indent=1))
    if rows:
        steps = [r["step"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, key, label in zip(axes, ("fid", "kid", "adherence"), ("FID (shapes-features-v2)", "KID", "judge adherence")):
            v = np.array([r[key]["value"] for r in rows])
            lo = np.array([r[key]["low"] for r in rows])
            hi = np.array([r[key]["high"] for r in rows])
            ax.errorbar(steps, v, yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], marker="o", capsize=3)
            if floor and key in floor:
                ax.axhline(floor[key]["value"], color="gray", ls="--", label="renders vs renders")
                ax.legend(fontsize=8)
            ax.set_xlabel("UNet step")
            ax.set_title(label, fontsize=10)
        fig.suptitle(f"shapes-v2 checkpoints, n={rows[0]['n']} generated vs {rows[0]['ref_n']} renders, 95% bootstrap interval (prompts resampled, reference fixed)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "checkpoints.png", dpi=90)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("/work/runs/shapes-v2"))
    p.add_argument("--steps", default="1500,5500,3500,2500,4500", help="checkpoints in the order to run them")
    p.add_argument("--n", type=int, default=512, help="generated images per checkpoint")
    p.add_argument("--per-prompt", type=int, default=4, help="seeds per caption, batched (K)")
    p.add_argument("--ref-n", type=int, default=2000, help="reference renders")
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=200, help="bootstrap resamples (KID: half)")
    p.add_argument("--out", type=Path, default=Path("docs/reports/eval/checkpoints-v2"))
    p.add_argument("--work", type=Path, default=Path("/tmp/evalfid-ckpts"), help="image and feature cache")
    p.add_argument("--summarize", action="store_true", help="only write report.md and checkpoints.png")
    p.add_argument("--rescore", action="store_true",
                   help="recompute the metrics of finished checkpoints from the cached images (no generation)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        args.work.mkdir(parents=True, exist_ok=True)
        if args.n % args.per_prompt:
            raise SystemExit(f"--n {args.n} must be a multiple of --per-prompt {args.per_prompt}")
        ref, floor = reference_features(args.work, args.ref_n, args.n)
        floor_figures(args, ref, floor)
        for step in [int(s) for s in args.steps.split(",") if s.strip()]:
            dest = args.out / f"step-{step:06d}.json"
            cached = args.work / f"images-{step:06d}-{args.n}-{args.per_prompt}.npz"
            if args.rescore and not (dest.exists() and cached.exists()):
                continue  # --rescore only recomputes finished checkpoints from their cached images
            if dest.exists() and not args.rescore:
                continue
            print(f"[ckpt] step {step}", flush=True)
            row = evaluate_checkpoint(args, step, ref, floor)
            if args.rescore:  # keep when the images were made; say when they were rescored
                row["date"], row["rescored"] = json.loads(dest.read_text())["date"], row["date"]
            dest.write_text(json.dumps(row, indent=1))
            print(f"[ckpt] step {step}: FID {fmt(row['fid'], 3)}, adherence {fmt(row['adherence'], 3)}", flush=True)
            summarize(args.out)
        paired_figures(args, ref)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
