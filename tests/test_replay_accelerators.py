"""--from-png regenerates an image made with DeepCache / token merging with them on again
(stablekit's record and A1111's text), and flags still override."""
from __future__ import annotations

import numpy as np
from PIL import Image

from stablekit.cli import main
from stablekit.generate.replay import replay
from stablekit.metadata import read_png_info


def test_deepcache_and_tome_replay_from_the_record(tiny_model_file, tmp_path, capsys):
    base = ["--model", str(tiny_model_file), "--no-progress"]
    made = tmp_path / "made.png"
    assert main(["generate", "a red box", "--steps", "4", "--seed", "3", "--deepcache", "2", "--tome", "0.5",
                 "--out", str(made), *base]) == 0
    assert replay(read_png_info(made)).accelerators == {"deepcache": 2, "tome": 0.5}
    capsys.readouterr()
    assert main(["generate", "--from-png", str(made), "--out", str(tmp_path / "again.png"), *base]) == 0
    assert "not applied" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(tmp_path / "again.png")))
    assert main(["generate", "--from-png", str(made), "--deepcache", "0", "--tome", "0",
                 "--out", str(tmp_path / "plain.png"), *base]) == 0
    assert not np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(tmp_path / "plain.png")))


def test_a1111_text_fields_are_read():
    info = {"parameters": "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
                          "DeepCache: 3, Token merging ratio: 0.3",
            "fields": {"Steps": "4", "Sampler": "Euler", "CFG scale": "7", "Seed": "1", "Size-1": "64", "Size-2": "64",
                       "DeepCache": "3", "Token merging ratio": "0.3"}}
    found = replay(info)
    assert found.accelerators == {"deepcache": 3, "tome": 0.3}
    assert "DeepCache" not in found.ignored and "Token merging ratio" not in found.ignored
