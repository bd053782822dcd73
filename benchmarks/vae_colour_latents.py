"""Does an autoencoder's encoder keep teal apart from the palette colours in latent space?

If the encoder sends teal to (nearly) the latent of blue or green, no decoder fine-tune can bring
teal back. Per colour: the posterior mean (unscaled) of a background in that colour (the four
corner latents of 20 renders with a small object) and of a large centred square's middle
latent; then each palette colour's distance to teal, in units of the renders' own spread
(the pooled per-channel std, so ~1 means "within the noise").

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/vae_colour_latents.py --vae embedded [--vae M]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vae_colour_roundtrip import load_vae


def colour_latents(vae, n: int = 20, seed: int = 0) -> dict:
    from stablekit.data.arrays import to_pixels
    from stablekit.shapes.render import ALL_COLORS, COLORS, render, sample_spec
    from stablekit.shapes.vae_anchor import posterior_means

    rng = np.random.default_rng(seed)
    out = {}
    for c in ALL_COLORS:
        others = [o for o in COLORS if o != c]
        bg = to_pixels(np.stack([render(sample_spec(rng, colors=others, background=c, size="small")) for _ in range(n)]))
        obj = to_pixels(np.stack([render(sample_spec(rng, backgrounds=others, color=c, size="large", position="center",
                                                     shape="square")) for _ in range(n)]))
        z = posterior_means(vae, bg)
        corners = torch.stack([z[:, :, 0, 0], z[:, :, 0, -1], z[:, :, -1, 0], z[:, :, -1, -1]], -1).mean(-1)
        mid = posterior_means(vae, obj)[:, :, z.shape[2] // 2, z.shape[3] // 2]
        out[c] = {"background": corners, "object": mid}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", action="append", required=True, help="repeatable: embedded, a model path or a .pt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for spec in args.vae:
        lat = colour_latents(load_vae(spec))
        print(f"\n{spec}\ndistance to teal / pooled std   background   object")
        for c, row in lat.items():
            if c == "teal":
                continue
            cells = []
            for role in ("background", "object"):
                a, b = lat["teal"][role], row[role]
                pooled = torch.sqrt((a.var(0) + b.var(0)) / 2).mean()
                cells.append(f"{float((a.mean(0) - b.mean(0)).norm() / pooled):10.1f}")
            print(f"{c:8s} {'   '.join(cells)}")


if __name__ == "__main__":
    main()
