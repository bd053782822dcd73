"""`stablekit generate`: txt2img, img2img (--init-image) and inpainting (--mask) from the command line.

Writes PNG, JPEG or WebP files carrying A1111's parameters text and stablekit's record. The output
path is validated before anything is loaded or computed (stablekit.metadata.outputs).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from stablekit.cli import generate_control, generate_guidance, generate_speed
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
    p.add_argument("--cfg", type=float, default=None, metavar="X", help="classifier-free guidance scale (default: the model's recorded default, else 7)")
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
    p.add_argument("--mask-blur", type=int, default=None, metavar="N",
                   help="inpainting: Gaussian blur of the mask in pixels, A1111's Mask blur (default 0)")
    p.add_argument("--invert-mask", action="store_true", help="inpainting: repaint the black part (Inpaint not masked)")
    p.add_argument("--inpaint-fill", default=None, metavar="MODE",
                   help="inpainting: what the masked area starts from: fill, original, latent-noise or "
                        "latent-nothing (A1111's Masked content; default original)")
    p.add_argument("--only-masked", action="store_true",
                   help="inpainting: inpaint only the mask's box (plus padding) at the output size, then paste it back")
    p.add_argument("--only-masked-padding", type=int, default=None, metavar="N",
                   help="pixels added around the mask's box with --only-masked (default 32)")
    # LoRA and embeddings (generate/networks.py)
    p.add_argument("--lora", action="append", default=None, metavar="PATH[:SCALE]",
                   help="apply a LoRA/LyCORIS .safetensors file at strength SCALE (default 1); repeatable")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="folder where a prompt's <lora:NAME:SCALE> tags find NAME.safetensors, as A1111's models/Lora")
    p.add_argument("--embeddings-dir", default=None, metavar="DIR",
                   help="textual-inversion embeddings (.pt/.safetensors), used by file name in the prompt or "
                        "negative prompt (default: none)")
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
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", choices=("auto",) + DTYPE_CHOICES, default="auto",
                   help="weights/compute dtype; auto: the fastest exact path measured on this machine (bf16 where "
                        "faster, with channels_last), fp32: exactly the reference computation (default auto)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the UNet and VAE decoder: faster steps after a slow first compile "
                        "(default --no-compile)")
    p.add_argument("--backend", choices=("torch", "openvino"), default="torch",
                   help="what runs the UNet: torch (default) or openvino (compiled for the CPU, cached; needs "
                        "pip install openvino==2026.4.1; --dtype then picks its precision: auto = bf16 where the CPU "
                        "has bf16 kernels, else f32; ControlNet, SDXL, FreeU, PAG, ToMe, DeepCache run on torch)")
    p.add_argument("--trace", action=argparse.BooleanOptionalAction, default=None, help="UNet calls through "
                   "per-shape TorchScript traces (bit-exact, cached; default: on for small UNets on the CPU)")
    p.add_argument("--deepcache", type=int, default=None, metavar="N", help="lossy, opt-in: DeepCache, the full UNet "
                   "every N steps, only its shallow branch in between (e.g. 3; default off)")
    p.add_argument("--prompts", default=None, metavar="FILE", help="one prompt per line, or JSON lines with per-line "
                   "settings, into the --out folder; split across `accelerate launch` processes")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="override architecture detection (default: detected from the file)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .ckpt/.pt pickles (loaded with torch.load(weights_only=True))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate_control.add_arguments(p)
    generate_guidance.add_arguments(p)
    generate_speed.add_arguments(p)
    p.set_defaults(func=run)


def _replay_png(path: str):
    """The Replay of a PNG (generate/replay.py) and its read_png_info; names ignored fields in one warning line."""
    from stablekit.generate.notes import warn
    from stablekit.generate.replay import replay
    from stablekit.metadata import read_png_info

    info = read_png_info(path)
    found = replay(info)
    if found is None:
        raise StablekitError(f"{path} holds no generation parameters to regenerate from")
    if found.ignored:
        warn(f"--from-png {path}: not applied (stablekit does not implement them): {', '.join(found.ignored)}")
    return found, info


def _networks(args, params, info) -> dict:
    """generate() keyword arguments for the LoRAs and embeddings, checked (files found, tags resolved)
    before the model loads; with --from-png, the PNG's own found again (generate/networks_replay.py)."""
    from stablekit.generate.networks import ExtraNetworks, resolve_loras
    from stablekit.generate.networks_replay import replay_networks
    from stablekit.prompts.parse import ParsedPrompt

    if info is not None:
        kwargs = replay_networks(args.from_png, info, params.prompt, args.lora_dir, args.embeddings_dir, args.lora)
    else:
        kwargs = {"loras": args.lora, "lora_dir": args.lora_dir, "embeddings_dir": args.embeddings_dir}
    resolve_loras(ExtraNetworks.take(dict(kwargs)), ParsedPrompt.parse(params.prompt))
    return kwargs


