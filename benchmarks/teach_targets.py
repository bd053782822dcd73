"""Measure a teaching method against its shapes-world target: render data, train with
`stablekit train METHOD` on the embedded model, generate the fixed prompt set, judge it.

    nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_targets.py textual-inversion
    ... benchmarks/teach_targets.py dreambooth [--no-prior] [--name db-noprior]
    ... benchmarks/teach_targets.py lora
    ... benchmarks/teach_targets.py finetune [--base-limit 48]
    ... benchmarks/teach_targets.py METHOD --steps 300 --lr 2e-3     # any other flag goes to `stablekit train`
    ... benchmarks/teach_targets.py METHOD --skip-train              # re-judge the last artefact
    ... benchmarks/teach_targets.py METHOD --model PATH              # teach another model than the embedded one
    ... benchmarks/teach_targets.py textual-inversion --skip-train --double-extra   # the pre-session-13 spelling

Without extra flags the method's default recipe (train/methods.py) is measured. Writes
OUT/NAME-report.json and a sample grid docs/reports/teach/NAME.png (prompt set order, 8 per row).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import stablekit
from stablekit.formats import load_model
from stablekit.generate.pipeline import Pipeline
from stablekit.shapes import teach_eval as te
from stablekit.shapes.judge import Judge

GRIDS = Path(__file__).resolve().parents[1] / "docs" / "reports" / "teach"


def base_model(args):
    """The model taught: --model, or the embedded one."""
    return load_model(args.model or stablekit.EMBEDDED_MODEL, dtype=torch.float32)


def doubled_spelling(tokenizer) -> str:
    """The token as evaluation spelled it before session 13 (comparison only, --double-extra): the
    name followed by its other tokens twice, NAME NAME_1..NAME_{n-1} NAME_1..NAME_{n-1} (8 vectors: 15
    tokens). That is what the prompt encoder made of "NAME NAME_1 ..." text until commit 4251915."""
    from stablekit.prompts.embedding_tokens import embedding_spellings

    spelled = embedding_spellings(tokenizer).get(te.TOKEN, [te.TOKEN])
    return " ".join([*spelled, *spelled[1:]])


def eval_ti(artefact: Path, args, judge) -> tuple[dict, list]:
    from stablekit.adapters.embeddings import add_embedding
    from stablekit.formats.embeddings_a1111 import load_embedding
    from stablekit.prompts.embedding_tokens import embedding_token_spelling

    c = base_model(args)
    add_embedding(c, te.TOKEN, load_embedding(artefact)["vectors"])
    prompts = te.ti_prompts(args.prompts)  # the token by its name: the prompt encoder spells it as training did
    if args.double_extra:
        prompts = [(p.replace(te.TOKEN, doubled_spelling(c.tokenizer)), s, a) for p, s, a in prompts]
    spelling = [{"prompt": p, "seed": s, "embedding_tokens": embedding_token_spelling(p, c.tokenizer)}
                for p, s, _ in prompts]
    figures, images = te.judge_prompts(Pipeline(c, progress=False), judge, prompts, by="color")
    return {"hexagon": figures["shape"], "color": figures["color"], "both": figures["all"], "n": figures["n"],
            "judged_shape": figures["breakdown"]["judged"]["shape"], "double_extra": args.double_extra,
            "embedding_tokens_per_prompt": sorted({len(r["embedding_tokens"]) for r in spelling}),
            "spelling": spelling}, images


def is_lora(artefact: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(artefact), "pt") as f:
        return any(k.startswith("lora_") for k in f.keys())


def eval_dreambooth(artefact: Path, args, judge) -> tuple[dict, list]:
    # DreamBooth-LoRA (--lora) writes a kohya LoRA: applied to the base model at scale 1
    lora = is_lora(artefact)
    pipe = Pipeline(base_model(args) if lora else load_model(artefact, dtype=torch.float32), progress=False)
    settings = {"loras": [(str(artefact), 1.0)]} if lora else {}
    subject, plain = te.dreambooth_prompts(subject_color=args.subject_color)
    s, s_images = te.judge_prompts(pipe, judge, subject, by="shape", **settings)
    p, p_images = te.judge_prompts(pipe, judge, plain, by="color", **settings)
    return {"subject": s["all"], f"subject_{args.subject_color}": s["color"], "subject_diamond": s["shape"], "class": p["all"],
            "n_subject": s["n"], "n_class": p["n"], "subject_judged": s["breakdown"]["judged"],
            "class_judged": p["breakdown"]["judged"]}, s_images[:8] + p_images[:16]


def eval_lora(artefact: Path, args, judge) -> tuple[dict, list]:
    import numpy as np

    c = base_model(args)
    pipe = Pipeline(c, progress=False)
    prompts = te.shape_prompts(args.prompts or 32, seed=11, first_seed=2000, shapes=te.BASE_SHAPES, hollow=True)
    on, images = te.judge_prompts(pipe, judge, prompts, by="shape", loras=[(str(artefact), 1.0)])
    base_plain = te.generate(pipe, prompts[:4], output="np")
    zero = te.generate(pipe, prompts[:4], output="np", loras=[(str(artefact), 0.0)])
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(base_plain, zero))
    unet_bytes = sum(p.numel() * p.element_size() for p in c.unet.parameters())
    base_hollow = te.score(judge(te.generate(pipe, prompts[:8])), [a for _, _, a in prompts[:8]])["hollow"]
    return {"hollow": on["hollow"], "shape": on["shape"], "color": on.get("color"), "adherence": on["adherence"],
            "hollow_without_lora_first8": base_hollow, "scale0_max_diff": diff,
            "size_ratio": artefact.stat().st_size / unet_bytes, "file_bytes": artefact.stat().st_size,
            "unet_fp32_bytes": unet_bytes, "n": on["n"], "breakdown": on["breakdown"]}, images


def eval_finetune(artefact: Path, args, judge) -> tuple[dict, list]:
    from stablekit.shapes.prompts import load_prompt_set

    hexagons = te.shape_prompts(args.prompts or 32, seed=13, first_seed=3000, shapes=("hexagon",))
    base_items = load_prompt_set("eval-v1")[:args.base_limit]
    base_prompts = [(it.prompt, it.seed, dict(it.named)) for it in base_items]
    tuned = Pipeline(load_model(artefact, dtype=torch.float32), progress=False)
    h, images = te.judge_prompts(tuned, judge, hexagons, by="size")
    after, _ = te.judge_prompts(tuned, judge, base_prompts)
    before, _ = te.judge_prompts(Pipeline(base_model(args), progress=False), judge, base_prompts)
    return {"hexagon_adherence": h["adherence"], "hexagon_shape": h["shape"], "base_before": before["adherence"],
            "base_after": after["adherence"], "base_drop": before["adherence"] - after["adherence"],
            "n_hexagon": h["n"], "n_base": len(base_prompts), "breakdown": h["breakdown"]}, images


EVALUATORS = {"textual-inversion": eval_ti, "dreambooth": eval_dreambooth, "lora": eval_lora,
              "finetune": eval_finetune}
METHOD_FLAGS = {
    "textual-inversion": ["--token", te.TOKEN],
    "dreambooth": ["--instance-prompt", te.INSTANCE_PROMPT],
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=te.METHODS)
    parser.add_argument("--out", default="runs/teach", help="data, runs and reports go here")
    parser.add_argument("--name", default="", help="run name (default: the method)")
    parser.add_argument("--no-prior", action="store_true", help="DreamBooth without prior preservation")
    parser.add_argument("--prompts", type=int, default=0, help="limit the prompt set (0: the method's full set)")
    parser.add_argument("--base-limit", type=int, default=48, help="finetune: eval-v1 prompts for the base drop")
    parser.add_argument("--subject-color", default=te.SUBJECT_COLOR,
                        help="DreamBooth subject colour (default teal, the target; a base colour is a diagnostic)")
    parser.add_argument("--lora-images", type=int, default=te.LORA_IMAGES, help="LoRA: outline images rendered")
    parser.add_argument("--skip-train", action="store_true", help="judge the existing artefact")
    parser.add_argument("--model", default=None, help="model to teach (default: the embedded model)")
    parser.add_argument("--double-extra", action="store_true",
                        help="textual inversion: evaluate with the old doubled spelling (NAME NAME_1..n-1 twice), "
                             "for comparison with figures before session 13; report and grid get '-double-extra'")
    args, extra = parser.parse_known_args(argv)
    if args.double_extra and args.method != "textual-inversion":
        parser.error(f"--double-extra is a textual-inversion evaluation option (method: {args.method})")
    torch.set_num_threads(1)
    name = args.name or args.method
    label = name + ("-double-extra" if args.double_extra else "")  # report and grid; the artefact stays NAME
    out = Path(args.out)
    data = te.render_method_data(args.method, out / "data", args.subject_color, args.lora_images)["data"]
    flags = list(METHOD_FLAGS.get(args.method, [])) + (["--model", args.model] if args.model else [])
    if args.method == "dreambooth" and not args.no_prior:
        flags += ["--class-prompt", te.CLASS_PROMPT]
    seconds = None
    if args.skip_train and (out / f"{name}-report.json").exists():  # re-judging keeps the training time
        seconds = json.loads((out / f"{name}-report.json").read_text()).get("train_seconds")
    if not args.skip_train:
        seconds = te.train_cli(args.method, data, out / "runs", name, flags + extra)
    artefact = out / "runs" / f"{name}.safetensors"
    t = time.time()
    figures, images = EVALUATORS[args.method](artefact, args, Judge.load())
    config = (out / "runs" / f"{name}.toml").read_text()
    report = {"method": args.method, "name": label, "subject_color": args.subject_color, "figures": figures,
              "met": te.met(args.method, figures),
              "targets": te.TARGETS[args.method], "train_seconds": seconds, "eval_seconds": time.time() - t,
              "extra_flags": flags + extra, "command": " ".join(["benchmarks/teach_targets.py", *(argv or sys.argv[1:])]),
              "config": config}
    te.write_report(out / f"{label}-report.json", report)
    GRIDS.mkdir(parents=True, exist_ok=True)
    te.grid(images[:32]).save(GRIDS / f"{label}.png")
    shown = {**report, "figures": {k: v for k, v in figures.items() if k != "spelling"}}  # the json keeps it
    print(json.dumps({k: v for k, v in shown.items() if k != "config"}, indent=2))
    return report


if __name__ == "__main__":
    main()
