"""`stablekit generate` flags for the guidance options (generate/guidance.py): CFG rescale, FreeU,
PAG and img2img fix steps. cli/generate.py adds them with `add_arguments(parser)` and turns them,
over a --from-png image's own options, into one GuidanceOptions with `options_from_args(args, replay)`.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from stablekit.errors import StablekitError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The guidance flags, in their own help group."""
    g = p.add_argument_group("guidance options (off unless given)")
    g.add_argument("--cfg-rescale", type=float, default=None, metavar="X",
                   help="CFG rescale phi 0..1 (A1111's CFG Rescale, diffusers' guidance_rescale; for v-prediction "
                        "and zero-terminal-SNR models, 0.7 is the paper's value; default 0: off)")
    g.add_argument("--freeu", nargs="?", const="default", default=None, metavar="B1,B2,S1,S2",
                   help="FreeU (as diffusers' enable_freeu): backbone scales b1,b2 and skip scales s1,s2; without "
                        "values the architecture's defaults (SD1 1.5,1.6,0.9,0.2; SD2 1.4,1.6,0.9,0.2; "
                        "SDXL 1.3,1.4,0.9,0.2)")
    g.add_argument("--freeu-v2", action="store_true", default=None,
                   help="apply --freeu's values with ComfyUI's FreeU_V2 math (mean-modulated backbone scale)")
    g.add_argument("--pag-scale", type=float, default=None, metavar="X",
                   help="Perturbed-Attention Guidance scale (3 is the paper's value; default 0: off); one more "
                        "UNet batch per step")
    g.add_argument("--pag-layers", nargs="+", default=None, metavar="NAME",
                   help="self-attention layers PAG perturbs, diffusers' names: mid, down_blocks.1, "
                        "up_blocks.0.attentions.1, ... (default mid)")
    g.add_argument("--fix-steps", action="store_true", default=None,
                   help="img2img/inpainting: run exactly --steps steps within the strength range (A1111's "
                        "'With img2img, do exactly the amount of steps the slider specifies')")


def options_from_args(args, replay=None):
    """A validated GuidanceOptions from the flags over the PNG's (replay.guidance); None when nothing is on.
    A bad value is a one-line StablekitError, raised before any model loads."""
    from stablekit.generate.guidance import GuidanceOptions

    base = getattr(replay, "guidance", None) or GuidanceOptions()
    given: dict = {}
    if args.cfg_rescale is not None:
        given["cfg_rescale"] = args.cfg_rescale
    if args.freeu is not None:
        given["freeu"] = True if args.freeu == "default" else _freeu_values(args.freeu)
    if args.freeu_v2:
        given["freeu_v2"] = True
    if args.pag_scale is not None:
        given["pag_scale"] = args.pag_scale
    if args.pag_layers is not None:
        if not (args.pag_scale or base.pag_scale):
            raise StablekitError("--pag-layers needs --pag-scale X (PAG is off without a scale)")
        given["pag_layers"] = tuple(args.pag_layers)
    if args.fix_steps:
        given["fix_steps"] = True
    options = replace(base, **given).validate()
    return options if options.enabled else None


def _freeu_values(text: str) -> tuple:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise StablekitError(f"--freeu takes B1,B2,S1,S2 numbers (got {text!r}); e.g. --freeu 1.5,1.6,0.9,0.2") from None
    if len(values) != 4:
        raise StablekitError(f"--freeu takes 4 numbers B1,B2,S1,S2 (got {text!r}); e.g. --freeu 1.5,1.6,0.9,0.2")
    return values
