"""Does a DreamBooth run make "sks" a word of its own? The text side of each model, side by side.

For the embedded model and each DreamBooth artefact given (full checkpoints written by
`teach_targets.py dreambooth`), prints the norm of the "sks" token row and the cosine similarity
of the text encoder's output (the 77 x D context the UNet reads) between the instance prompt and
the class prompt, and between "a {colour} square" prompts before and after training (how far
the class prompts moved: 1.0 = untouched).

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_db_probe.py runs/teach/runs/NAME.safetensors ...
"""
from __future__ import annotations

import sys

import torch

import stablekit
from stablekit.formats import load_model
from stablekit.shapes.teach_eval import CLASS_PROMPT, INSTANCE_PROMPT
from stablekit.train.strategies.sd import _encode

PLAIN = ["a red square", "a blue square", "a yellow square", "a green square"]


def contexts(components, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        h, _ = _encode(components.text_encoder, components.tokenizer, prompts, "last")
    return torch.nn.functional.normalize(h.flatten(1), dim=1)


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    base = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32)
    base_plain = contexts(base, PLAIN)
    print(f"{'model':40s} sks-row  cos(instance, class)  cos(plain, base plain) mean")
    for name, path in [("base model 3", None)] + [(p.rsplit("/", 1)[-1], p) for p in paths]:
        c = base if path is None else load_model(path, dtype=torch.float32)
        ids = c.tokenizer("sks", add_special_tokens=False).input_ids
        norm = [round(c.text_encoder.get_input_embeddings().weight[i].norm().item(), 3) for i in ids]
        f = contexts(c, [INSTANCE_PROMPT, CLASS_PROMPT])
        moved = (contexts(c, PLAIN) * base_plain).sum(1).mean().item()
        print(f"{name:40s} {norm}  {float(f[0] @ f[1]):.4f}  {moved:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