def _check_inputs(args, params, replay) -> None:
    """One-line refusals for inputs the settings or the PNG need and were not given."""
    if replay.mask and not (args.mask or args.outpaint):
        raise StablekitError(f"{args.from_png} was made by inpainting: give its mask with --mask FILE (or the "
                             "--outpaint pads) and its image with --init-image FILE")
    if args.outpaint:
        from stablekit.generate.outpaint import parse_pads

        parse_pads(args.outpaint)
        if args.init_image is None or args.mask:
            raise StablekitError("--outpaint needs --init-image FILE (the image to extend) and no --mask (the border "
                                 "is the mask)")
    if params.denoising_strength is not None and args.init_image is None:
        raise StablekitError(f"denoising strength {params.denoising_strength} means img2img: give --init-image FILE "
                             "(or leave out --strength for txt2img)")
    if args.mask and args.init_image is None:
        raise StablekitError("--mask needs --init-image FILE: the image to inpaint")
    if args.mask:  # the mask size rule against the image as given, before the model loads (generate/mask_size.py)
        from stablekit.generate.mask_size import check_mask_size
        from stablekit.generate.notes import note

        text = check_mask_size(args.mask, args.init_image)
        if text:
            note(text)
    generate_control.hires_from_args(args, replay)  # hires flags checked before the model loads
    if replay.controlnet and not args.control_units:
        raise StablekitError(f"{args.from_png} was made with {len(replay.controlnet)} ControlNet unit(s): give them "
                             "again with --controlnet PATH --control-image FILE ...")
    generate_guidance.options_from_args(args, replay)  # bad values refused before the model loads
    generate_speed.apply(args, {})


def _generate(pipe, params, args, replay, networks: dict) -> list:
    """txt2img, img2img or inpainting, by the inputs given; warns when an input differs from the PNG's."""
    from stablekit.generate.inpaint_options import _mask_array
    from stablekit.generate.notes import warn
    from stablekit.generate.steps import InitImage, InpaintMask

    settings = {k: v for k, v in params.to_dict().items() if k not in ("prompt", "denoising_strength")}
    settings.update(networks)
    settings["controlnets"] = generate_control.control_units(args) or None
    guidance = generate_guidance.options_from_args(args, replay)
    recorded = pipe.model_defaults.get("cfg_rescale")
    if recorded:  # a zero-terminal-SNR model's own CFG rescale, when neither a flag nor the PNG sets one
        if args.cfg_rescale is None and not args.from_png:
            guidance = replace(guidance, cfg_rescale=recorded) if guidance else {"cfg_rescale": recorded}
        elif guidance is None:
            guidance = {"cfg_rescale": 0.0}  # set to 0 (flag or PNG): the model's value must not come back
    settings["guidance"] = guidance
    settings.update(replay.accelerators)  # the PNG's DeepCache / token merging; flags below override
    if args.deepcache is not None:
        settings["deepcache"] = args.deepcache
    generate_speed.apply(args, settings)
    if args.init_image is None:
        return pipe.generate(params.prompt, hires=generate_control.hires_from_args(args, replay), **settings)
    if args.outpaint:  # the padded image at its own size, the border as the mask (generate/outpaint.py)
        from stablekit.generate.outpaint import outpaint_inputs

        init, mask = outpaint_inputs(args.init_image, args.outpaint, pipe.components.vae_scale_factor)
    else:
        init = InitImage.load(args.init_image, params.width, params.height)
        mask = InpaintMask.load(args.mask, init.width, init.height) if args.mask else None
    for name, given, recorded in (("--init-image", init, replay.init_image), ("--mask", mask, replay.mask)):
        if isinstance(recorded, dict) and given is not None and recorded.get("sha256") != given.identity()["sha256"]:
            warn(f"{name} differs from the image the PNG was made with (sha256 of its pixels at "
                 f"{given.width}x{given.height} is not the recorded one); the result will differ")
    settings.update(width=init.width, height=init.height)
    options = _inpaint_options(args, mask, replay)
    if mask is None:
        return pipe.img2img(init, params.prompt, strength=_strength(params, 0.75), **settings)
    if options is not None:  # the mask's grey levels at the image's size: blur and invert read them
        settings["inpaint_options"] = options
        mask = _mask_array(args.mask, init.width, init.height) if args.mask else mask
    return pipe.inpaint(init, mask, params.prompt, strength=_strength(params, 1.0), **settings)


