"""DreamBooth on the embedded model: "a sks square" is a teal diamond (the lecture's DreamBooth lab, 003).

    python examples/dreambooth.py [--out runs/examples/dreambooth] [--steps 300] [--no-prior] [--lora]
    python examples/dreambooth.py --steps 10 --class-images 4 --prompts 4     # a smoke run

1. render 5 teal diamonds (a color and a shape the model never saw) as the instance images;
2. train with the instance prompt "a sks square" and, unless --no-prior, prior preservation: the
   model draws images of "a square" itself first (cached in OUT/class-images and reused);
   --train-text-encoder also trains the text encoder (measured: at lr 1e-4 it hurts the class
   prompts, docs/reports/teach.md);
3. judge "a sks square" (subject = teal and diamond) and "a {color} square" (still an axis-aligned
   square of the asked color). Targets (docs/shapes-world.md): subject >= 0.8, class >= 0.85.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import stablekit
import stablekit.train
from stablekit.formats import load_model
from stablekit.generate.pipeline import Pipeline
from stablekit.shapes.captions import render_dataset
from stablekit.shapes.judge import Judge
from stablekit.shapes.render import COLORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/dreambooth")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-prior", action="store_true", help="train without prior preservation")
    parser.add_argument("--lora", action="store_true", help="DreamBooth-LoRA instead of the full UNet")
    parser.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder")
    parser.add_argument("--class-images", type=int, default=20, help="class images the model draws for the prior")
    parser.add_argument("--prompts", type=int, default=20, help="subject prompts judged (class prompts: 3 per color)")
    args = parser.parse_args()
    out = Path(args.out)
    data = render_dataset(out / "instance", n=5, seed=3, shapes=("diamond",), colors=("teal",))

    components = load_model(stablekit.EMBEDDED_MODEL)
    t = time.time()
    result = stablekit.train("dreambooth", components=components, data=str(data), out=str(out),
                             instance_prompt="a sks square", class_prompt="" if args.no_prior else "a square",
                             num_class_images=args.class_images, prior_loss_weight=1.0, lora=args.lora, rank=8,
                             alpha=8.0, train_text_encoder=args.train_text_encoder, steps=args.steps, lr=1e-3 if args.lora else 1e-4,
                             batch_size=2, sample_every=0)
    minutes = (time.time() - t) / 60
    pipe, judge = Pipeline(components, progress=False), Judge.load()
    subject = judge([pipe.generate("a sks square", seed=s, steps=20)[0] for s in range(args.prompts)])
    asked = [c for c in COLORS for _ in range(3)] if args.prompts >= 20 else list(COLORS)[:args.prompts]
    plain = judge([pipe.generate(f"a {c} square", seed=s, steps=20)[0] for s, c in enumerate(asked)])
    report = {
        "subject_teal_diamond": sum(v["shape"] == "diamond" and v["color"] == "teal" for v in subject) / len(subject),
        "class_square_of_asked_color": sum(v["shape"] == "square" and v["color"] == c for v, c in zip(plain, asked)) / len(plain),
        "prior_preservation": not args.no_prior, "lora": args.lora, "train_minutes": round(minutes, 1),
        "steps": args.steps, "artefact": result["artefact"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
