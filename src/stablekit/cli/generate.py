"""`stablekit generate`: txt2img from the command line, writing PNGs with A1111 metadata."""
from __future__ import annotations

import json
from pathlib import Path

from stablekit.errors import StablekitError

DTYPES = ("fp32", "bf16", "fp16")


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="txt2img: generate images from a prompt",
                              description="Generate images. Without --model, uses the embedded shapes model.")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (A1111 syntax: (word:1.2), [word], BREAK)")
    p.add_argument("--model", default=None, help="diffusers folder or single .safetensors (default: embedded model)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default 7)")
    p.add_argument("--sampler", default=None, help='sampler name, A1111 or ComfyUI (default "DPM++ 2M")')
    p.add_argument("--schedule", default=None, help="Automatic, Karras, Exponential, SGM Uniform, ... (default Automatic)")
    p.add_argument("--seed", type=int, default=None, help="seed; image i uses seed+i (default -1: random)")
    p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's native size)")
    p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 1)")
    p.add_argument("--batch-count", type=int, default=None, help="number of batches (default 1)")
    p.add_argument("--clip-skip", type=int, default=None, help="A1111 clip skip (default 1)")
    p.add_argument("--init-image", default=None, metavar="FILE", help="img2img: start from this image (size defaults to its own)")
    p.add_argument("--strength", type=float, default=None, help="img2img denoising strength 0..1 (default 0.75; inpainting 1.0)")
    p.add_argument("--mask", default=None, metavar="FILE", help="inpaint: white = repaint (needs --init-image)")
    p.add_argument("--out", default=None, help="a .png file for one image, a folder for several (default: outputs/)")
    p.add_argument("--from-png", default=None, metavar="FILE", help="regenerate a PNG from its stored parameters; other flags override")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype (default fp32)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--arch", default=None, help="override architecture detection (sd1, sd2, sd2-v, sdxl)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt pickles (loaded with weights_only=True)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _replay_png(path: str):
    """The Replay of a PNG (generate/replay.py); names ignored fields in one warning line."""
    from stablekit.generate.notes import warn
    from stablekit.generate.replay import replay
    from stablekit.metadata import read_png_info

    found = replay(read_png_info(path))
    if found is None:
        raise StablekitError(f"{path} holds no generation parameters to regenerate from")
    if found.ignored:
        warn(f"--from-png {path}: not applied (stablekit does not implement them): {', '.join(found.ignored)}")
    return found


def output_paths(out: str | None, n: int, seeds: list[int]) -> list[Path]:
    """A file for one image (if --out ends in .png), else numbered files in a folder, never overwriting."""
    if out and out.lower().endswith(".png"):
        if n != 1:
            raise StablekitError(f"--out {out} is a file but {n} images were asked for; give a folder instead")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return [Path(out)]
    folder = Path(out or "outputs")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("-")[0]) for p in folder.glob("*.png") if p.name.split("-")[0].isdigit()]
    start = max(taken, default=-1) + 1
    return [folder / f"{start + i:05d}-{seed}.png" for i, seed in enumerate(seeds)]


def _check_inputs(args, params, replay) -> None:
    """One-line refusals for inputs the settings or the PNG need and were not given."""
    if replay.mask and not args.mask:
        raise StablekitError(f"{args.from_png} was made by inpainting: give its mask with --mask FILE and its image "
                             "with --init-image FILE")
    if params.denoising_strength is not None and args.init_image is None:
        raise StablekitError(f"denoising strength {params.denoising_strength} means img2img: give --init-image FILE "
                             "(or leave out --strength for txt2img)")
    if args.mask and args.init_image is None:
        raise StablekitError("--mask needs --init-image FILE: the image to inpaint")


def _generate(pipe, params, args, replay) -> list:
    """txt2img, img2img or inpainting, by the inputs given; warns when an input differs from the PNG's."""
    from stablekit.generate.notes import warn
    from stablekit.generate.steps import InitImage, InpaintMask

    settings = {k: v for k, v in params.to_dict().items() if k not in ("prompt", "denoising_strength")}
    if args.init_image is None:
        return pipe.generate(params.prompt, **settings)
    init = InitImage.load(args.init_image, params.width, params.height)
    mask = InpaintMask.load(args.mask, init.width, init.height) if args.mask else None
    for name, given, recorded in (("--init-image", init, replay.init_image), ("--mask", mask, replay.mask)):
        if isinstance(recorded, dict) and given is not None and recorded.get("sha256") != given.identity()["sha256"]:
            warn(f"{name} differs from the image the PNG was made with (sha256 of its pixels at "
                 f"{given.width}x{given.height} is not the recorded one); the result will differ")
    settings.update(width=init.width, height=init.height)
    if mask is None:
        return pipe.img2img(init, params.prompt, strength=_strength(params, 0.75), **settings)
    return pipe.inpaint(init, mask, params.prompt, strength=_strength(params, 1.0), **settings)


def _strength(params, default: float) -> float:
    return default if params.denoising_strength is None else params.denoising_strength


def run(args) -> int:
    import torch

    import stablekit
    from stablekit.generate.params import GenerationParams
    from stablekit.generate.replay import Replay
    from stablekit.metadata import save_png

    replay = _replay_png(args.from_png) if args.from_png else Replay(GenerationParams())
    params = replay.params
    overrides = {"prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps, "cfg": args.cfg,
                 "sampler": args.sampler, "schedule": args.schedule, "seed": args.seed, "width": args.width,
                 "height": args.height, "batch_size": args.batch_size, "batch_count": args.batch_count,
                 "clip_skip": args.clip_skip, "denoising_strength": args.strength}
    given = {k: v for k, v in overrides.items() if v is not None}
    params = GenerationParams.from_dict({**params.to_dict(), **given})
    # the PNG's own image out of its regenerated batch, unless the run was changed to a new one
    keep = replay.index if args.from_png and not given.keys() & {"seed", "batch_size", "batch_count"} else None
    if args.prompt is None and not args.from_png:
        raise StablekitError("no prompt: give one, e.g. stablekit generate \"a red circle\", or use --from-png FILE")
    _check_inputs(args, params, replay)
    model = args.model
    if model is None and replay.model.get("source") and Path(replay.model["source"]).exists():
        model = replay.model["source"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    pipe = stablekit.load(model, device=args.device, dtype=dtype, arch=args.arch, allow_pickle=args.allow_pickle,
                          progress=not args.no_progress)
    if replay.model.get("hash") and pipe.components.hash and replay.model["hash"] != pipe.components.hash:
        print(f"note: the PNG was made with model hash {replay.model['hash']}, this model is {pipe.components.hash}")
    images = _generate(pipe, params, args, replay)
    if keep is not None and keep < len(images):
        images = [images[keep]]
    seeds = [json.loads(im.info["stablekit"])["seed"] for im in images]
    for image, path in zip(images, output_paths(args.out, len(images), seeds)):
        save_png(image, path, image.info["parameters"], json.loads(image.info["stablekit"]))
        print(path)
    return 0
