"""Does an autoencoder keep every colour, palette and off-palette (teal), and the shapes?

Renders, per colour (the 8 palette colours and teal), n images with the object in that colour and
n with the background in it (other colours drawn from the palette), sends them through the
autoencoder (posterior mean) and reports: the judge's colour accuracy before and after, and the
mean RGB error (0-255) of fully covered object / background pixels. On n normal base renders:
PSNR of the round trip and the judge's per-attribute accuracy (small-object shape apart), and how
far the posterior means moved from a reference autoencoder's (--reference, default model 3's), in
units of the reference's latent std (1 / scaling_factor): what a UNet trained on its latents sees.

    nice -n 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/vae_colour_roundtrip.py \
        --vae /work/runs/shapes-v4/vae/final.pt --vae embedded [--n 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def load_vae(spec: str):
    """'embedded' (the shipped model's autoencoder), a model path, or a pretrain state dict (.pt)."""
    if spec.endswith(".pt"):
        from stablekit.shapes import architecture as arch

        vae = arch.build_vae()
        vae.load_state_dict(torch.load(spec, weights_only=True))
        return vae.eval()
    import stablekit
    from stablekit.formats import load_model

    return load_model(stablekit.EMBEDDED_MODEL if spec == "embedded" else spec, dtype=torch.float32).vae.eval()


def round_trip(vae, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 64, 64, 3] -> the same through encode (mean) and decode, uint8."""
    out = []
    for s in range(0, len(images), 64):
        x = torch.from_numpy(images[s:s + 64]).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out.append(((y.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8))
    return np.concatenate(out)


def colour_sets(n: int, seed: int = 7):
    """{colour: (object-colour specs, background-colour specs)} over the palette and teal."""
    from stablekit.shapes.render import ALL_COLORS, COLORS, sample_spec

    rng = np.random.default_rng(seed)
    sets = {}
    for c in ALL_COLORS:
        others = [o for o in COLORS if o != c]
        sets[c] = ([sample_spec(rng, backgrounds=others, color=c) for _ in range(n)],
                   [sample_spec(rng, colors=others, background=c) for _ in range(n)])
    return sets


def measure(vae, judge, n: int, reference=None) -> dict:
    from stablekit.shapes.render import render, render_alpha, sample_spec

    rows = {}
    for colour, (obj_specs, bg_specs) in colour_sets(n).items():
        row = {}
        for key, specs, want in (("object", obj_specs, 1.0), ("background", bg_specs, 0.0)):
            src = np.stack([render(s) for s in specs])
            rec = round_trip(vae, src)
            mask = np.stack([render_alpha(s) == want for s in specs])  # pixels fully in that colour
            attr = "color" if key == "object" else "background"
            row[key] = {"judged_before": float(np.mean([j.get(attr) == colour for j in judge(list(src))])),
                        "judged_after": float(np.mean([j.get(attr) == colour for j in judge(list(rec))])),
                        "rgb_error": float(np.abs(rec.astype(float) - src.astype(float))[mask].mean())}
        rows[colour] = row
    rng = np.random.default_rng(11)
    specs = [sample_spec(rng) for _ in range(8 * n)]
    src = np.stack([render(s) for s in specs])
    rec = round_trip(vae, src)
    mse = ((rec.astype(float) - src.astype(float)) ** 2).mean(axis=(1, 2, 3))
    judged = judge(list(rec))
    normal = {"n": len(specs), "psnr": float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))}
    for attr in ("shape", "color", "background", "size", "position"):
        normal[attr] = float(np.mean([j.get(attr) == getattr(s, attr) for j, s in zip(judged, specs)]))
    small = [(j, s) for j, s in zip(judged, specs) if s.size == "small"]
    normal["small_shape"] = float(np.mean([j.get("shape") == s.shape for j, s in small]))
    if reference is not None:
        from stablekit.data.arrays import to_pixels
        from stablekit.shapes.vae_anchor import latent_drift

        drift = latent_drift(vae, reference, to_pixels(src), 1.0 / float(reference.config.scaling_factor))
        normal.update({f"drift_{k}": v for k, v in drift.items() if k != "n"})
    return {"colours": rows, "normal": normal}


def main() -> None:
    from stablekit.shapes.judge import Judge

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", action="append", required=True, help="repeatable: embedded, a model path or a .pt")
    ap.add_argument("--n", type=int, default=40, help="images per colour and role (normal set: 8n)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reference", default="embedded", help="latent drift measured against this autoencoder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    judge, results, reference = Judge.load(), {}, load_vae(args.reference)
    for spec in args.vae:
        results[spec] = r = measure(load_vae(spec), judge, args.n, reference)
        print(f"\n{spec}\ncolour   object: judged before/after, rgb err | background: judged before/after, rgb err")
        for c, row in r["colours"].items():
            o, b = row["object"], row["background"]
            print(f"{c:8s} {o['judged_before']:.2f}/{o['judged_after']:.2f} {o['rgb_error']:5.1f}"
                  f"       | {b['judged_before']:.2f}/{b['judged_after']:.2f} {b['rgb_error']:5.1f}")
        print("normal renders:", json.dumps({k: round(v, 3) for k, v in r["normal"].items()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
