"""Export the UNet training checkpoints of a shapes pretraining run as single-file models, so
`stablekit eval --model` can score them (read-only on the run).

    PYTHONPATH=src python benchmarks/export_checkpoints.py --run /work/runs/shapes-v2 \
        --checkpoints /work/runs/shapes-v2/kept --out /tmp/v2-models
    stablekit eval --model /tmp/v2-models/step-001500.safetensors --model /tmp/v2-models/step-005500.safetensors \
        --metrics judge,fid,kid --n 64 --images-per-prompt 4 --out ckpts --resume

Each model is the run's exported model (`RUN/model/shapes.safetensors`: its VAE, text encoder and
scaling factor) with the UNet's weights replaced by the checkpoint's EMA weights (as the pretraining's
export stage does), saved in float16 like that export, so the run's last checkpoint gives the
exported model bit for bit. A model already in --out is skipped. `checkpoint_pipeline` builds the
same model in memory (benchmarks/eval_checkpoints.py uses it without writing files).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def checkpoint_pipeline(run: Path, checkpoint: Path):
    """A Pipeline of the run's exported model with the UNet weights of `checkpoint` (EMA if kept), fp16-rounded."""
    import torch

    import stablekit

    pipe = stablekit.load(str(Path(run) / "model" / "shapes.safetensors"), progress=False)
    state = torch.load(checkpoint, weights_only=True, map_location="cpu", mmap=True)
    unet = pipe.components.unet
    unet.load_state_dict(state["strategy"]["unet"])
    if state.get("ema"):
        with torch.no_grad():
            trainable = [p for p in unet.parameters() if p.requires_grad]
            for p, s in zip(trainable, state["ema"]["shadow"], strict=True):
                p.copy_(s.to(torch.float16).to(p.dtype))  # the export stores fp16
    return pipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="pretraining folder holding model/shapes.safetensors")
    p.add_argument("--checkpoints", type=Path, required=True, help="folder of step-NNNNNN.pt UNet checkpoints")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import torch

    from stablekit.formats import save_model

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for ck in sorted(args.checkpoints.glob("step-*.pt")):
        dest = args.out / (ck.stem + ".safetensors")
        if dest.exists():
            continue
        pipe = checkpoint_pipeline(args.run, ck)
        tmp = dest.with_suffix(".tmp.safetensors")
        save_model(pipe.components, tmp, to="single-file", dtype=torch.float16)
        tmp.replace(dest)  # a kill never leaves a half-written model that a rerun would skip
        print("exported", dest, flush=True)


if __name__ == "__main__":
    main()
