"""formats: the same conversion gives the same bytes, in every process (issue 14 item 4).

A1111 shows a checkpoint's "Model hash" (sha256 of the file), so a converted file must not
change from run to run. Orders that follow Python's per-process string hash seed (sets) only
differ between processes, so each conversion runs in its own interpreter with its own
PYTHONHASHSEED; an in-process comparison could not catch that.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import tiny_ldm_file

SCRIPT = """
import sys
from stablekit.cli import main
src, out = sys.argv[1], sys.argv[2]
assert main(["convert", src, out + "/folder"]) == 0
assert main(["convert", out + "/folder", out + "/back.safetensors"]) == 0
assert main(["convert", src, out + "/half.safetensors", "--dtype", "fp16"]) == 0
"""


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("arch", ["sdxl"])
def test_convert_twice_gives_equal_bytes_both_directions(arch, tmp_path):
    src = tiny_ldm_file(arch, tmp_path / "src.safetensors")
    src_path = str(Path(__file__).parent.parent / "src")
    runs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        out.mkdir()
        env = dict(os.environ, PYTHONHASHSEED=seed, HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([src_path, os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(tree_digests(out))
    first, second = runs
    assert "folder/unet/config.json" in first and "back.safetensors" in first and "half.safetensors" in first
    assert first.keys() == second.keys()
    differ = sorted(k for k in first if first[k] != second[k])
    assert not differ, f"files that differ between two identical conversions: {differ}"
