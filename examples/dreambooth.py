"""DreamBooth on the embedded model: "a sks square" is a teal diamond (the lecture's DreamBooth lab, 003).

    python examples/dreambooth.py [--out runs/examples/dreambooth] [--lora] [--no-prior] [--subject-color C]
    python examples/dreambooth.py --subject-color orange   # the recipe measured in teach.md, session 14
    python examples/dreambooth.py --steps 10 --class-images 4 --prompts 4   # a smoke run

1. render 5 diamonds of the subject colour as the instance images: teal (a colour the base data
   never has: the lab's target) or, as a diagnostic, a base colour such as orange (the embedded
   model's autoencoder turns teal blue or green, docs/reports/teach.md);
2. train with the instance prompt "a sks square" and, unless --no-prior, prior preservation: the
   model draws images of "a square" itself first (cached in OUT/class-images and reused). Settings
   not given come from the embedded model's recipe (train/methods.py): pivotal tuning
   (`TINY_DREAMBOOTH_PIVOTAL`: the identifier's own token row "sks" at lr 5e-3 beside the UNet at
   lr 3e-5, 400 steps, text encoder frozen, 20 class images; docs/training.md), measured on the
   orange subject at subject 0.85 with plain squares 0.83 at training seed 0, the best of five
   (mean of seeds 0-4: 0.47 / 0.58; 0.80 / 0.33 with --no-prior; docs/reports/teach.md, session 14);
   with --lora, `TINY_RECIPES["dreambooth"]` (lr 1e-4, 200
   steps, the text encoder at text_encoder_lr 1e-5, no pivotal tuning). --identifier-lr X with --lora also
   writes OUT/sks.safetensors, the embedding to load with the LoRA
   (`stablekit generate "<lora:dreambooth:1> a sks square" --lora-dir ... --embeddings-dir ...`);
3. judge "a sks square" (subject = a diamond of the subject colour) and "a {color} square" (still an
   axis-aligned square of the asked colour). Targets (docs/shapes-world.md): subject >= 0.8, class >= 0.85.
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
    parser.add_argument("--subject-color", default="teal", help="teal (the target) or a base colour (a diagnostic)")
    parser.add_argument("--no-prior", action="store_true", help="train without prior preservation (prior loss weight 0)")
    parser.add_argument("--lora", action="store_true", help="DreamBooth-LoRA instead of the full UNet")
    parser.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="train the text encoder (default: the recipe's: off, with --lora on at text_encoder_lr 1e-5)")
    parser.add_argument("--identifier-lr", type=float, default=None,
                        help="pivotal tuning: lr of the 'sks' row (0: off; default: the recipe's, 5e-3, with --lora 0)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's (400, with --lora 200)")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's (3e-5, with --lora 1e-4)")
    parser.add_argument("--class-images", type=int, default=None, help="class images the model draws (default: 20)")
    parser.add_argument("--prompts", type=int, default=20, help="subject prompts judged (class prompts: 3 per color)")
    args = parser.parse_args()
    out = Path(args.out)
    color = args.subject_color
    data = render_dataset(out / f"instance-{color}", n=5, seed=3, shapes=("diamond",), colors=(color,))

    given = {"steps": args.steps, "lr": args.lr, "num_class_images": args.class_images,
             "train_text_encoder": args.train_text_encoder, "identifier_lr": args.identifier_lr}
    components = load_model(stablekit.EMBEDDED_MODEL)
    t = time.time()
    result = stablekit.train("dreambooth", components=components, data=str(data), out=str(out),
                             instance_prompt="a sks square", class_prompt="a square",
                             prior_loss_weight=0.0 if args.no_prior else 1.0, lora=args.lora, rank=8, alpha=8.0,
                             batch_size=2, sample_every=0,
                             **{k: v for k, v in given.items() if v is not None})
    minutes = (time.time() - t) / 60
    # the trained components: the LoRA injected and the identifier's trained row in place
    pipe, judge = Pipeline(components, progress=False), Judge.load()
    subject = judge([pipe.generate("a sks square", seed=s, steps=20)[0] for s in range(args.prompts)])
    asked = [c for c in COLORS for _ in range(3)] if args.prompts >= 20 else list(COLORS)[:args.prompts]
    plain = judge([pipe.generate(f"a {c} square", seed=s, steps=20)[0] for s, c in enumerate(asked)])
    config = result["config"]
    report = {
        f"subject_{color}_diamond": sum(v["shape"] == "diamond" and v["color"] == color for v in subject) / len(subject),
        "class_square_of_asked_color": sum(v["shape"] == "square" and v["color"] == c for v, c in zip(plain, asked)) / len(plain),
        "prior_preservation": not args.no_prior, "lora": args.lora, "train_minutes": round(minutes, 1),
        **{k: config[k] for k in ("steps", "lr", "train_text_encoder", "text_encoder_lr", "identifier_lr",
                                  "num_class_images")},
        "artefact": result["artefact"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
