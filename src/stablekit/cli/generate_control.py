"""`stablekit generate`'s ControlNet, noise-mask, outpainting and hires-fix flags, and the objects they make.

Split out of cli/generate.py (which registers them with `add_arguments` in the same place of
--help as before): ControlNet units are built from --controlnet groups, the hires fix from the
--hires-* flags over a replayed PNG's own.
"""
from __future__ import annotations

import argparse

from stablekit.errors import StablekitError


class _UnitFlag(argparse.Action):
    """--controlnet starts a ControlNet unit; the --control-* flags after it set that unit's fields."""

    def __call__(self, parser, namespace, values, option_string=None):
        units = getattr(namespace, "control_units", None) or []
        if self.dest == "net":
            units.append({"net": values})
        elif not units:
            parser.error(f"{option_string} belongs to a ControlNet unit: give --controlnet PATH before it")
        elif self.dest in units[-1]:
            parser.error(f"{option_string} given twice for ControlNet unit {len(units) - 1}; repeat --controlnet "
                         "PATH to start another unit")
        else:
            units[-1][self.dest] = values
        namespace.control_units = units


def add_arguments(p) -> None:
    """The ControlNet unit, --noise-mask, --outpaint and --hires-* flags."""
    from stablekit.generate.control import CONTROL_MODES
    from stablekit.generate.hires import UPSCALERS
    from stablekit.generate.preprocess import PREPROCESSORS

    p.set_defaults(control_units=[])
    unit = dict(action=_UnitFlag, default=argparse.SUPPRESS)
    p.add_argument("--controlnet", dest="net", metavar="PATH", **unit,
                   help="a ControlNet (diffusers folder or single .safetensors); starts a unit, repeat for several")
    p.add_argument("--control-image", dest="image", metavar="FILE", **unit,
                   help="the unit's conditioning image (needed for every --controlnet)")
    p.add_argument("--control-scale", dest="scale", type=float, metavar="X", **unit,
                   help="the unit's weight 0..2 (default 1)")
    p.add_argument("--control-start", dest="start", type=float, metavar="F", **unit,
                   help="fraction of the steps where the unit starts (default 0)")
    p.add_argument("--control-end", dest="end", type=float, metavar="F", **unit,
                   help="fraction of the steps where the unit ends (default 1)")
    p.add_argument("--control-mode", dest="mode", metavar="MODE", **unit,
                   help=f"balanced, prompt or controlnet (A1111: {', '.join(CONTROL_MODES)}; default balanced)")
    p.add_argument("--control-preprocessor", "--preprocessor", dest="preprocessor", metavar="NAME", **unit,
                   help=f"preprocess the image: {', '.join(PREPROCESSORS)} (default none: use it as given)")
    p.add_argument("--save-preprocessed", action="store_true",
                   help="write each unit's preprocessed control image beside the first output (NAME-controlN.png)")
    p.add_argument("--noise-mask", action="store_true", default=None,
                   help="inpainting with a 9-channel inpainting model: reset the latents outside the mask every "
                        "step, as A1111 does (ComfyUI's noise_mask; default off, as diffusers)")
    p.add_argument("--outpaint", default=None, metavar="L,T,R,B",
                   help="outpainting: pad --init-image by LEFT,TOP,RIGHT,BOTTOM pixels and inpaint the border")
    p.add_argument("--hires-scale", type=float, default=None, metavar="X",
                   help="hires fix (txt2img): generate, upscale by X, then a second img2img pass (A1111's Hires upscale)")
    p.add_argument("--hires-steps", type=int, default=None, metavar="N",
                   help="steps of the hires pass (default 0: as many as --steps)")
    p.add_argument("--hires-denoise", "--hires-strength", type=float, default=None, metavar="X",
                   help="denoising strength of the hires pass, 0..1 (default 0.7)")
    p.add_argument("--hires-upscaler", default=None, metavar="NAME|PATH",
                   help=f"{', '.join(UPSCALERS)} (any case; default Latent), or an ESRGAN-family model: a "
                        ".pth/.safetensors path, or its name in an --upscaler-dir (file stem, or A1111's label "
                        "such as 'R-ESRGAN 4x+')")
    p.add_argument("--upscaler-dir", action="append", default=[], metavar="DIR",
                   help="a folder of upscaler models for --hires-upscaler NAME (repeatable; searched before "
                        "$STABLEKIT_UPSCALER_DIR)")


def hires_from_args(args, replay):
    """The HiresFix of the flags over the PNG's (None: no hires fix); flags without a scale are one line.
    A model upscaler is found (--upscaler-dir) and read here, before the diffusion model loads."""
    from stablekit.generate.hires import HiresFix
    from stablekit.generate.upscale_models import load_upscaler

    given = {k: v for k, v in (("scale", args.hires_scale), ("steps", args.hires_steps), ("denoise", args.hires_denoise),
                               ("upscaler", args.hires_upscaler)) if v is not None}
    if replay.hires is None and given and "scale" not in given:
        raise StablekitError(f"--hires-{next(iter(given))} needs --hires-scale X "
                             "(the hires fix's upscale factor)")
    if replay.hires is None and not given:
        return None
    base = (replay.hires or HiresFix()).record()
    if "upscaler" in given:
        base.pop("upscaler_path", None)  # the PNG's model file is not the one asked for
    hires = HiresFix(**{**base, **given}, upscaler_dirs=tuple(getattr(args, "upscaler_dir", None) or ())).validate()
    if args.init_image is not None:
        raise StablekitError("the hires fix is for txt2img; leave out --hires-* flags with --init-image")
    if hires.upscaler_path:
        load_upscaler(hires.upscaler_path)  # a file that is no upscaler fails now; the model is kept for the pass
    return hires


def control_units(args) -> list:
    """The ControlUnits of --controlnet groups; a unit without --control-image is one line."""
    from stablekit.generate.control import ControlUnit

    units = []
    for i, fields in enumerate(args.control_units):
        if "image" not in fields:
            raise StablekitError(f"ControlNet unit {i} ({fields['net']}) has no --control-image FILE")
        units.append(ControlUnit(**fields))
    return units
