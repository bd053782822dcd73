"""Run a peer's training script with a stand-in for the torchvision transforms it uses (benchmarks only).

    python benchmarks/peer_shims/run_peer.py SCRIPT.py [script args...]

PyPI torchvision cannot be installed beside torch 2.13.0 here (it pulls a CUDA torch 2.14 and about
17 nvidia packages; ../shared/docs/platform-notes.md). transformers, diffusers, peft and datasets are imported
first, so their checks still find torchvision missing and take no torchvision path of their own;
only then is tv_transforms.py registered as `torchvision.transforms` and the script run as __main__.
"""
from __future__ import annotations

import importlib.util
import runpy
import sys
import types
from pathlib import Path

import datasets  # noqa: F401  (availability checks run before the stand-in exists)
import diffusers  # noqa: F401
import peft  # noqa: F401
import transformers  # noqa: F401


def main() -> None:
    spec = importlib.util.spec_from_file_location("torchvision.transforms", Path(__file__).with_name("tv_transforms.py"))
    transforms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transforms)
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms})
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
