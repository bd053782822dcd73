"""Fixed, versioned evaluation prompt sets with seeds and the attributes each prompt names.

`eval-v1` (the spec's prompt-adherence set): 240 prompts over the base shapes and palette.
Every shape, color, background, size and position occurs exactly equally often (60, 30, 30,
120 and 48 times); each optional attribute is left out of exactly 72 prompts (0.3), chosen
independently, so diversity can be measured on what the prompt does not say. Each item keeps a
full ground-truth spec, whose render must score 1.0 on the judge. Never change a released set:
add a new set instead, so reported numbers stay comparable.

`eval-v2`: 240 more prompts, balanced the same way, with other seeds (generation seeds
5000-5239) and five templates no training caption uses (EVAL_V2_TEMPLATES: other word orders,
built only from words the training captions contain), to show a model did not fit eval-v1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stablekit.errors import StablekitError
from stablekit.shapes.captions import OPTIONAL_ATTRIBUTES, TEMPLATES, _article, _join, compose_caption
from stablekit.shapes.render import (
    BASE_SHAPES, COLORS, MAX_ROTATION, POSITION_JITTER, POSITIONS, SIZES, ShapeSpec,
)


@dataclass(frozen=True)
class PromptItem:
    """One evaluation prompt: its text, generation seed, named attribute values and a
    ground-truth spec (left-out attributes hold arbitrary values there)."""

    id: int
    prompt: str
    seed: int
    named: dict = field(hash=False)
    spec: ShapeSpec = field(hash=False)

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "seed": self.seed, "named": dict(self.named),
                "spec": self.spec.to_dict()}


# eval-v2's templates: same fields as captions.TEMPLATES (article + noun phrase, bare noun phrase,
# position phrase or None, background or None) in orders the training captions never use.
def _v2_position_first(anp, np_, pos, bg):
    return ", ".join(p for p in (pos, _join(anp, f"on {_article(bg)} {bg} background" if bg else None)) if p)


def _v2_background_first(anp, np_, pos, bg):
    return (f"on {_article(bg)} {bg} background, " if bg else "") + _join(anp, pos)


def _v2_list(anp, np_, pos, bg):
    return ", ".join(p for p in (np_, f"{bg} background" if bg else None, pos) if p)


def _v2_picture_background(anp, np_, pos, bg):
    return _join("a picture of", f"{_article(bg)} {bg} background with" if bg else None, anp, pos)


def _v2_position_then_against(anp, np_, pos, bg):
    return _join(anp, pos, f"against {_article(bg)} {bg} background" if bg else None)


EVAL_V2_TEMPLATES = (_v2_position_first, _v2_background_first, _v2_list, _v2_picture_background,
                     _v2_position_then_against)


def _balanced(values, n: int, rng: np.random.Generator) -> list:
    """n values with every entry of `values` equally often (n must be a multiple), shuffled."""
    if n % len(values):
        raise StablekitError(f"prompt set size {n} is not a multiple of {len(values)}; pick another n")
    out = list(values) * (n // len(values))
    return [out[i] for i in rng.permutation(n)]


def build_prompt_set(n: int = 240, seed: int = 20261122, shapes=BASE_SHAPES, colors=COLORS,
                     drop_p: float = 0.3, first_seed: int = 1000, templates=TEMPLATES) -> list[PromptItem]:
    """A balanced prompt set: each value of each attribute equally often, each optional attribute
    left out of round(drop_p * n) prompts, object color never equal to the background; prompt i
    uses templates[i % len(templates)]."""
    rng = np.random.default_rng(seed)
    cols = {
        "shape": _balanced(shapes, n, rng),
        "color": _balanced(colors, n, rng),
        "background": _balanced(colors, n, rng),
        "size": _balanced(tuple(SIZES), n, rng),
        "position": _balanced(tuple(POSITIONS), n, rng),
    }
    # Repair color == background by swapping backgrounds between rows; marginals stay exact.
    bg = cols["background"]
    for i in range(n):
        if cols["color"][i] == bg[i]:
            j = next(j for j in rng.permutation(n)
                     if bg[j] != cols["color"][i] and cols["color"][j] != bg[i])
            bg[i], bg[j] = bg[j], bg[i]
    n_drop = int(round(drop_p * n))
    dropped = {a: set(rng.permutation(n)[:n_drop].tolist()) for a in OPTIONAL_ATTRIBUTES}
    items = []
    for i in range(n):
        u = rng.random(4)
        spec = ShapeSpec(
            shape=cols["shape"][i], color=cols["color"][i], background=bg[i], size=cols["size"][i],
            position=cols["position"][i], rotation=float((2 * u[0] - 1) * MAX_ROTATION),
            dx=float((2 * u[1] - 1) * POSITION_JITTER), dy=float((2 * u[2] - 1) * POSITION_JITTER),
            diameter=float(np.interp(u[3], [0, 1], SIZES[cols["size"][i]])),
        )
        named_attrs = [a for a in OPTIONAL_ATTRIBUTES if i not in dropped[a]]
        text, named = compose_caption(spec, named_attrs, template=i % len(templates),
                                      variant=(i // len(templates)) % 2, templates=templates)
        items.append(PromptItem(id=i, prompt=text, seed=first_seed + i, named=named, spec=spec))
    return items


PROMPT_SETS = {
    "eval-v1": dict(n=240, seed=20261122, templates=TEMPLATES),  # the five training templates, frozen
    "eval-v2": dict(n=240, seed=20261130, first_seed=5000, templates=EVAL_V2_TEMPLATES),
}


def load_prompt_set(name: str = "eval-v1") -> list[PromptItem]:
    """The named, frozen prompt set (see PROMPT_SETS)."""
    if name not in PROMPT_SETS:
        raise StablekitError(f"unknown prompt set {name!r}; use one of {', '.join(PROMPT_SETS)}")
    return build_prompt_set(**PROMPT_SETS[name])
