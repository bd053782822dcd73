"""`stablekit generate` flags for the opt-in lossy speed-ups that are not in cli/generate.py itself:
--tiny-vae PATH (a TAESD decoder, generate/tiny_vae.py) and --tome RATIO (token merging, generate/tome.py). cli/generate.py adds them with
`add_arguments(parser)` and copies them into the generate() settings with `apply(args, settings)`.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags, in their own help group."""
    g = p.add_argument_group("lossy speed-ups (off unless given)")
    g.add_argument("--tiny-vae", default=None, metavar="PATH",
                   help="decode with a tiny autoencoder (TAESD: taesd_decoder.safetensors or a diffusers "
                        "AutoencoderTiny folder) instead of the model's VAE: much faster decoding, softer "
                        "details; encoding (img2img) keeps the model's VAE. Recorded as 'Tiny VAE' in the PNG")
    g.add_argument("--tome", type=float, default=None, metavar="RATIO",
                   help="token merging (ToMe, tomesd's math, as A1111's 'Token merging ratio'): merge this share "
                        "(0 <= r < 1, e.g. 0.5) of the tokens in the highest-resolution self-attention; pays on "
                        "large images, changes details")


def apply(args, settings: dict) -> dict:
    """The given flags into a generate() settings dict, validated at once (a bad path or ratio is a
    one-line StablekitError before any model loads)."""
    from pathlib import Path

    from stablekit.generate.tiny_vae import decoder_file
    from stablekit.generate.tome import check_ratio

    if getattr(args, "tiny_vae", None):
        decoder_file(Path(args.tiny_vae))
        settings["tiny_vae"] = args.tiny_vae
    if getattr(args, "tome", None):
        settings["tome"] = check_ratio(args.tome)
    return settings
