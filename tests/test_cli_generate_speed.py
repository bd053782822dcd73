"""cli/generate_speed.py: --tiny-vae and --tome parse into generate() settings (nothing when absent)."""
from __future__ import annotations

import argparse

from stablekit.cli import generate_speed


def test_flags_become_settings():
    p = argparse.ArgumentParser()
    generate_speed.add_arguments(p)
    assert generate_speed.apply(p.parse_args([]), {}) == {}
    args = p.parse_args(["--tiny-vae", "taesd", "--tome", "0.5"])
    assert generate_speed.apply(args, {"steps": 4}) == {"steps": 4, "tiny_vae": "taesd", "tome": 0.5}
    text = " ".join(p.format_help().split())
    assert "TAESD" in text and "Token merging" in text
