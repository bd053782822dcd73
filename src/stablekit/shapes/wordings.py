"""Generated caption word orders (recipe v3): clauses in any order, each in one of several forms.

Why: models 1 and 2 learned from 5 and 10 fixed word orders, and their text encoder learned to
read "the first colour after an article is the object's" rather than what "{colour} background"
means. On eval-v2's "on a red background, a blue star" and "a picture of a red background with a
blue star" it embeds the caption closer to its colour-swapped twin than to its meaning
(`benchmarks/probe_text_encoder.py --wordings`: 0.34 and 0.10 binding) and the model draws the
colours swapped. Here the object, position and background clauses come in a random order, each
in a random form, joined by random separators, with an optional lead-in: hundreds of word orders.

Held out: a wording that one of eval-v2's five templates (shapes.prompts.EVAL_V2_TEMPLATES) would
produce for the same attributes, and any exact eval-v1 / eval-v2 prompt, is never generated (the
wording is drawn again), so both prompt sets stay unseen as sentences.
"""
from __future__ import annotations

import functools

import numpy as np

from stablekit.shapes.captions import (
    DROP_P, OPTIONAL_ATTRIBUTES, POSITION_PHRASES, TEMPLATE_SETS, _article, _join, compose_caption,
    parse_caption,
)
from stablekit.shapes.render import BASE_SHAPES, COLORS, IMAGE_SIZE, ShapeSpec, render, sample_spec

BACKGROUND_FORMS = ("on {a} {bg} background", "against {a} {bg} background", "with {a} {bg} background",
                    "over {a} {bg} background", "in front of {a} {bg} background", "{a} {bg} background",
                    "{bg} background")
LEAD_INS = ("a picture of", "an image of", "a drawing of", "a photo of", "a render of")
SEPARATORS = (" ", ", ", ", ", " and ")
TEMPLATE_SHARE = 0.4  # share of captions still worded by the 10 fixed "extended" templates
RETRIES = 20


def generated_wording(anp: str, np_: str, pos: str | None, bg: str | None, rng: np.random.Generator) -> str:
    """One caption from the clause grammar: (article + noun phrase, bare noun phrase, position
    phrase or None, background colour or None) in a random order and random forms."""
    clauses = [("object", None)] + ([("position", pos)] if pos else []) + ([("background", bg)] if bg else [])
    order = [clauses[i] for i in rng.permutation(len(clauses))]
    parts = []
    for kind, value in order:
        if kind == "object":
            parts.append(np_ if rng.random() < 0.25 else anp)
        elif kind == "position":
            parts.append(value)
        else:
            form = BACKGROUND_FORMS[int(rng.integers(len(BACKGROUND_FORMS)))]
            parts.append(form.format(a=_article(value), bg=value).strip())
    text = parts[0]
    for prev, nxt, part in zip(order, order[1:], parts[1:]):
        sep = SEPARATORS[int(rng.integers(len(SEPARATORS)))]
        if prev[0] == "background" and nxt[0] == "object" and rng.random() < 0.3:
            sep = " with "
        text += sep + part
    if rng.random() < 0.25 and order[0][0] != "position":
        text = f"{LEAD_INS[int(rng.integers(len(LEAD_INS)))]} {text}"
    return text


@functools.lru_cache(maxsize=1)
def held_out_prompts() -> frozenset:
    """Every prompt of the frozen evaluation sets (never a training caption)."""
    from stablekit.shapes.prompts import PROMPT_SETS, load_prompt_set

    return frozenset(item.prompt for name in PROMPT_SETS for item in load_prompt_set(name))


def _held_out_wordings(spec: ShapeSpec, named_attrs) -> set:
    from stablekit.shapes.prompts import EVAL_V2_TEMPLATES

    return {compose_caption(spec, named_attrs, t, v, templates=EVAL_V2_TEMPLATES)[0]
            for t in range(len(EVAL_V2_TEMPLATES)) for v in range(2)}


def _phrases(named: dict, position_variant: int) -> tuple[str, str, str | None, str | None]:
    np_ = _join(named.get("size"), named.get("color"), named["shape"])
    pos = named.get("position")
    phrase = POSITION_PHRASES[pos][position_variant % len(POSITION_PHRASES[pos])] if pos else None
    return f"{_article(np_)} {np_}", np_, phrase, named.get("background")


def generated_caption(spec: ShapeSpec, rng: np.random.Generator, drop_p: float = DROP_P,
                      template_share: float = TEMPLATE_SHARE) -> tuple[str, dict]:
    """Random caption of `spec` (each optional attribute left out with probability `drop_p`):
    with probability `template_share` one of the 10 "extended" templates, else the clause
    grammar; never an eval-v2 word order or an exact eval prompt. Returns (text, named)."""
    keep = rng.random(len(OPTIONAL_ATTRIBUTES)) >= drop_p
    named_attrs = [a for a, k in zip(OPTIONAL_ATTRIBUTES, keep) if k]
    variant = int(rng.integers(2))
    templates = TEMPLATE_SETS["extended"]
    banned = _held_out_wordings(spec, named_attrs) | held_out_prompts()
    for attempt in range(RETRIES):
        if attempt == 0 and rng.random() < template_share:
            text, named = compose_caption(spec, named_attrs, int(rng.integers(len(templates))), variant,
                                          templates=templates)
        else:
            named = compose_caption(spec, named_attrs, 0, variant)[1]
            text = generated_wording(*_phrases(named, variant), rng)
        if text not in banned:
            return text, named
    # 20 held-out draws in a row (a very short caption such as "a small circle"): no eval prompt
    # starts with "an image of"
    return f"an image of {_phrases(named, variant)[0]}", named


def generated_batch(n: int, seed: int, start: int = 0, drop_p: float = DROP_P, render_images: bool = True):
    """Items start..start+n-1 of stream `seed` with generated captions: (uint8 [n,64,64,3] or
    None, captions, specs). The specs, hence the images, are those of captions.make_batch for the
    same seed (the spec is drawn first from the item's generator), so a run can reuse another
    run's images and latents."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) if render_images else None
    captions, specs = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        spec = sample_spec(rng)
        captions.append(generated_caption(spec, rng, drop_p)[0])
        specs.append(spec)
        if render_images:
            images[i] = render(spec)
    return images, captions, specs


def reworded_negatives(text: str, k: int = 2, seed: int = 0) -> list[str]:
    """`k` captions that cannot describe `text`'s image, each in a freshly generated word order:
    the object and background colours swapped when both are named (the binding eval-v2 tests),
    otherwise another shape. Hard negatives across word orders: the encoder must read which
    colour goes with "background" wherever the clauses stand, not where the colours stand."""
    rng = np.random.default_rng([seed, sum(map(ord, text)), len(text), 1])
    named = parse_caption(text)
    wrong = dict(named)
    if named.get("color") in COLORS and named.get("background") in COLORS:
        wrong["color"], wrong["background"] = named["background"], named["color"]
    else:
        wrong["shape"] = str(rng.choice([s for s in BASE_SHAPES if s != named.get("shape")]))
    wrong.pop("hollow", None)
    return [generated_wording(*_phrases(wrong, j), rng) for j in range(k)]
