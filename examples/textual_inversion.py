"""Textual inversion on the embedded model: teach it `<hexagon>` from 5 images (Keras tutorial, 001).

    python examples/textual_inversion.py [--out runs/examples/ti] [--steps N] [--vectors N] [--lr X]
    python examples/textual_inversion.py --steps 10 --prompts 4        # a smoke run

1. render 5 large hexagons (a shape the embedded model never saw; at 14-18 px a hexagon differs
   from a circle by about a pixel) with captions that use the new word,
   e.g. "a large red <hexagon> on a blue background";
2. train only the new word's embedding vectors (every other weight stays bit-identical) with the
   embedded model's recipe, `TINY_RECIPES["textual-inversion"]` (8 vectors, lr 5e-3 with a cosine
   decay, 400 steps; docs/training.md); --steps / --vectors / --lr override it;
3. draw "a {color} <hexagon> on a {bg} background" for every color/background pair and let the
   shapes judge read them: the target (docs/shapes-world.md) is shape = hexagon in >= 70 % and
   color adherence >= 0.8. The same prompts with the plain word "hexagon" give the baseline.
The embedding is written as OUT/hexagon.safetensors (A1111 layout), used by its file name: put it in
an embeddings folder, `stablekit generate "a red hexagon on a blue background" --embeddings-dir DIR`.
"""
from __future__ import annotations

import argparse
import json
import time
from itertools import permutations
from pathlib import Path

import stablekit
import stablekit.train
from stablekit.formats import load_model
from stablekit.generate.pipeline import Pipeline
from stablekit.prompts.embedding_tokens import embedding_token_spelling
from stablekit.shapes.captions import render_dataset
from stablekit.shapes.judge import Judge
from stablekit.shapes.render import COLORS


def evaluate(components, word: str, limit: int = 0, seeds: int = 1, steps: int = 20) -> dict:
    """Fraction of images the judge reads as hexagons, and of those with the asked color
    (every color/background pair, or every k-th of them down to `limit` prompts)."""
    pipe, judge = Pipeline(components, progress=False), Judge.load()
    pairs = list(permutations(COLORS, 2))
    if limit and limit < len(pairs):
        pairs = pairs[::len(pairs) // limit][:limit]
    images, asked = [], []
    for color, bg in pairs:
        for seed in range(seeds):
            images.append(pipe.generate(f"a {color} {word} on a {bg} background", seed=seed, steps=steps)[0])
            asked.append(color)
    verdicts = judge(images)
    return {"prompts": len(images),
            "hexagon": sum(v["shape"] == "hexagon" for v in verdicts) / len(images),
            "color": sum(v["color"] == c for v, c in zip(verdicts, asked)) / len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/ti")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's 400")
    parser.add_argument("--vectors", type=int, default=None, help="default: the recipe's 8")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's 5e-3, cosine")
    parser.add_argument("--prompts", type=int, default=0, help="evaluate on this many color/background pairs (0: all 56)")
    parser.add_argument("--baseline", action="store_true", help="also judge the plain word 'hexagon' before training")
    args = parser.parse_args()
    out = Path(args.out)

    data = render_dataset(out / "data", n=5, seed=1, shape_word="<hexagon>", shapes=("hexagon",),
                          sizes=("large",))
    components = load_model(stablekit.EMBEDDED_MODEL)
    baseline = evaluate(components, "hexagon", args.prompts) if args.baseline else None

    overrides = {k: v for k, v in (("steps", args.steps), ("vectors", args.vectors), ("lr", args.lr)) if v is not None}
    t = time.time()
    result = stablekit.train("textual-inversion", components=components, data=str(data), out=str(out),
                             token="<hexagon>", init_word="circle", batch_size=5, sample_every=0, checkpoint_every=50,
                             **overrides)
    minutes = (time.time() - t) / 60
    # the trained components hold the new tokens; the prompt encoder turns "<hexagon>" into all its
    # vectors with the spelling training used (prompts/embedding_tokens.py), recorded in the report
    trained = evaluate(components, "<hexagon>", args.prompts)
    config = result["config"]
    report = {"baseline_plain_word": baseline, "textual_inversion": trained, "train_minutes": round(minutes, 1),
              "embedding_tokens": embedding_token_spelling("<hexagon>", components.tokenizer),
              **{k: config[k] for k in ("steps", "vectors", "lr", "lr_schedule")}, "artefact": result["artefact"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
