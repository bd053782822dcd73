"""Python API arguments validated with one-line StablekitErrors naming the argument; the size note."""
from __future__ import annotations

import pytest
from fixtures import one_thread, tiny_components

from stablekit.errors import StablekitError
from stablekit.generate.notes import size_note
from stablekit.generate.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        return Pipeline(tiny_components("sd1"), progress=False)


@pytest.mark.parametrize("settings, message", [
    (dict(cfg="high"), r"cfg \(CFG scale\) must be a number \(got 'high'\)"),
    (dict(cfg=-1), "CFG scale must be >= 0"),
    (dict(steps="x"), r"steps must be a whole number >= 1 \(got 'x'\)"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(sampler="Eulr"), "unknown sampler 'Eulr'"),
    (dict(sampler=3), "sampler must be a name"),
    (dict(schedule="karas"), "unknown schedule 'karas'"),
    (dict(width="64"), "width must be a positive multiple of 8"),
    (dict(height=True), "height must be a positive multiple of 8"),
    (dict(seed=1.5), "seed must be a whole number >= -1"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1"),
    (dict(clip_skip="2"), "clip_skip must be a whole number"),
    (dict(subseed_strength=2), "variation seed strength must be between 0 and 1"),
    (dict(negative_prompt=None), "negative_prompt must be text"),
    (dict(cfg_scale=7), "unknown setting 'cfg_scale'; use one of: negative_prompt, steps, cfg"),
])
def test_bad_python_arguments_are_one_line_errors(pipe, settings, message):
    with pytest.raises(StablekitError, match=message) as err:
        pipe.generate("a cat", **settings)
    assert "\n" not in str(err.value)


def test_bad_prompt_and_strength(pipe):
    with pytest.raises(StablekitError, match="prompt must be text"):
        pipe.generate(None)
    with pytest.raises(StablekitError, match=r"denoising_strength \(denoising strength\) must be a number"):
        pipe.img2img("x.png", "a cat", strength="strong")


def test_size_far_from_native_is_a_one_line_note(pipe, capsys):
    pipe.generate("a cat", steps=1, seed=1, width=256, height=256, output="np")
    err = capsys.readouterr().err.strip()
    assert err == ("stablekit: note: 256x256 is 16x the pixels of this model's native 64x64: expect each step to take "
                   "at least 16x as long, and images unlike its training size")
    pipe.generate("a cat", steps=1, seed=1, width=64, height=128, output="np")
    assert capsys.readouterr().err == ""
    assert "1/4 of the pixels" in size_note(256, 256, 512) and size_note(512, 768, 512) is None
    assert "64x the pixels" in size_note(512, 512, 64)
