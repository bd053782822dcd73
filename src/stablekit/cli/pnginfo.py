"""`stablekit png-info FILE [--json]`: show the generation parameters stored in a PNG, JPEG or WebP."""
from __future__ import annotations

import json

from stablekit.errors import StablekitError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "png-info",
        help="show the generation parameters of an image (PNG, JPEG or WebP; A1111 or stablekit)",
        description="Print the A1111 'parameters' text of a PNG, JPEG or WebP (PNG text chunk or EXIF "
                    "UserComment, as A1111 writes them), or with --json the parsed fields and stablekit's record.",
    )
    parser.add_argument("file", metavar="FILE", help="a .png, .jpg or .webp written by stablekit or the A1111 web UI")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: the parameters text, its parsed fields and the stablekit record")
    parser.set_defaults(func=run)


def run(args) -> int:
    from stablekit.metadata import read_image_info
    from stablekit.metadata.comfy import read_comfy_chunks

    info = read_image_info(args.file)
    comfy = read_comfy_chunks(info.get("text") or {})  # ComfyUI's SaveImage: "prompt" (+ "workflow") chunks
    if args.json:
        out = {k: info[k] for k in ("parameters", "fields", "stablekit")}
        if comfy is not None:
            out["comfyui"] = comfy
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if info["parameters"]:
        print(info["parameters"])
    elif info["stablekit"] is not None:
        print(json.dumps(info["stablekit"], indent=2, ensure_ascii=False))
    elif comfy is not None:
        print(json.dumps(comfy["prompt"], indent=2, ensure_ascii=False))
    else:
        raise StablekitError(f"{args.file} holds no generation parameters (no A1111 'parameters' text, "
                             "no stablekit record, no ComfyUI prompt)")
    return 0
