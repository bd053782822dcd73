"""Generated caption word orders (recipe v3): same images as the template stream, held-out
wordings never produced, attributes readable back, reworded negatives swap the colours."""
from __future__ import annotations

from stablekit.shapes.captions import make_batch, parse_caption
from stablekit.shapes.prompts import EVAL_V2_TEMPLATES, load_prompt_set
from stablekit.shapes.wordings import generated_batch, generated_caption, reworded_negatives


def test_same_specs_as_the_template_stream():
    _, _, a = make_batch(50, seed=4)
    _, caps, b = generated_batch(50, seed=4, render_images=False)
    assert a == b and len(caps) == 50


def test_captions_name_the_spec_and_avoid_held_out_wordings():
    _, caps, specs = generated_batch(3000, seed=0, render_images=False)
    held_out = {i.prompt for name in ("eval-v1", "eval-v2") for i in load_prompt_set(name)}
    assert not set(caps) & held_out
    for text, spec in zip(caps, specs):
        named = parse_caption(text)
        assert named["shape"] == spec.shape
        assert all(named[a] == getattr(spec, a) for a in ("color", "background", "size", "position") if a in named)
    # many word orders, including background-first ones
    assert len({tuple(w for w in c.replace(",", "").split() if w not in ("a", "an")) for c in caps}) > 2000
    assert sum(c.split()[1:3] == ["red", "background"] for c in caps) > 0


def test_eval_v2_template_wordings_are_redrawn():
    import numpy as np

    from stablekit.shapes.captions import compose_caption
    from stablekit.shapes.render import ShapeSpec

    spec = ShapeSpec(shape="star", color="red", background="blue", size="small", position="left")
    attrs = ["size", "color", "background", "position"]
    banned = {compose_caption(spec, attrs, t, v, templates=EVAL_V2_TEMPLATES)[0] for t in range(5) for v in range(2)}
    rng = np.random.default_rng(0)
    drawn = set()
    for _ in range(3000):
        text, named = generated_caption(spec, rng, drop_p=0.0)
        drawn.add(text)
    assert not drawn & banned and len(drawn) > 300


def test_reworded_negatives_swap_colours_in_other_orders():
    text = "a small red star on a blue background on the left"
    negs = reworded_negatives(text, k=4, seed=1)
    assert len(negs) == 4 and len(set(negs)) > 1
    for n in negs:
        named = parse_caption(n)
        assert (named["color"], named["background"], named["shape"]) == ("blue", "red", "star")
        assert named["position"] == "left" and named["size"] == "small"
    plain = parse_caption(reworded_negatives("a large circle at the top", k=1)[0])
    assert plain["shape"] != "circle" and plain["size"] == "large"
