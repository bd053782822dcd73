"""cli/generate_speed.py: --tiny-vae and --tome parse into generate() settings (nothing when absent)."""
from __future__ import annotations

import argparse

import pytest

from stablekit.cli import generate_speed
from stablekit.errors import StablekitError


def test_flags_become_settings(tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(decoder_block_out_channels=(8,) * 4, encoder_block_out_channels=(8,) * 4).save_pretrained(tmp_path / "t")
    p = argparse.ArgumentParser()
    generate_speed.add_arguments(p)
    assert generate_speed.apply(p.parse_args([]), {}) == {}
    args = p.parse_args(["--tiny-vae", str(tmp_path / "t"), "--tome", "0.5"])
    assert generate_speed.apply(args, {"steps": 4}) == {"steps": 4, "tiny_vae": str(tmp_path / "t"), "tome": 0.5}
    with pytest.raises(StablekitError, match="does not exist"):
        generate_speed.apply(p.parse_args(["--tiny-vae", str(tmp_path / "missing")]), {})
    with pytest.raises(StablekitError, match="tome must be a ratio"):
        generate_speed.apply(p.parse_args(["--tome", "2"]), {})
    text = " ".join(p.format_help().split())
    assert "TAESD" in text and "Token merging" in text
