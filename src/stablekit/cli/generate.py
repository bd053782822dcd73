"""`stablekit generate`: txt2img, img2img (--init-image) and inpainting (--mask) from the command line.

Writes PNG, JPEG or WebP files carrying A1111's parameters text and stablekit's record. The output
path is validated before anything is loaded or computed (stablekit.metadata.outputs).
"""
from __future__ import annotations

from pathlib import Path

from stablekit.cli.formats import DTYPE_CHOICES
from stablekit.errors import StablekitError
from stablekit.formats.archs import ARCHS
from stablekit.metadata.outputs import FORMATS, check_count, plan_outputs, write_outputs
from stablekit.samplers.registry import SAMPLER_NAMES, SCHEDULE_NAMES

DESCRIPTION = """Generate images with a Stable Diffusion model; without --model, with the embedded shapes model
(native size 64x64). txt2img from a prompt; img2img with --init-image (and --strength); inpainting with
--init-image and --mask. Images go to --out with their parameters embedded (see png-info)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="txt2img, img2img and inpainting: images from a prompt",
                              description=DESCRIPTION)
    p.add_argument("prompt", nargs="?", default=None,
                   help="the prompt (A1111 syntax: (word:1.2), [word], [from:to:when], BREAK)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="diffusers folder or single .safetensors (.ckpt with --allow-pickle); "
                        "leave out for the embedded shapes model")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default empty)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, default=None, metavar="X", help="classifier-free guidance scale (default 7)")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help=f"A1111 or ComfyUI sampler name: {', '.join(SAMPLER_NAMES)} (default DPM++ 2M)")
    p.add_argument("--schedule", default=None, metavar="NAME",
                   help=f"schedule type: {', '.join(SCHEDULE_NAMES)} (default Automatic: the sampler's own)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed; image i of the run uses seed+i, as A1111 (default -1: random)")
    p.add_argument("--width", type=int, default=None, metavar="W",
                   help="a multiple of 8 (default: the model's native size; 64 for the embedded model)")
    p.add_argument("--height", type=int, default=None, metavar="H",
                   help="a multiple of 8 (default: the model's native size; 64 for the embedded model)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per UNet call (default 1)")
    p.add_argument("--batch-count", type=int, default=None, metavar="N", help="number of batches (default 1)")
    p.add_argument("--clip-skip", type=int, default=None, metavar="N", help="A1111 clip skip (default 1)")
    p.add_argument("--init-image", default=None, metavar="FILE",
                   help="img2img: start from this image (size defaults to its own, rounded down to a multiple of 8)")
    p.add_argument("--strength", type=float, default=None, metavar="X",
                   help="img2img denoising strength 0..1 (default 0.75; inpainting 1.0)")
    p.add_argument("--mask", default=None, metavar="FILE",
                   help="inpainting: white = repaint, black = keep (needs --init-image)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="a .png/.jpg/.webp file for one image, else a folder of NNNNN-SEED files; "
                        "a trailing / makes any name a folder (default: outputs/)")
    p.add_argument("--format", choices=tuple(FORMATS), default=None,
                   help="file type of the images written into a folder (default png)")
    p.add_argument("--grid", action="store_true",
                   help="also write an A1111-style grid of a run's images (with a file --out: only the grid)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--from-png", default=None, metavar="FILE",
                   help="regenerate an image from its stored parameters (PNG, JPEG or WebP; stablekit's or "
                        "A1111's); other flags override")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32", help="dtype to load the weights in (default fp32)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="override architecture detection (default: detected from the file)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .ckpt/.pt pickles (loaded with torch.load(weights_only=True))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _params_from_png(path: str):
    from stablekit.generate.params import GenerationParams
    from stablekit.metadata import read_png_info

    info = read_png_info(path)
    if info["stablekit"]:
        return GenerationParams.from_dict(info["stablekit"]), info["stablekit"].get("model", {})
    if info["parameters"]:
        return GenerationParams.from_a1111(info["fields"]), {}
    raise StablekitError(f"{path} holds no generation parameters to regenerate from")


def run(args) -> int:
    # The output path first: a mistake there must cost no model loading and no compute.
    outputs = plan_outputs(args.out, args.format, overwrite=args.overwrite, grid=args.grid)

    import torch

    import stablekit
    from stablekit.generate.params import GenerationParams

    params, model_record = _params_from_png(args.from_png) if args.from_png else (GenerationParams(), {})
    overrides = {"prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps, "cfg": args.cfg,
                 "sampler": args.sampler, "schedule": args.schedule, "seed": args.seed, "width": args.width,
                 "height": args.height, "batch_size": args.batch_size, "batch_count": args.batch_count,
                 "clip_skip": args.clip_skip, "denoising_strength": args.strength}
    params = GenerationParams.from_dict({**params.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    if params.prompt is None:
        raise StablekitError("no prompt: give one, e.g. stablekit generate \"a red circle\", or use --from-png FILE")
    check_count(outputs, params.batch_size * params.batch_count)
    model = args.model
    if model is None and model_record.get("source") and Path(model_record["source"]).exists():
        model = model_record["source"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    pipe = stablekit.load(model, dtype=dtype, arch=args.arch, allow_pickle=args.allow_pickle, progress=not args.no_progress)
    if model_record.get("hash") and pipe.components.hash and model_record["hash"] != pipe.components.hash:
        print(f"note: the PNG was made with model hash {model_record['hash']}, this model is {pipe.components.hash}")
    if params.denoising_strength is not None and args.init_image is None:
        raise StablekitError(f"denoising strength {params.denoising_strength} means img2img: give --init-image FILE "
                             "(or leave out --strength for txt2img)")
    if args.mask and args.init_image is None:
        raise StablekitError("--mask needs --init-image FILE: the image to inpaint")
    if args.mask and params.denoising_strength is None:
        params.denoising_strength = 1.0
    images = pipe.run(params, init_image=args.init_image, mask=args.mask)
    for path in write_outputs(outputs, images):
        print(path)
    return 0
