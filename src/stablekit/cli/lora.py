"""`stablekit lora inspect` and `stablekit lora merge`: LoRA-like files from the command line.

Stable contract (users script against it):
    stablekit lora inspect FILE [--json]
    stablekit lora merge BASE LORA[:SCALE]... --out FILE [--dtype fp32|fp16|bf16] [--allow-pickle]
"""
from __future__ import annotations

import json

from stablekit.cli.formats import DTYPE_CHOICES


def register(subparsers) -> None:
    p = subparsers.add_parser("lora", help="inspect LoRA files or merge them into a checkpoint",
                              description="LoRA / LoCon / LoHa / LoKr / DoRA files (kohya, LyCORIS, diffusers/PEFT).")
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True,
                            help="inspect: what a LoRA file holds; merge: bake LoRAs into a checkpoint")
    q = sub.add_parser("inspect", help="show a LoRA file's format, architecture, rank, alpha, layers and metadata",
                       description="Show a LoRA file's format, architecture, rank, alpha, layers and metadata.")
    q.add_argument("file", help="LoRA .safetensors file")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=run_inspect)
    m = sub.add_parser("merge", help="bake LoRAs into a model and save it",
                       description="Load BASE, apply each LORA at its SCALE (default 1) and save the result.")
    m.add_argument("base", help="model file or diffusers folder")
    m.add_argument("loras", nargs="+", metavar="LORA[:SCALE]", help="LoRA file, optionally with a scale, e.g. style.safetensors:0.8")
    m.add_argument("--out", required=True, help="output .safetensors file (single file) or folder (diffusers)")
    m.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="cast the saved weights")
    m.add_argument("--allow-pickle", action="store_true", help="read a .ckpt BASE with torch.load(weights_only=True)")
    m.set_defaults(func=run_merge)


def run_inspect(args) -> int:
    from stablekit.formats.lora_keys import inspect_lora

    info = inspect_lora(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for line in format_lora_info(info):
        print(line)
    return 0


def _counts(d: dict) -> str:
    return ", ".join(f"{k} ({v} layers)" if len(d) > 1 else str(k) for k, v in d.items())


def format_lora_info(info: dict) -> list[str]:
    """Human-readable lines for an inspect_lora() result."""
    lines = [info["path"],
             f"  format:    {info['format']} ({', '.join(f'{k} {v}' for k, v in info['kinds'].items())})",
             f"  arch:      {info['arch']}",
             f"  rank:      {_counts(info['ranks'])}",
             f"  alpha:     {_counts(info['alphas'])}",
             f"  layers:    {', '.join(f'{k} {v}' for k, v in info['layers'].items())}",
             f"  hash:      {info['hash']}"]
    if info["unknown_keys"]:
        lines.append(f"  unknown:   {len(info['unknown_keys'])} keys (e.g. {', '.join(info['unknown_keys'][:3])})")
    for key, value in sorted(info["metadata"].items()):
        value = value if len(value) <= 100 else value[:97] + "..."
        lines.append(f"  {key}: {value}".replace("\n", " "))
    return lines


def run_merge(args) -> int:
    from stablekit.adapters import apply_adapters
    from stablekit.formats import load_model, save_model

    components = load_model(args.base, allow_pickle=args.allow_pickle, dtype=None)
    applied = apply_adapters(components, args.loras)
    out = save_model(components, args.out, dtype=args.dtype)
    layers = sum(len(a.report.matched) for a in applied.adapters)
    summary = ", ".join(f"{a.name}:{a.scale:g}" for a in applied.adapters)
    print(f"{args.base} + {summary} ({layers} layers) -> {out}")
    return 0
