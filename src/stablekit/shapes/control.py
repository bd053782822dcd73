"""ControlNet data and evaluation for the shapes world (shapes-world.md, "ControlNet" target).

The condition is a 64x64 mask of the object: white (255) where the rendered object covers at
least half a pixel, black elsewhere. Unlike the base data, the object may be any base shape at
any place and any size (`diameter` uniform in MIN_DIAMETER..MAX_DIAMETER, the centre uniform over
the frame wherever the object fits), so a net that only copies the 5 training positions fails.
Captions name shape, colour and background (never size or position: the mask says those).

Layout written by `write_dataset` (what `stablekit train controlnet --data DIR` reads):
    DIR/000000.png + DIR/000000.txt       the image and its caption
    DIR/conditioning/000000.png           the mask, same name
    DIR/dataset.toml                      the same as a kohya dataset TOML (conditioning_data_dir)

Evaluation (`evaluate_controlnet`): for a fixed set of specs (seeded, none of them needed on the
5 positions), generate from the caption with the mask as control; the generated object's mask is
the judge's coverage estimate (`judge.measure`: pixels far from the border-median background,
largest component) at >= 0.5; IoU with the condition mask, averaged; colour adherence is the
judge's object colour == the prompted colour.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from stablekit.shapes.render import BASE_SHAPES, IMAGE_SIZE, ShapeSpec, render, render_alpha, sample_spec

MIN_DIAMETER, MAX_DIAMETER = 12.0, 40.0  # px, circumscribed diameter (the base data: 14-18 and 30-36)
EVAL_SEED = 1_000_003  # evaluation specs come from their own stream, never from a training seed


def control_spec(rng: np.random.Generator) -> ShapeSpec:
    """A random base-shape spec at any place and size (see the module docstring)."""
    spec = sample_spec(rng, shapes=BASE_SHAPES)
    u = rng.random(3)
    diameter = float(MIN_DIAMETER + (MAX_DIAMETER - MIN_DIAMETER) * u[0])
    r = diameter / 2.0 + 1.0
    cx, cy = r + (IMAGE_SIZE - 2 * r) * u[1], r + (IMAGE_SIZE - 2 * r) * u[2]
    size = "large" if diameter >= 24.0 else "small"
    # position "center" + offset: render's fit-to-frame shift keeps every vertex inside
    return replace(spec, size=size, position="center", dx=cx - 32.0, dy=cy - 32.0, diameter=diameter)


def control_mask(spec: ShapeSpec) -> np.ndarray:
    """The condition image: uint8 [64, 64, 3], 255 where the object covers >= half a pixel."""
    mask = (render_alpha(spec) >= 0.5).astype(np.uint8) * 255
    return np.repeat(mask[..., None], 3, axis=-1)


def control_caption(spec: ShapeSpec) -> str:
    """"a red circle on a blue background": shape, colour and background only."""
    article = "an" if spec.color[0] in "aeiou" else "a"
    return f"{article} {spec.color} {spec.shape} on a {spec.background} background"


def control_items(n: int, seed: int) -> list[tuple[ShapeSpec, str]]:
    """n (spec, caption) pairs; item i depends only on (seed, i)."""
    items = []
    for i in range(n):
        spec = control_spec(np.random.default_rng([seed, i]))
        items.append((spec, control_caption(spec)))
    return items


def write_dataset(folder, n: int, seed: int = 0) -> Path:
    """Write n (image, mask, caption) triples in the layout of the module docstring; returns folder."""
    from PIL import Image

    folder = Path(folder)
    (folder / "conditioning").mkdir(parents=True, exist_ok=True)
    for i, (spec, text) in enumerate(control_items(n, seed)):
        name = f"{i:06d}"
        Image.fromarray(render(spec)).save(folder / f"{name}.png")
        Image.fromarray(control_mask(spec)).save(folder / "conditioning" / f"{name}.png")
        (folder / f"{name}.txt").write_text(text + "\n")
    (folder / "dataset.toml").write_text(
        "# kohya dataset config: images + captions here, same-name masks in conditioning/\n"
        f"[general]\nresolution = {IMAGE_SIZE}\n\n[[datasets]]\n\n  [[datasets.subsets]]\n"
        "  image_dir = \".\"\n  conditioning_data_dir = \"conditioning\"\n  caption_extension = \".txt\"\n")
    return folder


def object_masks(images) -> np.ndarray:
    """bool [B, 64, 64]: where each image's object is (the judge's coverage >= 0.5)."""
    from stablekit.shapes.judge import measure

    return measure(images)["alpha"] >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-item IoU of two bool [B, H, W] masks (1.0 when both are empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def evaluate_controlnet(generate_fn: Callable, n: int = 100, seed: int = EVAL_SEED, judge=None) -> dict:
    """Mean mask IoU and colour adherence of `generate_fn(prompts, masks, seeds) -> images`
    over n fixed items. Returns {"iou", "color", "background", "n", "per_item": [...]}, images
    in "images" (uint8 arrays) for a grid."""
    from stablekit.shapes.judge import Judge, as_array

    judge = judge or Judge.load()
    items = control_items(n, seed)
    masks = [control_mask(s) for s, _ in items]
    images = as_array(generate_fn([t for _, t in items], masks, [seed + i for i in range(n)]))
    ious = iou(object_masks(images), np.stack([m[..., 0] > 127 for m in masks]))
    found = judge(images)
    color = np.array([f["color"] == s.color for f, (s, _) in zip(found, items)], dtype=float)
    background = np.array([f["background"] == s.background for f, (s, _) in zip(found, items)], dtype=float)
    per_item = [{"prompt": t, "spec": s.to_dict(), "iou": float(v), "color": f["color"], "background": f["background"]}
                for (s, t), v, f in zip(items, ious, found)]
    return {"iou": float(ious.mean()), "color": float(color.mean()), "background": float(background.mean()),
            "n": n, "seed": seed, "per_item": per_item, "images": images, "masks": np.stack(masks)}


def pipeline_generate_fn(pipe, net, steps: int = 20, cfg: float | None = None, scale: float = 1.0) -> Callable:
    """A generate_fn for evaluate_controlnet over a Pipeline and a ControlNet (path or module)."""
    from stablekit.generate.control import ControlUnit

    def generate(prompts, masks, seeds):
        extra = {"cfg": cfg} if cfg is not None else {}
        return [np.asarray(pipe.generate(p, seed=s, steps=steps, width=IMAGE_SIZE, height=IMAGE_SIZE,
                                         controlnets=[ControlUnit(net=net, image=m, scale=scale)], **extra)[0])
                for p, m, s in zip(prompts, masks, seeds)]

    return generate


def grid(images: np.ndarray, masks: np.ndarray, cols: int = 8):
    """PIL image: rows of (mask, generated) pairs, `cols` pairs per row."""
    from PIL import Image

    n = len(images)
    rows = -(-n // cols)
    out = Image.new("RGB", (cols * 2 * IMAGE_SIZE, rows * IMAGE_SIZE), (128, 128, 128))
    for i in range(n):
        x, y = (i % cols) * 2 * IMAGE_SIZE, (i // cols) * IMAGE_SIZE
        out.paste(Image.fromarray(masks[i]), (x, y))
        out.paste(Image.fromarray(images[i]), (x + IMAGE_SIZE, y))
    return out


def checkpoint_net(components, path):
    """The ControlNet inside a `stablekit train controlnet` checkpoint (read with weights_only)."""
    from stablekit.train.checkpoint import load_checkpoint
    from stablekit.train.strategies.controlnet import new_controlnet

    net = new_controlnet(components.unet, components.vae_scale_factor)
    net.load_state_dict(load_checkpoint(Path(path))["strategy"]["controlnet"])
    return net.eval()


def main(argv=None) -> int:
    """`python -m stablekit.shapes.control render DIR --n N` | `eval --controlnet PATH [--model M] --out DIR`."""
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(prog="python -m stablekit.shapes.control", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write an (image, mask, caption) dataset")
    r.add_argument("out")
    r.add_argument("--n", type=int, default=2000)
    r.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="mask IoU and colour adherence of a ControlNet")
    e.add_argument("--controlnet", required=True, help="ControlNet file or diffusers folder, or a training "
                   "checkpoint step-NNNNNN.pt of `stablekit train controlnet`")
    e.add_argument("--model", default=None, help="base model (default: the embedded shapes model)")
    e.add_argument("--out", required=True, help="folder for report.json and grid.png")
    e.add_argument("--n", type=int, default=100)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--cfg", type=float, default=None)
    e.add_argument("--scale", type=float, default=1.0, help="ControlNet weight")
    args = parser.parse_args(argv)
    if args.command == "render":
        print(write_dataset(args.out, args.n, args.seed))
        return 0
    import stablekit

    pipe = stablekit.load(args.model, progress=False) if args.model else stablekit.load(progress=False)
    net = args.controlnet
    if str(net).endswith(".pt"):
        net = checkpoint_net(pipe.components, net)
    start = time.perf_counter()
    report = evaluate_controlnet(pipeline_generate_fn(pipe, net, args.steps, args.cfg, args.scale), args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid(report.pop("images")[:32], report.pop("masks")[:32]).save(out / "grid.png")
    report.update(controlnet=str(args.controlnet), steps=args.steps, cfg=args.cfg, scale=args.scale,
                  seconds=round(time.perf_counter() - start, 1))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("iou", "color", "background", "n", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
