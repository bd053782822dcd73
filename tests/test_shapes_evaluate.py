"""Fixed prompt set, adherence and diversity metrics, evaluate_model outputs."""
import json
from collections import Counter

import numpy as np
import pytest

from stablekit.shapes import render
from stablekit.shapes.evaluate import evaluate_images, evaluate_model, normalized_entropy
from stablekit.shapes.prompts import load_prompt_set


@pytest.fixture(scope="module")
def items():
    return load_prompt_set("eval-v1")


def test_prompt_set_is_fixed_and_balanced(items):
    assert len(items) >= 200
    assert [i.to_dict() for i in items[:5]] == [i.to_dict() for i in load_prompt_set("eval-v1")[:5]]
    assert items[0].prompt == "a large star on a purple background" and items[0].seed == 1000
    assert len({i.seed for i in items}) == len(items)
    for attr in ("shape", "color", "background", "size", "position"):
        counts = Counter(getattr(i.spec, attr) for i in items)
        assert max(counts.values()) == min(counts.values()), attr
    for attr in ("color", "background", "size", "position"):
        left_out = sum(attr not in i.named for i in items)
        assert 0.25 <= left_out / len(items) <= 0.35
    for i in items:
        assert i.named["shape"] == i.spec.shape and i.spec.color != i.spec.background
        assert all(getattr(i.spec, a) == v for a, v in i.named.items())


def test_ground_truth_renders_score_full_adherence(items):
    images = np.stack([render(i.spec) for i in items])
    report = evaluate_images(items, images)
    assert report["adherence"] >= 0.98
    assert all(v >= 0.98 for v in report["accuracy"].values())
    assert report["diversity_overall"] > 0.8  # left-out attributes vary in the ground truth


def test_normalized_entropy_hand_made_case():
    assert normalized_entropy(["a", "a", "a", "a"], 4) == 0.0
    assert normalized_entropy(["a", "b", "c", "d"], 4) == pytest.approx(1.0)
    assert normalized_entropy(["a", "a", "b", "b"], 4) == pytest.approx(0.5)  # log 2 / log 4
    assert normalized_entropy(["a", "b", None], 2) == pytest.approx(1.0)  # no object: not counted


def test_diversity_and_adherence_on_a_constant_model(items):
    """A model that always draws a large red circle at the center on blue: diversity 0 for
    every attribute, adherence exactly the share of named attributes it happens to match."""
    from stablekit.shapes import ShapeSpec

    sub = items[:60]
    img = render(ShapeSpec(shape="circle", color="red", background="blue", size="large",
                           position="center", diameter=33.0))
    report = evaluate_images(sub, np.stack([img] * len(sub)))
    assert report["diversity_overall"] == 0.0
    truth = {"shape": "circle", "color": "red", "background": "blue", "size": "large", "position": "center"}
    expected = np.mean([np.mean([truth[a] == v for a, v in i.named.items()]) for i in sub])
    assert report["adherence"] == pytest.approx(expected)


def test_evaluate_model_writes_report(tmp_path, items):
    by_prompt = {i.prompt: i for i in items}
    calls = []

    def generate(prompts, seeds, steps=None):
        calls.append(steps)
        return [render(by_prompt[p].spec) for p in prompts]

    report = evaluate_model(generate, steps=7, out_dir=tmp_path, limit=24, log=None)
    assert calls and set(calls) == {7}
    assert report["n"] == 24 and report["adherence"] == 1.0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["adherence"] == 1.0 and saved["steps"] == 7
    assert "prompt adherence 1.000" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert saved["abstained_total"] == 0 and (tmp_path / "abstentions.png").stat().st_size > 0


def test_abstentions_are_counted_shown_and_rescored(tmp_path, items):
    """No object, an object in the background colour and a blob: three abstentions, each a miss
    for the attributes it leaves None; rescore reproduces the report from images.npz."""
    from PIL import Image as PILImage, ImageDraw

    from stablekit.shapes.evaluate import rescore, write_report

    sub = items[:6]
    images = [render(i.spec) for i in sub]
    images[0] = np.full_like(images[0], 40)  # no object
    images[1] = np.full_like(images[1], 0) + np.array([240, 210, 40], np.uint8)
    images[1][26:38, 26:38] = (200, 172, 25)  # a darker yellow object on yellow
    blob = PILImage.new("RGB", (64, 64), (40, 80, 220))
    ImageDraw.Draw(blob).ellipse([20, 26, 44, 38], fill=(245, 130, 30))  # no shape of the world
    images[2] = np.asarray(blob)
    report = evaluate_images(sub, np.stack(images))
    assert report["abstained_total"] == 3 and report["no_object"] == 1
    assert report["background_colour_object"] == 1
    assert report["items"][0]["score"] < 1 and report["items"][1]["score"] < 1
    assert report["items"][2]["judged"]["shape"] is None
    assert report["items"][3]["score"] == 1.0
    report.update(prompt_set="eval-v1")
    write_report(report, images, sub, tmp_path)
    assert (tmp_path / "abstentions.png").stat().st_size > 0
    again = rescore(tmp_path, tmp_path / "again")
    assert again["adherence"] == pytest.approx(report["adherence"]) and again["abstained"] == report["abstained"]


def test_eval_v2_is_a_different_balanced_set(items):
    from stablekit.shapes.captions import TEMPLATES, compose_caption, parse_caption

    v2 = load_prompt_set("eval-v2")
    assert len(v2) >= 240 and not {i.seed for i in v2} & {i.seed for i in items}
    for attr in ("shape", "color", "background", "size", "position"):
        counts = Counter(getattr(i.spec, attr) for i in v2)
        assert max(counts.values()) == min(counts.values()), attr
    for i in v2:
        assert parse_caption(i.prompt) == i.named and i.spec.color != i.spec.background
    # no eval-v2 prompt naming a background and a position is worded as a training caption
    for i in v2:
        if "background" in i.named and "position" in i.named:
            attrs = [a for a in i.named if a != "shape"]
            assert all(compose_caption(i.spec, attrs, t, v)[0] != i.prompt
                       for t in range(len(TEMPLATES)) for v in (0, 1)), i.prompt


def test_mismatched_lengths_are_an_error(items):
    from stablekit.errors import StablekitError

    with pytest.raises(StablekitError, match="one image per prompt"):
        evaluate_images(items[:3], np.zeros((2, 64, 64, 3), np.uint8))


def test_abstentions_do_not_change_the_diversity_scale(items):
    """An image the judge abstains on leaves its attributes out of diversity; it must not widen
    the set of possible values (2 sizes stay 2)."""
    sub = [i for i in items if "size" not in i.named][:8]
    images = [render(i.spec) for i in sub]
    base = evaluate_images(sub, np.stack(images))["diversity"]["size"]
    images.append(np.full_like(images[0], 40))  # no object: size None
    report = evaluate_images(sub + [sub[0]], np.stack(images))
    assert report["diversity"]["size"] == pytest.approx(base)
