"""The teaching-method measurement (shapes/teach_eval.py): data recipes, prompt sets, scoring,
and that the judge reads what the targets ask for (hexagon, teal diamond, outline) on renders."""
import numpy as np
import pytest

from stablekit.shapes import teach_eval as te
from stablekit.shapes.captions import make_batch
from stablekit.shapes.judge import Judge


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


@pytest.mark.parametrize("opts, attr", [
    (dict(shapes=("hexagon",)), "shape"),
    (dict(shapes=("diamond",), colors=("teal",)), "shape"),
    (dict(hollow=True), "hollow"),
])
def test_judge_reads_the_taught_concepts_on_renders(judge, opts, attr):
    images, _, specs = make_batch(40, 21, **opts)
    verdicts = judge(images)
    truth = [getattr(s, attr) for s in specs]
    assert np.mean([v[attr] == t for v, t in zip(verdicts, truth)]) >= 0.98
    assert np.mean([v["color"] == s.color for v, s in zip(verdicts, specs)]) >= 0.98


def test_score_counts_each_attribute_and_all(judge):
    images, _, specs = make_batch(4, 3, shapes=("hexagon",))
    asked = [{"shape": "hexagon", "color": s.color} for s in specs]
    asked[0] = {"shape": "circle", "color": specs[0].color}  # one wrong shape
    figures = te.score(judge(images), asked)
    assert figures["shape"] == 0.75 and figures["color"] == 1.0 and figures["all"] == 0.75
    assert figures["adherence"] == pytest.approx((0.5 + 3) / 4) and figures["n"] == 4


def test_prompt_sets_are_fixed_and_name_the_target():
    ti = te.ti_prompts()
    assert len(ti) == 56 and all(te.TOKEN in p for p, _, _ in ti)
    assert te.ti_prompts(8) == te.ti_prompts(8) and len(te.ti_prompts(8)) == 8
    subject, plain = te.dreambooth_prompts()
    assert {p for p, _, _ in subject} == {"a sks square"} and len(plain) == 24
    outline = te.shape_prompts(10, seed=11, first_seed=2000, shapes=te.BASE_SHAPES, hollow=True)
    assert all("outline" in p and a["hollow"] is True for p, _, a in outline)
    assert [s for _, s, _ in outline] == list(range(2000, 2010))
    assert outline == te.shape_prompts(10, seed=11, first_seed=2000, shapes=te.BASE_SHAPES, hollow=True)


def test_method_data_recipes(tmp_path):
    folder = te.render_method_data("textual-inversion", tmp_path)["data"]
    captions = sorted(folder.glob("*.txt"))
    assert len(captions) == 5 and all(te.TOKEN in c.read_text() for c in captions)
    folder = te.render_method_data("dreambooth", tmp_path)["data"]
    assert len(list(folder.glob("*.png"))) == 5
    with pytest.raises(ValueError):
        te.render_method_data("nope", tmp_path)


def test_met_compares_with_the_targets():
    assert te.met("textual-inversion", {"hexagon": 0.7, "color": 0.79}) == {"hexagon": True, "color": False}
    assert te.met("lora", {"hollow": 0.9, "scale0_max_diff": 0.0, "size_ratio": 0.2}) == \
        {"hollow": True, "scale0": True, "size": False}
    assert te.met("finetune", {"hexagon_adherence": 0.9, "base_drop": 0.06}) == \
        {"hexagon_adherence": True, "base_drop": False}


def test_breakdown_tells_where_and_what_was_judged(judge):
    images, _, specs = make_batch(4, 3, shapes=("hexagon",))
    asked = [{"shape": "hexagon", "size": s.size} for s in specs]
    asked[0] = {"shape": "circle", "size": specs[0].size}  # judged hexagon: a miss for "circle"
    b = te.breakdown(judge(images), asked, "shape")
    assert b["by_shape"]["circle"]["all"] == 0.0 and b["by_shape"]["circle"]["n"] == 1
    assert b["by_shape"]["hexagon"] == {"shape": 1.0, "size": 1.0, "all": 1.0, "n": 3}
    assert b["judged"]["shape"] == {"hexagon": 4}
