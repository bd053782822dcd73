"""Export a pretrain run's newest UNet checkpoint (EMA weights) as a model folder, mid-run.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_pretrain_checkpoint.py \
        --run runs/shapes-v3 --dest runs/shapes-v3/model-step1000

Same layout as the recipe's export stage (shapes.safetensors + diffusers/ + training.json), so a
running `stablekit shapes pretrain` can be evaluated on its latest checkpoint without stopping it.
Needs the run's vae/final.pt, text/final.pt and cache.pt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stablekit.shapes import architecture as arch
from stablekit.shapes.pretrain import stage_export
from stablekit.shapes.pretrain_config import config_from_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--dest", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    cfg = config_from_record(json.loads((run / "pretrain.json").read_text()))  # older runs keep their options
    vae, te = arch.build_vae(), arch.build_text_encoder()
    vae.load_state_dict(torch.load(run / "vae" / "final.pt", weights_only=True))
    te.load_state_dict(torch.load(run / "text" / "final.pt", weights_only=True))
    cache = {"scaling_factor": torch.load(run / "cache.pt", weights_only=True)["scaling_factor"]}
    stage_export(cfg, run, vae, te, cache, Path(args.dest))


if __name__ == "__main__":
    main()
