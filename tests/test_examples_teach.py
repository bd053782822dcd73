"""The four teaching examples run end to end against the embedded model (smoke settings: a few
steps, a few judged prompts). Slow: minutes of CPU in all; run with `-m slow`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "finetune": ["--steps", "3", "--batch-size", "2", "--prompts", "2"],
    "lora": ["--steps", "3", "--prompts", "2"],
    "textual_inversion": ["--steps", "3", "--prompts", "2"],
    "dreambooth": ["--steps", "3", "--class-images", "2", "--prompts", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(SMOKE))
def test_example_runs_end_to_end(example, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "STABLEKIT_TRAIN_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / example
    subprocess.run([sys.executable, str(ROOT / "examples" / f"{example}.py"), "--out", str(out), *SMOKE[example]],
                   check=True, env=env, timeout=1800)
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3
    artefact = next(out.glob("*.safetensors"))
    assert artefact.stat().st_size > 0
