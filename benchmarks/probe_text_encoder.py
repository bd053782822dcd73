"""How well does a text encoder tell captions apart that differ in one attribute?

For 400 training-style captions and each of their one-attribute-changed variants
(stablekit.shapes.captions.hard_negatives), reports the mean cosine similarity of the pooled
embeddings and the mean distance of the per-token hidden states the UNet cross-attends to,
grouped by which attribute changed. Lower similarity = the attribute is easier for the UNet to
read. The embedded model of session 1 embedded "a ... star" and "a ... triangle" 0.995 alike.

    .venv/bin/python benchmarks/probe_text_encoder.py                     # the embedded model
    .venv/bin/python benchmarks/probe_text_encoder.py --model PATH        # any stablekit.load path
    .venv/bin/python benchmarks/probe_text_encoder.py --state runs/x/text/final.pt  # a pretrain stage
    .venv/bin/python benchmarks/probe_text_encoder.py --wordings [--state ...]   # binding per word order

`--wordings`: for each word order (the training templates and eval-v2's held-out ones) and 300
specs naming both colours, is the caption closer to the same spec worded by the plain training
template ("a red star on a blue background") than to its colour-swapped twin ("a blue star on a
red background")? Reported for the pooled state and for the mean token state the UNet sees;
1.0 = the encoder binds colour to object vs background in that word order, 0.5 = chance.
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


def _embed(te, tok, texts):
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = te(input_ids=ids)
    real = (ids != tok.pad_token_id).float()
    real[torch.arange(len(ids)), ids.argmax(-1)] = 1.0  # the end-of-text token counts (pad = eot id)
    mean_tok = (out.last_hidden_state.float() * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    return out.pooler_output.float(), mean_tok


@torch.no_grad()
def probe_wordings(te, n: int = 300, seed: int = 777) -> dict:
    """Colour-binding accuracy per word order (see the module docstring)."""
    import dataclasses

    import numpy as np

    from stablekit.shapes.captions import TEMPLATE_SETS, compose_caption
    from stablekit.shapes.prompts import EVAL_V2_TEMPLATES
    from stablekit.shapes.render import sample_spec

    tok = clip_tokenizer()
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng) for _ in range(n)]
    swapped = [dataclasses.replace(s, color=s.background, background=s.color) for s in specs]
    attrs = ["size", "color", "background", "position"]

    def word(specs_, templates, t):
        return [compose_caption(s, attrs, template=t, variant=i % 2, templates=templates)[0] for i, s in enumerate(specs_)]

    ref_p, ref_t = _embed(te, tok, word(specs, TEMPLATE_SETS["v1"], 0))
    swp_p, swp_t = _embed(te, tok, word(swapped, TEMPLATE_SETS["v1"], 0))
    rows = {}
    orders = [("train", f.__name__, TEMPLATE_SETS["extended"], t) for t, f in enumerate(TEMPLATE_SETS["extended"])]
    orders += [("eval-v2", f.__name__, EVAL_V2_TEMPLATES, t) for t, f in enumerate(EVAL_V2_TEMPLATES)]
    for kind, name, templates, t in orders:
        p, m = _embed(te, tok, word(specs, templates, t))
        cos = torch.nn.functional.cosine_similarity
        rows[f"{kind}:{name}"] = {
            "pooled_binding": round(float((cos(p, ref_p) > cos(p, swp_p)).float().mean()), 3),
            "token_binding": round(float((cos(m, ref_t) > cos(m, swp_t)).float().mean()), 3),
            "pooled_cos_same": round(float(cos(p, ref_p).mean()), 3),
            "pooled_cos_swapped": round(float(cos(p, swp_p).mean()), 3),
            "example": word(specs[:1], templates, t)[0]}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--state", default=None, help="a text-encoder state dict (runs/<run>/text/final.pt) or a text-stage checkpoint")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--wordings", action="store_true", help="colour-binding accuracy per word order instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.state:
        te = build_text_encoder()
        state = torch.load(args.state, weights_only=True)
        te.load_state_dict(state["strategy"]["text_encoder"] if "strategy" in state else state)  # or a checkpoint
    else:
        te = stablekit.load(args.model).components.text_encoder.float()
    if args.wordings:
        result = probe_wordings(te.eval())
        if args.json:
            print(json.dumps(result, indent=2))
            return
        print("| word order | pooled binding | token binding | cos same | cos swapped | example |\n|---|---|---|---|---|---|")
        for k, v in result.items():
            print(f"| {k} | {v['pooled_binding']:.3f} | {v['token_binding']:.3f} | {v['pooled_cos_same']:.3f} "
                  f"| {v['pooled_cos_swapped']:.3f} | {v['example']} |")
        return
    result = probe(te.eval())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| changed attribute | pooled cosine | token-state distance (relative) | pairs |\n|---|---|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v['pooled_cosine']:.3f} | {v['token_distance']:.3f} | {v['pairs']} |")


if __name__ == "__main__":
    main()
