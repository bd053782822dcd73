"""`stablekit workflow run WF.json [--set NODE.INPUT=VALUE]... [--models DIR] [--input DIR] [--out DIR]`:
run a ComfyUI API-format workflow (or a ComfyUI PNG's embedded one) on stablekit's node engine."""
from __future__ import annotations

import json
import sys

DESCRIPTION = """Run a ComfyUI workflow saved with 'Save (API Format)' (or the graph inside a PNG that ComfyUI
or stablekit saved). Checkpoints, LoRAs, VAEs and ControlNets are looked up under --models (checkpoints/,
loras/, vae/, controlnet/); the embedded shapes model is the checkpoint "shapes.safetensors". Images
are written to --out with ComfyUI's names and metadata. See docs/workflows.md."""


def register(subparsers) -> None:
    p = subparsers.add_parser("workflow", help="run ComfyUI API-format workflows (stablekit workflow run WF.json)",
                              description=DESCRIPTION)
    sub = p.add_subparsers(dest="workflow_command", metavar="ACTION", required=True,
                           help="run: run a workflow file and write its images")
    run_p = sub.add_parser("run", help="run a workflow file", description=DESCRIPTION)
    run_p.add_argument("file", metavar="WF", help="API-format workflow .json, or a PNG carrying a ComfyUI 'prompt' chunk")
    run_p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="override an input, e.g. --set 6.text=\"a red star\" --set 3.seed=5 (repeatable)")
    run_p.add_argument("--models", default=None, metavar="DIR",
                       help="models folder with checkpoints/, loras/, vae/, controlnet/ (default: only the embedded model)")
    run_p.add_argument("--input", default=None, metavar="DIR", help="folder LoadImage/LoadImageMask read from")
    run_p.add_argument("--out", default="output", metavar="DIR", help="folder SaveImage writes to (default: output)")
    run_p.add_argument("--noise", choices=("comfyui", "a1111"), default="comfyui",
                       help="sampler start noise: comfyui (ComfyUI's KSampler, default) or a1111 (as stablekit "
                            "generate, so a txt2img graph gives generate's image)")
    run_p.add_argument("--errors-json", action="store_true",
                       help="on a validation error, print ComfyUI's {\"error\", \"node_errors\"} JSON to stdout")
    run_p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from stablekit.nodes import WorkflowInvalid, run_workflow

    def progress(name: str, data: dict) -> None:
        if name == "executing" and data.get("node") is not None:
            print(f"executing node {data['node']}", file=sys.stderr)

    try:
        result = run_workflow(args.file, sets=args.sets, models=args.models, input=args.input, output=args.out,
                              noise=args.noise, listener=progress)
    except WorkflowInvalid as exc:
        if args.errors_json:
            print(json.dumps(exc.response, indent=2, default=str))
        raise
    for image in result.images():
        if image["type"] == "output":
            print(Path(args.out) / image["subfolder"] / image["filename"])
    return 0
