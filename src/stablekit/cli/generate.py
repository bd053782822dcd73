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
    p.add_argument("--arch", default=None, help="override architecture detection (sd1, sd2, sd2-v, sdxl)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt pickles (loaded with weights_only=True)")
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


def run(args) -> int:
    import torch

    import stablekit
    from stablekit.generate.params import GenerationParams
    from stablekit.metadata import save_png

    params, model_record = _params_from_png(args.from_png) if args.from_png else (GenerationParams(), {})
    overrides = {"prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps, "cfg": args.cfg,
                 "sampler": args.sampler, "schedule": args.schedule, "seed": args.seed, "width": args.width,
                 "height": args.height, "batch_size": args.batch_size, "batch_count": args.batch_count,
                 "clip_skip": args.clip_skip, "denoising_strength": args.strength}
    params = GenerationParams.from_dict({**params.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    if params.prompt is None:
        raise StablekitError("no prompt: give one, e.g. stablekit generate \"a red circle\", or use --from-png FILE")
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
    seeds = [json.loads(im.info["stablekit"])["seed"] for im in images]
    for image, path in zip(images, output_paths(args.out, len(images), seeds)):
        save_png(image, path, image.info["parameters"], json.loads(image.info["stablekit"]))
        print(path)
    return 0
