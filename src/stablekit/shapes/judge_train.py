"""Train the judge's shape classifier on rendered images, and measure the judge on fresh renders.

    python -m stablekit.shapes.judge_train            # retrain -> judge_weights.safetensors
    python -m stablekit.shapes.judge_train --check    # accuracy of the shipped judge
    python -m stablekit.shapes.judge_train --calibrate  # the abstention threshold, from VAE round trips

Training is deterministic (fixed seeds, one thread). Images are augmented the way generated
images are imperfect (blur, pixel noise, global color shift) before the silhouette is measured,
and diameters and positions go beyond the base ranges so the classifier never relies on them.
The held-out check uses a different seed and the exact base distribution plus reserved shapes,
teal and the outline style.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from stablekit.shapes.judge import WEIGHTS_PATH, Judge, ShapeClassifier, measure
from stablekit.shapes.render import ALL_COLORS, ALL_SHAPES, ShapeSpec, render, sample_spec

TRAIN_SEED = 1000
CHECK_SEED = 2000
CALIBRATION_SEED = 3000
JUDGED = ("shape", "color", "background", "size", "position", "hollow")


def sample_judge_set(n: int, seed: int, outline_p: float = 0.25, wide: bool = False):
    """n rendered images over every shape and color (teal too), a share of them outlines.

    `wide` also varies the diameter (12 to 38 px) and the center (+-8 px) beyond the base ranges.
    """
    images, specs = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        hollow = bool(rng.random() < outline_p)
        colors = tuple(ALL_COLORS)
        spec = sample_spec(rng, shapes=ALL_SHAPES, colors=colors, backgrounds=colors, hollow=hollow)
        if wide:
            lo = 28.0 if hollow else 12.0
            spec = ShapeSpec(**{**spec.to_dict(), "diameter": float(rng.uniform(lo, 38.0)),
                                "dx": float(rng.uniform(-8, 8)), "dy": float(rng.uniform(-8, 8))})
        images.append(render(spec))
        specs.append(spec)
    return np.stack(images), specs


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (sigma 0 to 1.2 px), Gaussian noise (sigma 0 to 8) and a global color shift (+-12)."""
    n = len(images)
    sigma = np.maximum(rng.uniform(0.0, 1.2, size=n), 1e-3)
    taps = np.exp(-np.arange(-3, 4)[None] ** 2 / (2 * sigma[:, None] ** 2))
    taps /= taps.sum(1, keepdims=True)  # [n, 7]; sigma ~ 0 is the identity
    x = images.astype(np.float32)
    for axis in (1, 2):  # separable Gaussian, edges replicated
        pad = [(0, 0)] * 4
        pad[axis] = (3, 3)
        p = np.pad(x, pad, mode="edge")
        x = sum(taps[:, k, None, None, None] * np.take(p, np.arange(k, k + 64), axis=axis) for k in range(7))
    noise = rng.normal(size=x.shape) * rng.uniform(0, 8, size=(n, 1, 1, 1))
    shift = rng.uniform(-12, 12, size=(n, 1, 1, 3))
    return np.clip(np.rint(x + noise + shift), 0, 255).astype(np.uint8)


def train_shape_classifier(n: int = 14000, epochs: int = 12, seed: int = TRAIN_SEED,
                           log=print) -> ShapeClassifier:
    """Train the silhouette CNN from scratch on n wide, augmented renders (deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible and polite to a training job sharing the CPU
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        images, specs = sample_judge_set(n, seed, wide=True)
        half = n // 2  # half clean, half augmented
        images = np.concatenate([images[:half], augment(images[half:], rng)])
        feats = torch.from_numpy(measure(images)["features"])
        labels = torch.tensor([ALL_SHAPES.index(s.shape) for s in specs])
        model = ShapeClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * ((n + 127) // 128)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total, correct = 0.0, 0
            for s in range(0, n, 128):
                idx = perm[s:s + 128]
                logits = model(feats[idx])
                loss = torch.nn.functional.cross_entropy(logits, labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == labels[idx]).sum())
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, train acc {correct / n:.4f}")
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def judge_accuracy(judge: Judge, n: int = 2000, seed: int = CHECK_SEED, augmented: bool = False) -> dict:
    """Per-attribute accuracy of `judge` on n fresh renders (all shapes and colors, 25% outlines)."""
    images, specs = sample_judge_set(n, seed)
    if augmented:
        images = augment(images, np.random.default_rng(seed))
    found = judge.judge(images)
    acc = {a: float(np.mean([f[a] == getattr(s, a) for f, s in zip(found, specs)])) for a in JUDGED}
    for group, keep in (("reserved shapes", lambda s: s.shape in ("hexagon", "cross", "diamond")),
                        ("teal", lambda s: "teal" in (s.color, s.background)),
                        ("outline", lambda s: s.hollow)):
        sel = [i for i, s in enumerate(specs) if keep(s)]
        acc[f"all attributes, {group} (n={len(sel)})"] = float(np.mean(
            [all(found[i][a] == getattr(specs[i], a) for a in JUDGED) for i in sel]))
    return acc


def roundtrip(images: np.ndarray, model=None) -> np.ndarray:
    """uint8 images encoded and decoded by `model`'s autoencoder (default: the embedded model)."""
    import stablekit
    from stablekit.generate.pipeline import decode, encode

    pipe = stablekit.load(model, progress=False) if model else stablekit.load(progress=False)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), 250):
            x = images[s:s + 250].astype(np.float32) / 255
            out.append(decode(pipe.components, encode(pipe.components, x)))
    return (np.concatenate(out) * 255).round().astype(np.uint8)


