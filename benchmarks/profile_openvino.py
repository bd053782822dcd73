"""Where an embedded-model image spends its CPU time with `--backend openvino`: UNet, VAE decode, the rest.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/profile_openvino.py [--images 3]

One warm image first (it converts the UNet, or loads it from the cache), then `time.process_time()`
summed around the OpenVINO UNet forward (and, inside it, OpenVINO's `infer` alone: the rest is the
Python around it), the text encoder and `vae.decode` over N images of 20 Euler steps, CFG 7, 1 thread.
`--perf-count` also lists the UNet's OpenVINO kernels by type (PERF_COUNT, its own compile of the
cached model; those are per-node wall times, so on a shared machine read the shares, not the ms).
"""
from __future__ import annotations

import argparse
import time

import torch

import stablekit
from stablekit.generate.openvino_unet import OpenVINOForward, installed

PROMPT = "a large red star on a blue background"
SETTINGS = dict(negative_prompt="", steps=20, cfg=7.0, sampler="Euler", schedule="Normal", seed=1, output="np")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--perf-count", action="store_true", help="also OpenVINO's per-kernel profile of the UNet")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = stablekit.load(None, progress=False, backend="openvino")
    pipe.generate(PROMPT, **SETTINGS)
    spent = {"unet": 0.0, "vae decode": 0.0, "text encoder": 0.0}
    inside = {"infer": 0.0}

    def timed(name, fn):
        def call(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.process_time() - c0
        return call

    OpenVINOForward.__call__ = timed("unet", OpenVINOForward.__call__)
    pipe.components.vae.decode = timed("vae decode", pipe.components.vae.decode)
    encoder = pipe.components.text_encoder
    encoder.forward = timed("text encoder", encoder.forward)
    fwd = installed(pipe.components.unet)
    fwd.compiled = {k: _Timed(r, inside) if r is not None else r for k, r in fwd.compiled.items()}
    c0 = time.process_time()
    with torch.inference_mode():
        for _ in range(args.images):
            pipe.generate(PROMPT, **SETTINGS)
    total = (time.process_time() - c0) / args.images
    parts = {k: v / args.images for k, v in spent.items()}
    print(f"{pipe.acceleration.describe()}\nCPU s per image: {total:.3f} = "
          + " + ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" + other {total - sum(parts.values()):.3f}"
          + f"\n  of the UNet: OpenVINO infer {inside['infer'] / args.images:.3f}, Python around it "
            f"{(spent['unet'] - inside['infer']) / args.images:.3f} ({fwd.stats['openvino']} calls)")
    if args.perf_count:
        kernels(fwd)


class _Timed:
    """An infer request whose `infer` adds its CPU seconds to spent["infer"]."""

    def __init__(self, request, spent):
        self.request, self.spent = request, spent

    def infer(self, *a, **k):
        c0 = time.process_time()
        try:
            return self.request.infer(*a, **k)
        finally:
            self.spent["infer"] += time.process_time() - c0

    def __getattr__(self, name):
        return getattr(self.request, name)


def kernels(fwd, calls: int = 20) -> None:
    """OpenVINO's PERF_COUNT per node type over `calls` calls of the cached UNet model."""
    import collections

    import numpy as np
    import openvino as ov

    from stablekit.generate.openvino_unet import compile_config

    key, request = next((k, r) for k, r in fwd.compiled.items() if r is not None)
    model = request.get_compiled_model()
    inputs = [np.random.default_rng(0).standard_normal(tuple(i.get_shape())).astype(np.float32) for i in model.inputs]
    xml = fwd._entry(key) / "unet.xml"
    config = {**compile_config(fwd.precision), "PERF_COUNT": True}
    probe = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()
    by_type = collections.Counter()
    for i in range(calls + 3):
        probe.infer(inputs, share_inputs=True)
        if i >= 3:
            for p in probe.profiling_info:
                by_type[p.node_type] += p.cpu_time.total_seconds() / calls
    total = sum(by_type.values())
    print(f"OpenVINO kernels per UNet call (PERF_COUNT, per-node wall {total * 1e3:.1f} ms):")
    for kind, sec in by_type.most_common(8):
        print(f"  {kind:16s} {sec * 1e3:6.2f} ms  {sec / total:5.1%}")


if __name__ == "__main__":
    main()
