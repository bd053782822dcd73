"""`stablekit` command line: a thin layer that parses flags and calls the library.

Each capability owns one module here exposing `register(subparsers)`; it adds its sub-command(s)
and sets `func` on the parser to a handler taking the parsed args. Handlers raise StablekitError
for user mistakes; main() turns those into one line on stderr and exit status 2. Flag mistakes
(`--cfg high`) are one line too, with a pointer to the command's --help.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from stablekit import __version__
from stablekit.errors import StablekitError

# Modules under stablekit.cli that contribute sub-commands, in help order. Every one must import:
# a module that fails to is a broken install or a bug, and is reported, never skipped.
COMMAND_MODULES = ["generate", "formats", "lora", "pnginfo", "data", "train", "eval", "tune", "workflow", "shapes", "serve"]
DESCRIPTION = ("Stable Diffusion in one offline toolkit: generate images (txt2img, img2img, inpainting), "
               "inspect and convert models and LoRAs, read images' generation parameters, prepare and caption datasets, train (fine-tune, LoRA, textual inversion, DreamBooth), evaluate (FID, KID, CLIP score, held-out loss), run ComfyUI workflows, and the shapes world.")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to read more, not the whole usage block."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="stablekit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"stablekit {__version__}",
                        help="print stablekit's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",  # sub-parsers inherit ArgumentParser
                                help="run 'stablekit COMMAND --help' for a command's flags")
    for name in COMMAND_MODULES:
        importlib.import_module(f"stablekit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a flag error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except StablekitError as exc:
        print(f"stablekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stablekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `stablekit png-info x.png | head`
        sys.stderr.close()
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