def calibrate_thresholds(judge: Judge, n: int = 2000, seed: int = CALIBRATION_SEED, quantile: float = 0.01,
                         model=None) -> dict:
    """The abstention thresholds, from renders (all shapes, 25% outlines) passed through the
    autoencoder, the cleanest images a latent model can make. Over the silhouettes the classifier
    reads correctly there, each threshold (classifier probability, template fit) is the
    `quantile` of its score, so together they keep at least 1 - 2 x quantile of what the
    autoencoder carries faithfully. Returns both and what they do on those images."""
    from stablekit.shapes.judge import silhouette_fit

    images, specs = sample_judge_set(n, seed)
    images = roundtrip(images, model)
    m = measure(images)
    probs = judge.shape_probabilities(m["features"])
    conf, fit = probs.max(1), silhouette_fit(m["features"], probs.argmax(1))
    right = np.array([ALL_SHAPES[int(p.argmax())] == s.shape for p, s in zip(probs, specs)]) & m["found"]
    threshold = float(np.quantile(conf[right], quantile))
    fit_threshold = float(np.quantile(fit[right], quantile))
    small = np.array([s.size == "small" for s in specs])
    kept = (conf >= threshold) & (fit >= fit_threshold)

    def share(mask, of):
        return round(float(mask[of].mean()), 4) if of.any() else None

    return {"threshold": round(threshold, 3), "fit_threshold": round(fit_threshold, 3), "n": n, "seed": seed,
            "roundtrip shape accuracy without abstention": share(right, np.ones_like(right)),
            "correct reads kept": share(kept, right), "wrong reads abstained": share(~kept, ~right),
            "wrong reads": int((~right).sum()), "accuracy of kept reads": share(right, kept),
            "small: correct reads kept": share(kept, right & small),
            "small: wrong reads abstained": share(~kept, ~right & small)}


def save_weights(model: ShapeClassifier, path: str | Path = WEIGHTS_PATH) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only measure the shipped judge")
    ap.add_argument("--n", type=int, default=2000, help="fresh images for the check")
    ap.add_argument("--calibrate", action="store_true",
                    help="measure the abstention threshold on renders passed through the embedded autoencoder")
    ap.add_argument("--out", default=str(WEIGHTS_PATH), help="where the weights are written (and read)")
    args = ap.parse_args(argv)
    if args.calibrate:
        t = time.time()
        stats = calibrate_thresholds(Judge.load(args.out, threshold=0.0, fit_threshold=0.0))
        for k, v in stats.items():
            print(f"  {k:50s} {v}")
        print(f"calibrated in {time.time() - t:.0f} s; set judge.SHAPE_THRESHOLD and FIT_THRESHOLD to them")
        return 0
    if not args.check:
        t = time.time()
        path = save_weights(train_shape_classifier(), args.out)
        print(f"wrote {path} ({path.stat().st_size} bytes) in {time.time() - t:.0f} s")
    judge = Judge.load(args.out)
    for augmented in (False, True):
        t = time.time()
        acc = judge_accuracy(judge, args.n, augmented=augmented)
        print(f"{'augmented' if augmented else 'clean'} renders, n={args.n}, seed={CHECK_SEED} "
              f"({time.time() - t:.1f} s):")
        for k, v in acc.items():
            print(f"  {k:40s} {v:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