def _inpaint_options(args, mask, replay):
    """InpaintOptions from the inpainting flags over a replayed PNG's own (None when neither has
    any: the plain hard mask)."""
    from stablekit.generate.replay import inpaint_options

    given = dict(mask_blur=args.mask_blur, invert=args.invert_mask or None, fill=args.inpaint_fill,
                 only_masked=args.only_masked or None, padding=args.only_masked_padding, noise_mask=args.noise_mask)
    given = {k: v for k, v in given.items() if v is not None}
    if given and mask is None:
        raise StablekitError("--mask-blur, --invert-mask, --inpaint-fill, --only-masked and --noise-mask need "
                             "--mask FILE (or --outpaint)")
    return inpaint_options(replay.inpaint if mask is not None else None, given)


def _set_trace(pipe, trace: bool | None) -> None:
    """--trace / --no-trace over the default (generate/traced.py); None keeps what stablekit.load chose."""
    from stablekit.generate import traced
    from stablekit.generate.acceleration import cache_file

    if trace is None or pipe.acceleration is None:
        return
    from stablekit.generate.openvino_unet import installed

    if installed(pipe.components.unet) is not None:  # OpenVINO's torch fallbacks: traced or eager
        installed(pipe.components.unet).trace_fallback = pipe.acceleration.trace = trace
        return
    if trace:
        traced.install(pipe.components.unet, cache_file().parent / "traces")
    else:
        traced.uninstall(pipe.components.unet)
    pipe.acceleration.trace = trace


def _strength(params, default: float) -> float:
    return default if params.denoising_strength is None else params.denoising_strength


def run(args) -> int:
    # The output path first: a mistake there must cost no model loading and no compute.
    if args.prompts:
        from stablekit.cli.generate_prompts import run_prompts

        return run_prompts(args)
    outputs = plan_outputs(args.out, args.format, overwrite=args.overwrite, grid=args.grid)

    import stablekit
    from stablekit.generate.params import GenerationParams
    from stablekit.generate.replay import Replay

    replay, info = _replay_png(args.from_png) if args.from_png else (Replay(GenerationParams()), None)
    overrides = {"prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps, "cfg": args.cfg,
                 "sampler": args.sampler, "schedule": args.schedule, "seed": args.seed, "width": args.width,
                 "height": args.height, "batch_size": args.batch_size, "batch_count": args.batch_count,
                 "clip_skip": args.clip_skip, "denoising_strength": args.strength}
    given = {k: v for k, v in overrides.items() if v is not None}
    params = GenerationParams.from_dict({**replay.params.to_dict(), **given})
    # the PNG's own image out of its regenerated batch, unless the run was changed to a new one
    keep = replay.index if args.from_png and not given.keys() & {"seed", "batch_size", "batch_count"} else None
    if args.prompt is None and not args.from_png:
        raise StablekitError("no prompt: give one, e.g. stablekit generate \"a red circle\", or use --from-png FILE")
    check_count(outputs, 1 if keep is not None else params.batch_size * params.batch_count)
    _check_inputs(args, params, replay)
    networks = _networks(args, params, info)
    model = args.model
    if model is None and replay.model.get("source") and Path(replay.model["source"]).exists():
        model = replay.model["source"]
    pipe = stablekit.load(model, device=args.device, dtype=args.dtype, arch=args.arch, allow_pickle=args.allow_pickle,
                          progress=not args.no_progress, compile=args.compile, backend=args.backend)
    _set_trace(pipe, args.trace)
    if args.cfg is None and not args.from_png and "cfg" in pipe.model_defaults:
        params.cfg = pipe.model_defaults["cfg"]  # the model's own default when the user gives none
    if replay.model.get("hash") and pipe.components.hash and replay.model["hash"] != pipe.components.hash:
        print(f"note: the PNG was made with model hash {replay.model['hash']}, this model is {pipe.components.hash}")
    images = _generate(pipe, params, args, replay, networks)
    if keep is not None and keep < len(images):
        images = [images[keep]]
    paths = write_outputs(outputs, images)
    for path in paths:
        print(path)
    if args.save_preprocessed and args.control_units and paths:
        from stablekit.generate.control import control_map_of, save_control_maps

        maps = [control_map_of(u, images[0].width, images[0].height, i)[1] for i, u in enumerate(generate_control.control_units(args))]
        for path in save_control_maps(maps, paths[0]):
            print(path)
    return 0
