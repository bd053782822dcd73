"""Can the embedded model's autoencoder carry what each teaching method must teach?

Encodes (posterior mean) and decodes the training data of teach_targets.py (run those first: they
render it under runs/teach/data) and lets the shapes judge read the renders and the round trips.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_vae_roundtrip.py
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stablekit
from stablekit.formats import load_model
from stablekit.shapes import teach_eval as te
from stablekit.shapes.judge import Judge

CHECKS = [  # (what, file pattern, judged attribute, wanted value)
    ("teal diamonds (DreamBooth)", "runs/teach/data/teal-diamond-5/*.png", "color", "teal"),
    ("teal diamonds (DreamBooth)", "runs/teach/data/teal-diamond-5/*.png", "shape", "diamond"),
    ("orange diamonds (DreamBooth diagnostic)", "runs/teach/data/orange-diamond-5/*.png", "color", "orange"),
    ("orange diamonds (DreamBooth diagnostic)", "runs/teach/data/orange-diamond-5/*.png", "shape", "diamond"),
    ("large hexagons (TI)", "runs/teach/data/hexagon-5-large/*.png", "shape", "hexagon"),
    ("hexagons (fine-tune, first 40)", "runs/teach/data/hexagon-240-base-240/0000*.png", "shape", "hexagon"),
    ("outline (LoRA, first 40)", "runs/teach/data/outline-64/00*.png", "hollow", True),
]


def round_trip(vae, images: list[Image.Image]) -> list[Image.Image]:
    x = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images])).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return [Image.fromarray(((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)) for t in y]


def main() -> None:
    torch.set_num_threads(1)
    vae, judge = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32).vae, Judge.load()
    for method in te.METHODS:  # idempotent: renders only what is missing
        te.render_method_data(method, Path("runs/teach/data"))
    te.render_method_data("dreambooth", Path("runs/teach/data"), "orange")  # the diagnostic subject
    for what, pattern, key, want in CHECKS:
        images = [Image.open(p).convert("RGB") for p in sorted(glob.glob(pattern))[:40]]
        before = np.mean([v.get(key) == want for v in judge(images)])
        after = np.mean([v.get(key) == want for v in judge(round_trip(vae, images))])
        print(f"{what}: {key} == {want}: renders {before:.2f}, VAE round trip {after:.2f} (n {len(images)})")


if __name__ == "__main__":
    main()
