"""Natural-language captions for rendered specs, and the seeded batch / dataset API.

A caption always names the shape; size, color, background and position are each left out
independently with probability `drop_p` (0.3 by the spec) and then vary freely in the image,
because the spec was sampled with them anyway. The outline style is always named when present.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from stablekit.shapes.render import IMAGE_SIZE, ShapeSpec, render, sample_spec

OPTIONAL_ATTRIBUTES = ("size", "color", "background", "position")
ATTRIBUTES = ("shape",) + OPTIONAL_ATTRIBUTES
DROP_P = 0.3

POSITION_PHRASES = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


# Each template takes (article + noun phrase, bare noun phrase, position phrase or None,
# background color or None); the order of the fields is what varies between them.
def _t_plain(anp, np_, pos, bg):
    return _join(anp, pos, f"on {_article(bg)} {bg} background" if bg else None)


def _t_comma(anp, np_, pos, bg):
    return _join(np_, pos) + (f", {bg} background" if bg else "")


def _t_bg_first(anp, np_, pos, bg):
    return _join(f"{bg} background with", anp, pos) if bg else _join(anp, pos)


def _t_against(anp, np_, pos, bg):
    return _join(anp, f"against {_article(bg)} {bg} background" if bg else None, pos)


def _t_picture(anp, np_, pos, bg):
    return _join("a picture of", anp, pos, f"on {_article(bg)} {bg} background" if bg else None)


TEMPLATES = (_t_plain, _t_comma, _t_bg_first, _t_against, _t_picture)


# More word orders for training captions (recipe v2): the first model followed the five
# templates above well and other orders badly (eval-v2: 0.90 adherence on prompts worded as a
# training caption, 0.79 on new wordings; colour and background swapped when the background came
# first). None of these is one of eval-v2's templates (shapes.prompts.EVAL_V2_TEMPLATES).
def _x_position_first(anp, np_, pos, bg):
    return _join(pos, anp) + (f", {bg} background" if bg else "")


def _x_background_and(anp, np_, pos, bg):
    return _join(f"{bg} background and" if bg else None, anp, pos)


def _x_image_of(anp, np_, pos, bg):
    return _join("an image of", anp, pos, f"with {_article(bg)} {bg} background" if bg else None)


def _x_background_comma(anp, np_, pos, bg):
    return (f"{bg} background, " if bg else "") + _join(np_, pos)


def _x_background_then_position(anp, np_, pos, bg):
    return _join(anp, f"on {_article(bg)} {bg} background" if bg else None, pos)


EXTRA_TEMPLATES = (_x_position_first, _x_background_and, _x_image_of, _x_background_comma,
                   _x_background_then_position)
TEMPLATE_SETS = {"v1": TEMPLATES, "extended": TEMPLATES + EXTRA_TEMPLATES}


def compose_caption(spec: ShapeSpec, named_attrs, template: int = 0, variant: int = 0,
                    shape_word: str | None = None, templates=TEMPLATES) -> tuple[str, dict]:
    """Caption `spec` naming exactly `named_attrs` (the shape is always named) with template
    number `template` and phrase variant `variant`; returns (text, named values).

    `named` always holds "shape" and, for the outline style, "hollow": True. `shape_word`
    replaces the shape's name in the text (e.g. "<hexagon>" or "sks square") while `named`
    keeps the true shape. `templates` is the list `template` indexes (the training captions'
    TEMPLATES unless an evaluation set brings its own).
    """
    named = {"shape": spec.shape}
    for attr in OPTIONAL_ATTRIBUTES:
        if attr in named_attrs:
            named[attr] = getattr(spec, attr)
    if spec.hollow:
        named["hollow"] = True
    phrases = POSITION_PHRASES[spec.position]
    pos = phrases[variant % len(phrases)] if "position" in named else None
    np_ = _join(named.get("size"), named.get("color"), shape_word or spec.shape,
                "outline" if spec.hollow else None)
    text = templates[template % len(templates)](f"{_article(np_)} {np_}", np_, pos, named.get("background"))
    return text, named


def caption_with_attrs(
    spec: ShapeSpec, rng: np.random.Generator, drop_p: float = DROP_P, shape_word: str | None = None,
    templates=TEMPLATES,
) -> tuple[str, dict]:
    """Random caption of `spec`: each optional attribute left out with probability `drop_p`,
    a random template of `templates`. Returns (text, named) as compose_caption does."""
    keep = rng.random(len(OPTIONAL_ATTRIBUTES)) >= drop_p
    template = int(rng.integers(len(templates)))
    variant = int(rng.integers(2))
    named_attrs = [a for a, k in zip(OPTIONAL_ATTRIBUTES, keep) if k]
    return compose_caption(spec, named_attrs, template, variant, shape_word, templates=templates)


def caption(spec: ShapeSpec, rng: np.random.Generator, drop_p: float = DROP_P, **kwargs) -> str:
    """A natural caption of `spec` (see caption_with_attrs)."""
    return caption_with_attrs(spec, rng, drop_p, **kwargs)[0]


def sample_item(seed: int, index: int, drop_p: float = DROP_P, shape_word: str | None = None,
                templates=TEMPLATES, **spec_opts) -> tuple[ShapeSpec, str, dict]:
    """Item `index` of the stream `seed`: (spec, caption, named attributes).

    Each item has its own generator seeded by (seed, index), so a stream is the same however it
    is split into batches.
    """
    rng = np.random.default_rng([seed, index])
    spec = sample_spec(rng, **spec_opts)
    text, named = caption_with_attrs(spec, rng, drop_p, shape_word=shape_word, templates=templates)
    return spec, text, named


def make_batch(n: int, seed: int, start: int = 0, drop_p: float = DROP_P,
               shape_word: str | None = None, templates=TEMPLATES, **spec_opts):
    """Render items start..start+n-1 of stream `seed`: (uint8 [n,64,64,3], captions, specs).

    `spec_opts` go to sample_spec (shapes=, colors=, backgrounds=, sizes=, positions=, hollow=,
    or any pinned field such as shape="hexagon"). `templates`: the caption templates drawn from
    (TEMPLATE_SETS["extended"] for recipe v2; the default keeps every existing stream as it was).
    """
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, specs = [], []
    for i in range(n):
        spec, text, _ = sample_item(seed, start + i, drop_p, shape_word, templates, **spec_opts)
        images[i] = render(spec)
        captions.append(text)
        specs.append(spec)
    return images, captions, specs


def render_dataset(out_dir: str | Path, n: int, seed: int, start: int = 0, drop_p: float = DROP_P,
                   shape_word: str | None = None, **spec_opts) -> Path:
    """Write n items as NNNNNN.png + NNNNNN.txt pairs plus metadata.json; returns the folder.

    This is the flat image + caption layout the kohya-style trainers read. metadata.json holds,
    per file, the caption, the attributes it names and the full spec.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        spec, text, named = sample_item(seed, start + i, drop_p, shape_word, **spec_opts)
        stem = f"{start + i:06d}"
        Image.fromarray(render(spec)).save(out / f"{stem}.png")
        (out / f"{stem}.txt").write_text(text + "\n")
        records.append({"file": f"{stem}.png", "caption": text, "named": named, "spec": spec.to_dict()})
    meta = {"seed": seed, "start": start, "n": n, "drop_p": drop_p, "shape_word": shape_word,
            "options": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec_opts.items()},
            "items": records}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    return out


