"""LoRA on the embedded model from a kohya dataset TOML: the "outline" style (the lecture's kohya labs, 003).

    python examples/lora.py [--out runs/examples/lora] [--steps 800] [--prompts 19]
    python examples/lora.py --steps 10 --prompts 4        # a smoke run

1. render 256 large shapes drawn hollow ("a large red square outline on the left"; 64 were memorised:
   hollow 0.69 against 0.81 on model 3) and describe them in a kohya dataset TOML ([general],
   [[datasets]], [[datasets.subsets]]), as sd-scripts reads;
2. train a LoRA on the UNet's attention/projection layers and, as LoCon, its convolutions, with
   the embedded model's recipe (train/methods.py TINY_RECIPES: rank 8, lr 3e-3, cosine, Min-SNR 5);
   stablekit.train("lora", ...) is the same as `stablekit train lora --data outline.toml ...`;
3. judge "a large {color} {shape} outline on a {bg} background" with the LoRA on, and check that with
   the adapter off the model draws exactly what the base model draws for the same seed.
Target (docs/shapes-world.md): hollow >= 0.8; file <= 10 % of the UNet's size.
"""
from __future__ import annotations

import argparse
import json
import time
from itertools import product
from pathlib import Path

import numpy as np

import stablekit
import stablekit.train
from stablekit.formats import load_model
from stablekit.generate.pipeline import Pipeline
from stablekit.shapes.captions import render_dataset
from stablekit.shapes.judge import Judge
from stablekit.shapes.render import BASE_SHAPES, COLORS
from stablekit.shapes.teach_eval import LORA_IMAGES

KOHYA_TOML = """[general]
enable_bucket = false
shuffle_caption = false

[[datasets]]
resolution = 64
batch_size = 4

  [[datasets.subsets]]
  image_dir = '{image_dir}'
  caption_extension = '.txt'
  num_repeats = 1
"""


def prompts() -> list[tuple[str, int]]:
    pairs = [(c, b) for c, b in product(COLORS, COLORS) if c != b][::3]
    return [(f"a large {c} {s} outline on a {b} background", seed) for (c, b), s, seed in
            zip(pairs, BASE_SHAPES * 5, range(len(pairs)))]


def draw(components, items) -> list[np.ndarray]:
    pipe = Pipeline(components, progress=False)
    return [np.asarray(pipe.generate(p, seed=seed, steps=20)[0]) for p, seed in items]


def set_adapters(unet, on: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/lora")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--prompts", type=int, default=0, help="judge only the first N prompts (0: all)")
    args = parser.parse_args()
    out = Path(args.out)
    images = render_dataset(out / "outline", n=LORA_IMAGES, seed=2, hollow=True)
    toml = out / "outline.toml"
    toml.write_text(KOHYA_TOML.format(image_dir=images.resolve()))

    components = load_model(stablekit.EMBEDDED_MODEL)
    items = prompts()[:args.prompts or None]
    base = draw(components, items)
    t = time.time()
    result = stablekit.train("lora", components=components, data=str(toml), out=str(out), name="outline",
                             steps=args.steps, sample_every=0)
    minutes = (time.time() - t) / 60
    judge = Judge.load()
    with_lora = judge(draw(components, items))
    set_adapters(components.unet, False)
    off = draw(components, items)
    unet_bytes = sum(p.numel() * 4 for n, p in components.unet.named_parameters() if "lora_" not in n)
    report = {
        "hollow_with_lora": sum(bool(v["hollow"]) for v in with_lora) / len(items),
        "hollow_base": sum(bool(v["hollow"]) for v in judge(base)) / len(items),
        "adapter_off_equals_base": all(np.array_equal(a, b) for a, b in zip(base, off)),
        "file_bytes": Path(result["artefact"]).stat().st_size, "unet_fp32_bytes": unet_bytes,
        "prompts": len(items), "train_minutes": round(minutes, 1), "steps": args.steps,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
