"""`stablekit` command line: a thin layer that parses flags and calls the library.

Each capability owns one module here exposing `register(subparsers)`; it adds its sub-command(s)
and sets `func` on the parser to a handler taking the parsed args. Handlers raise StablekitError
for user mistakes; main() turns those into one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from stablekit.errors import StablekitError

# Modules under stablekit.cli that contribute sub-commands, in help order.
COMMAND_MODULES = ["generate", "formats", "pnginfo", "shapes", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stablekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"stablekit.cli.{name}")
        except ModuleNotFoundError as exc:  # a capability not written yet
            if exc.name == f"stablekit.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
