"""How well does a text encoder tell captions apart that differ in one attribute?

For 400 training-style captions and each of their one-attribute-changed variants
(stablekit.shapes.captions.hard_negatives), reports the mean cosine similarity of the pooled
embeddings and the mean distance of the per-token hidden states the UNet cross-attends to,
grouped by which attribute changed. Lower similarity = the attribute is easier for the UNet to
read. The embedded model of session 1 embedded "a ... star" and "a ... triangle" 0.995 alike.

    .venv/bin/python benchmarks/probe_text_encoder.py                     # the embedded model
    .venv/bin/python benchmarks/probe_text_encoder.py --model PATH        # any stablekit.load path
    .venv/bin/python benchmarks/probe_text_encoder.py --state runs/x/text/final.pt  # a pretrain stage
"""
from __future__ import annotations

import argparse
import collections
import json

import torch

import stablekit
from stablekit.formats.tokenizer import clip_tokenizer
from stablekit.shapes.architecture import build_text_encoder
from stablekit.shapes.captions import hard_negatives, make_batch, parse_caption


def changed_attribute(a: dict, b: dict) -> str:
    diff = sorted(k for k in a if a.get(k) != b.get(k))
    return "color<->background" if diff == ["background", "color"] else diff[0]


@torch.no_grad()
def probe(te, n: int = 400, seed: int = 12345) -> dict:
    tok = clip_tokenizer()
    _, captions, _ = make_batch(n, seed=seed)
    pairs = [(c, neg) for c in captions for neg in dict.fromkeys(hard_negatives(c, k=8))]

    def encode(texts):
        ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = te(input_ids=ids)
        return out.pooler_output.float(), out.last_hidden_state.float()

    sims, dists = collections.defaultdict(list), collections.defaultdict(list)
    for i in range(0, len(pairs), 256):
        chunk = pairs[i:i + 256]
        pa, ha = encode([a for a, _ in chunk])
        pb, hb = encode([b for _, b in chunk])
        cos = torch.cosine_similarity(pa, pb, dim=-1)
        dist = (ha - hb).norm(dim=-1).mean(-1) / ha.norm(dim=-1).mean(-1)
        for (a, b), c, d in zip(chunk, cos, dist):
            key = changed_attribute(parse_caption(a), parse_caption(b))
            sims[key].append(float(c))
            dists[key].append(float(d))
    return {k: {"pooled_cosine": round(sum(v) / len(v), 3),
                "token_distance": round(sum(dists[k]) / len(dists[k]), 3), "pairs": len(v)}
            for k, v in sorted(sims.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--state", default=None, help="a text-encoder state dict (runs/<run>/text/final.pt)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.state:
        te = build_text_encoder()
        te.load_state_dict(torch.load(args.state, weights_only=True))
    else:
        te = stablekit.load(args.model).components.text_encoder.float()
    result = probe(te.eval())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| changed attribute | pooled cosine | token-state distance (relative) | pairs |\n|---|---|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v['pooled_cosine']:.3f} | {v['token_distance']:.3f} | {v['pairs']} |")


if __name__ == "__main__":
    main()
