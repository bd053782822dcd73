"""What does the embedded model's frozen text encoder make of the words the teaching methods add?

Prints how each word tokenizes, the norm of its token embedding rows (rows of words never seen in
pretraining keep their small initial norm) and the cosine similarity of the encoder's output
(the 77 x D context the UNet reads) for "a large red WORD on a blue background" between words:
base shapes, the new words (hexagon, diamond, teal, sks, outline) and made-up ones.

    nice -n 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_text_probe.py
"""
from __future__ import annotations

import torch

import stablekit
from stablekit.formats import load_model
from stablekit.train.strategies.sd import _encode

WORDS = ["circle", "square", "triangle", "star", "hexagon", "diamond", "sks", "teal", "zebra", "pentagon"]


def main() -> None:
    torch.set_num_threads(1)
    c = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32)
    rows = c.text_encoder.get_input_embeddings().weight
    for w in WORDS + ["outline", "red"]:
        ids = c.tokenizer(w, add_special_tokens=False).input_ids
        print(f"{w:9s} tokens {c.tokenizer.convert_ids_to_tokens(ids)} row norms {[round(rows[i].norm().item(), 3) for i in ids]}")
    with torch.no_grad():
        h, _ = _encode(c.text_encoder, c.tokenizer, [f"a large red {w} on a blue background" for w in WORDS], "last")
    f = torch.nn.functional.normalize(h.flatten(1), dim=1)
    sim = f @ f.T
    print(" " * 9 + " ".join(f"{w[:6]:>6s}" for w in WORDS))
    for i, w in enumerate(WORDS):
        print(f"{w:9s}" + " ".join(f"{x:6.3f}" for x in sim[i].tolist()))


if __name__ == "__main__":
    main()
