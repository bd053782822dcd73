"""`stablekit inspect` and `stablekit convert`: model files and folders from the command line.

Stable contract (users script against it):
    stablekit inspect PATH [--json] [--allow-pickle] [--arch ARCH] [--prediction-type epsilon|v_prediction]
    stablekit convert SRC DST [--to diffusers|single-file] [--dtype fp32|fp16|bf16] [--arch ARCH]
                              [--prediction-type epsilon|v_prediction] [--allow-pickle]
"""
from __future__ import annotations

import json

from stablekit.formats import SAVE_FORMATS
from stablekit.formats.archs import ARCHS
from stablekit.formats.assemble import PREDICTION_TYPES
from stablekit.formats.weights import DTYPE_NAMES

# The choices come from the library's tables, so the CLI and the loaders never disagree.
# Dtypes: the library's names without fp64, which no checkpoint uses.
DTYPE_CHOICES = tuple(name for name in DTYPE_NAMES.values() if name != "fp64")


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show a model's architecture, dtype, parameters and hashes",
                              description="Show what a model file or diffusers folder holds, without loading it.")
    p.add_argument("path", help=".safetensors file, .ckpt/.pt (with --allow-pickle) or diffusers folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--allow-pickle", action="store_true", help="read .ckpt/.pt pickles (torch.load weights_only)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="check the model as this architecture (as convert --arch would load it)")
    p.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                   help="override the prediction type (as convert --prediction-type)")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser("convert", help="convert a model between single-file and diffusers layouts",
                              description="Load SRC (file or diffusers folder) and save it as DST.")
    p.add_argument("src", help="model to read: .safetensors file, .ckpt/.pt (with --allow-pickle) or diffusers folder")
    p.add_argument("dst", help="where to write (.safetensors file or folder)")
    p.add_argument("--to", choices=SAVE_FORMATS, default=None,
                   help="output layout (default: single-file for a .safetensors DST, else diffusers)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="cast weights (default: keep the source dtype)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="override architecture detection (default: detected from the file)")
    p.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                   help="override the prediction type (default: from the file or its config)")
    p.add_argument("--allow-pickle", action="store_true", help="read .ckpt/.pt pickles (torch.load weights_only)")
    p.set_defaults(func=run_convert)


def run_inspect(args) -> int:
    from stablekit.errors import StablekitError
    from stablekit.formats import inspect_model

    info = inspect_model(args.path, allow_pickle=args.allow_pickle, arch=args.arch,
                         prediction_type=args.prediction_type)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for line in format_info(info):
            print(line)
    if not info["loadable"]:
        # The report is printed; the exit status and message are the ones convert would give.
        raise StablekitError(info["problem"])
    return 0


def format_info(info: dict) -> list[str]:
    """Human-readable lines for an inspect_model() result."""
    lines = [f"{info['path']}"]
    arch = info["architecture"]
    if arch == "unknown":
        lines.append("  architecture:     unknown")
    else:
        lines.append(f"  architecture:     {arch} ({info.get('prediction_type')})")
    lines.append(f"  loadable:         {'yes' if info['loadable'] else 'no (see the error below)'}")
    lines.append(f"  format:           {info['format']}" + (f" ({info['file_type']})" if "file_type" in info else ""))
    dtypes = ", ".join(f"{k} {v:,}" for k, v in info["dtypes"].items())
    lines.append(f"  dtype:            {info['dtype']}" + (f" ({dtypes})" if len(info["dtypes"]) > 1 else ""))
    for name, count in info["parameters"].items():
        lines.append(f"  {name + ':':<17} {count:>15,} parameters")
    lines.append(f"  {'total:':<17} {info['total_parameters']:>15,} parameters in {info['tensors']:,} tensors")
    lines.append(f"  size:             {info['size_bytes']:,} bytes")
    if "hash" not in info:
        return lines
    lines.append(f"  model hash:       {info['hash']}" + (f" (legacy {info['legacy_hash']})" if "legacy_hash" in info else "")
                 + (f" (of {info['hash_of']})" if "hash_of" in info else ""))
    return lines


def run_convert(args) -> int:
    from stablekit.formats import check_save_target, load_model, save_model

    check_save_target(args.dst, args.to)  # a bad destination fails before the (long) load
    # Load straight into the target dtype when one is given; without --dtype keep the file's own
    # dtypes (dtype=None) so the conversion is bit-exact.
    components = load_model(args.src, arch=args.arch, dtype=args.dtype,
                            allow_pickle=args.allow_pickle, prediction_type=args.prediction_type)
    out = save_model(components, args.dst, to=args.to, dtype=args.dtype)
    print(f"{args.src} ({components.arch}, {components.prediction_type}) -> {out}")
    return 0

