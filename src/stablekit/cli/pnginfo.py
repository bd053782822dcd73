"""`stablekit png-info FILE [--json]`: show the generation parameters stored in a PNG."""
from __future__ import annotations

import json

from stablekit.errors import StablekitError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "png-info",
        help="show the generation parameters of a PNG (A1111 or stablekit)",
        description="Print the A1111 'parameters' text of a PNG, or with --json the parsed fields and stablekit's record.",
    )
    parser.add_argument("file", metavar="FILE", help="a PNG written by stablekit or the A1111 web UI")
    parser.add_argument("--json", action="store_true", help="print JSON: parameters text, parsed fields, stablekit record")
    parser.set_defaults(func=run)


def run(args) -> int:
    from stablekit.metadata import read_png_info

    info = read_png_info(args.file)
    if args.json:
        out = {k: info[k] for k in ("parameters", "fields", "stablekit")}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if info["parameters"]:
        print(info["parameters"])
    elif info["stablekit"] is not None:
        print(json.dumps(info["stablekit"], indent=2, ensure_ascii=False))
    else:
        raise StablekitError(f"{args.file} holds no generation parameters (no 'parameters' or 'stablekit' text chunk)")
    return 0