def _attribute_words(words: list[str]) -> dict[str, int]:
    """Index of the word naming each attribute in a caption's words: shape, color, background
    (a colour followed by "background"), size, hollow ("outline")."""
    from stablekit.shapes.render import ALL_COLORS, ALL_SHAPES, SIZES

    where = {}
    for k, w in enumerate(words):
        nxt = words[k + 1] if k + 1 < len(words) else ""
        if w in ALL_SHAPES:
            where["shape"] = k
        elif w in ALL_COLORS:
            where["background" if nxt == "background" else "color"] = k
        elif w in SIZES:
            where["size"] = k
        elif w == "outline":
            where["hollow"] = k
    return where


def parse_caption(text: str) -> dict:
    """The attributes a shapes-world caption names, read back from its words (inverse of
    compose_caption for every template): {"shape": ..., "color": ..., ...}."""
    words = text.lower().replace(",", " ").split()
    named = {attr: (True if attr == "hollow" else words[k]) for attr, k in _attribute_words(words).items()}
    lowered = " ".join(words)
    for position, phrases in POSITION_PHRASES.items():
        if any(p in lowered for p in phrases):
            named["position"] = position
    return named


def _fix_articles(words: list[str]) -> list[str]:
    return [(_article(words[k + 1]) if w in ("a", "an") and k + 1 < len(words) else w)
            for k, w in enumerate(words)]


def hard_negatives(text: str, k: int = 6, seed: int = 0) -> list[str]:
    """`k` captions that differ from `text` in one attribute, so none can describe an image that
    `text` describes: every other base shape first (the attribute contrastive training otherwise
    ignores -- star and triangle embedded almost alike), then a wrong object colour, the object
    and background colours swapped, a wrong background, size or position.

    For contrastive text-encoder pretraining with hard negatives (Yuksekgonul et al. 2023,
    "NegCLIP"): a batch of random captions rarely holds two that differ only in the shape word,
    so without them the encoder never has to tell shapes apart.
    """
    from stablekit.shapes.render import BASE_SHAPES, COLORS

    rng = np.random.default_rng([seed, sum(map(ord, text)), len(text)])
    words = text.replace(",", " ,").split()
    named = parse_caption(text)

    def swapped(index: int, new: str) -> str:
        out = list(words)
        out[index] = new
        return " ".join(_fix_articles(out)).replace(" ,", ",")

    # only base shapes and palette colours are swapped (reserved ones are never in base data)
    where = {attr: k for attr, k in _attribute_words(words).items()
             if attr in ("size",) or (attr == "shape" and words[k] in BASE_SHAPES)
             or (attr in ("color", "background") and words[k] in COLORS)}
    shape_negs = [swapped(where["shape"], s) for s in BASE_SHAPES if s != named.get("shape")] if "shape" in where else []
    others = []
    taken = {named.get("color"), named.get("background")}
    if "color" in where:
        others.append(swapped(where["color"], str(rng.choice([c for c in COLORS if c not in taken]))))
    if "color" in where and "background" in where:
        out = list(words)
        out[where["color"]], out[where["background"]] = words[where["background"]], words[where["color"]]
        others.append(" ".join(_fix_articles(out)).replace(" ,", ","))
    if "background" in where:
        others.append(swapped(where["background"], str(rng.choice([c for c in COLORS if c not in taken]))))
    if "size" in where:
        others.append(swapped(where["size"], "small" if named["size"] == "large" else "large"))
    if "position" in named:
        phrase = next(p for p in POSITION_PHRASES[named["position"]] if p in text)
        other = str(rng.choice([p for p in POSITION_PHRASES if p != named["position"]]))
        others.append(text.replace(phrase, POSITION_PHRASES[other][0]))
    rng.shuffle(others)
    negs = (shape_negs + others)[:k]
    pool = shape_negs or list(negs)
    while negs and len(negs) < k:  # short captions ("a star"): repeat the shape swaps
        negs.append(pool[len(negs) % len(pool)])
    return negs
