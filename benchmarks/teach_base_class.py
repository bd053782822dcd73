"""The untrained base model on the DreamBooth prompt sets (the reference for the class target).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_base_class.py [--model PATH] [--subject-color orange]

--model as in teach_targets.py (default: the embedded model).
"""
from __future__ import annotations

import argparse

import torch

import stablekit
from stablekit.formats import load_model
from stablekit.generate.pipeline import Pipeline
from stablekit.shapes import teach_eval as te
from stablekit.shapes.judge import Judge


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to judge (default: the embedded model)")
    parser.add_argument("--subject-color", default=te.SUBJECT_COLOR, help="as teach_targets.py --subject-color")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe = Pipeline(load_model(args.model or stablekit.EMBEDDED_MODEL, dtype=torch.float32), progress=False)
    subject, plain = te.dreambooth_prompts(subject_color=args.subject_color)
    judge = Judge.load()
    print("base class", te.judge_prompts(pipe, judge, plain)[0])
    print("base subject", te.judge_prompts(pipe, judge, subject[:8])[0])


if __name__ == "__main__":
    main()
