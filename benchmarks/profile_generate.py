"""Where a 20-step embedded-model image spends its time (cProfile, 5 images, warm, 2 threads).

    .venv/bin/python benchmarks/profile_generate.py

Prints ms per image: total; torch kernels (conv, linear, attention, norms, activations); and
two Python overheads inside diffusers that every pipeline pays or avoids: `ModelMixin.dtype`
(walks every submodule) and `inspect.signature` (called by every attention forward).
"""
from __future__ import annotations

import cProfile
import pstats

import torch

import stablekit

KERNELS = ("conv2d", "linear", "scaled_dot_product_attention", "group_norm", "layer_norm", "silu", "gelu")


def main() -> None:
    pipe = stablekit.load(progress=False)
    n = 5

    def run():
        pipe.generate("a large red star on a blue background", steps=20, cfg=7.0, sampler="Euler",
                      schedule="Normal", seed=1)

    with torch.inference_mode():
        run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            run()
        prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    kernels = sum(v[2] for k, v in stats.items() if k[2].startswith("<built-in method") and any(x in k[2] for x in KERNELS))
    dtype = sum(v[3] for k, v in stats.items() if k[2] == "get_parameter_dtype")
    signature = sum(v[3] for k, v in stats.items() if k[0].endswith("inspect.py") and k[2] == "signature")
    per = 1000 / n
    print(f"total {total * per:.0f} ms/image; torch kernels {kernels * per:.0f} ms ({kernels / total:.0%}); "
          f"ModelMixin.dtype {dtype * per:.1f} ms; inspect.signature {signature * per:.1f} ms")


if __name__ == "__main__":
    main()
