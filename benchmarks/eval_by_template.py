"""Per-template breakdown of a `stablekit shapes eval` report: adherence, colour and background
accuracy, colours swapped, abstentions, by the template each prompt was worded with.

    .venv/bin/python benchmarks/eval_by_template.py runs/eval-v2/report.json [more reports...]

Prompt i of a set uses template i mod 5 (shapes.prompts.build_prompt_set); eval-v2's templates are
EVAL_V2_TEMPLATES, eval-v1's the five training templates of captions.TEMPLATES.
"""
from __future__ import annotations

import argparse
import collections
import json


def by_template(report: dict) -> dict:
    from stablekit.shapes.captions import TEMPLATES
    from stablekit.shapes.prompts import EVAL_V2_TEMPLATES

    names = [f.__name__ for f in (EVAL_V2_TEMPLATES if report.get("prompt_set") == "eval-v2" else TEMPLATES)]
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for item in report["items"]:
        row, named, judged = rows[names[item["id"] % len(names)]], item["named"], item["judged"] or {}
        row["adherence"].append(item["score"])
        for attr in ("shape", "color", "background"):
            if attr in named:
                row[attr].append(judged.get(attr) == named[attr])
        if "color" in named and "background" in named:
            row["swapped"].append(judged.get("color") == named["background"] and judged.get("background") == named["color"])
        row["abstained"].append(bool(item["abstained"] and item["abstained"] != "shape unrecognised"))
    return {name: {k: (sum(v) if k == "abstained" else round(sum(v) / len(v), 3)) for k, v in row.items()}
            for name, row in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+")
    args = ap.parse_args()
    print("| report | template | adherence | shape | colour | background | colours swapped | bg-colour / no object |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.reports:
        for name, r in by_template(json.loads(open(path).read())).items():
            print(f"| {path} | {name} | {r['adherence']:.3f} | {r['shape']:.3f} | {r.get('color', 0):.3f} "
                  f"| {r.get('background', 0):.3f} | {r.get('swapped', 0):.3f} | {r['abstained']} |")


if __name__ == "__main__":
    main()
