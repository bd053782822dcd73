"""Export snapshots of the v2 pretraining's UNet checkpoints (EMA weights, as stage_export does)
into single-file shapes models, reading the run's VAE/text encoder; read-only on /work/runs/shapes-v2."""
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from stablekit.formats import save_model
from stablekit.shapes import architecture as arch
from stablekit.shapes.pretrain import build_components

run = Path("/work/runs/shapes-v2")
vae = arch.build_vae(0); vae.load_state_dict(torch.load(run / "vae/final.pt", weights_only=True))
te = arch.build_text_encoder(0); te.load_state_dict(torch.load(run / "text/final.pt", weights_only=True))
cache = torch.load(run / "cache.pt", weights_only=True, mmap=True)
scale = float(cache["scaling_factor"])
print("scaling factor", scale)
for ck in sorted(Path(sys.argv[1]).glob("step-*.pt")):
    dest = Path(sys.argv[2]) / (ck.stem + ".safetensors")
    if dest.exists():
        continue
    state = torch.load(ck, weights_only=True, map_location="cpu")
    unet = arch.build_unet()
    unet.load_state_dict(state["strategy"]["unet"])
    if state.get("ema"):
        with torch.no_grad():
            for p, s in zip([p for p in unet.parameters() if p.requires_grad], state["ema"]["shadow"]):
                p.copy_(s)
    comps = build_components(vae, te, unet, scale)
    save_model(comps, dest, to="single-file", dtype=torch.float16)
    print("exported", dest, state["step"])
