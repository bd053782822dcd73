"""Few-step sampling on the embedded model: seconds per image of each setting in one run, turn by turn.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_few_step.py [--n 16] [--json OUT] \
        [--lora LCM-LORA] [--settings stablekit-20,lcm-4-cfg2,...]

Settings (adherence of each is measured by `stablekit shapes eval --sampler S --steps N --cfg C`):
  diffusers-20   diffusers' StableDiffusionPipeline on the model's diffusers folder, its own scheduler,
                 20 steps, CFG 7 (fp32 defaults)
  stablekit-20   stablekit's default: DPM++ 2M, 20 steps, CFG 7 (the spec's 20-step base)
  lcm-4-cfg2     stablekit, LCM sampler, 4 steps, CFG 2 (no distillation)
  lcm-8-cfg1     stablekit, LCM sampler, 8 steps, CFG 1 (one UNet call per step)
  openvino-20, openvino-lcm-4-cfg2   the same two settings with `--backend openvino` (the UNet
                 compiled by OpenVINO; converted or read from the cache before timing)
  lora-lcm-4-cfg1, lora-lcm-2-cfg1   with --lora: an LCM-LoRA patched into a second pipeline once
                 (generation then runs at the base model's speed), LCM sampler, 4 / 2 steps, CFG 1
diffusers-20 always runs (the ratios' base); --settings picks the others (default: all that apply).
The same eval-v1 prompts and seeds for every setting; the settings take turns image by image, so
load drift on a shared machine hits all alike; one untimed warm-up image each first. Each image is
timed in wall seconds and in this process's CPU seconds (one thread: the steadier figure when the
machine is shared); the ratios use CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SETTINGS = {"stablekit-20": dict(steps=20, cfg=7.0), "lcm-4-cfg2": dict(steps=4, cfg=2.0, sampler="LCM"),
            "lcm-8-cfg1": dict(steps=8, cfg=1.0, sampler="LCM")}
OPENVINO_SETTINGS = {"openvino-20": SETTINGS["stablekit-20"], "openvino-lcm-4-cfg2": SETTINGS["lcm-4-cfg2"]}
LORA_SETTINGS = {"lora-lcm-4-cfg1": dict(steps=4, cfg=1.0, sampler="LCM"),
                 "lora-lcm-2-cfg1": dict(steps=2, cfg=1.0, sampler="LCM")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="images per setting")
    ap.add_argument("--json", default=None)
    ap.add_argument("--lora", default="", help="an LCM-LoRA file: adds the lora-* settings")
    ap.add_argument("--settings", default="", help="comma-separated settings besides diffusers-20 (default: all)")
    a = ap.parse_args()
    known = {**SETTINGS, **OPENVINO_SETTINGS, **(LORA_SETTINGS if a.lora else {})}
    chosen = [n.strip() for n in a.settings.split(",") if n.strip()] or list(known)
    if any(n not in known for n in chosen):
        raise SystemExit(f"unknown settings {[n for n in chosen if n not in known]}; use some of {', '.join(known)}")
    torch.set_num_threads(1)
    import stablekit
    from diffusers import StableDiffusionPipeline

    from stablekit.shapes.prompts import load_prompt_set

    items = load_prompt_set("eval-v1")[:a.n]
    pipe = stablekit.load(stablekit.default_model_path(), progress=False)
    lora_pipe = ov_pipe = None
    if any(n in OPENVINO_SETTINGS for n in chosen):
        ov_pipe = stablekit.load(stablekit.default_model_path(), progress=False, backend="openvino")
    if any(n in LORA_SETTINGS for n in chosen):
        from stablekit.adapters import apply_adapters

        lora_pipe = stablekit.load(stablekit.default_model_path(), progress=False)
        apply_adapters(lora_pipe.components, [(a.lora, 1.0)])
    ref = StableDiffusionPipeline.from_pretrained(str(stablekit.EMBEDDED_MODEL.parent / "diffusers"), safety_checker=None,
                                                  torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)

    def run(name: str, prompt: str, seed: int) -> None:
        if name == "diffusers-20":
            g = torch.Generator().manual_seed(seed)
            ref(prompt, num_inference_steps=20, guidance_scale=7.0, height=64, width=64, generator=g, output_type="np")
        elif name in OPENVINO_SETTINGS:
            ov_pipe.generate(prompt, seed=seed, output="np", **OPENVINO_SETTINGS[name])
        elif name in LORA_SETTINGS:
            lora_pipe.generate(prompt, seed=seed, output="np", **LORA_SETTINGS[name])
        else:
            pipe.generate(prompt, seed=seed, output="np", **SETTINGS[name])

    names = ["diffusers-20", *chosen]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        run(name, items[0].prompt, items[0].seed)  # warm: traces, caches, OpenVINO conversion
    for item in items:
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            run(name, item.prompt, item.seed)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = statistics.median(cpu["diffusers-20"])
    result = {n: {"s_per_image": statistics.median(times[n]), "cpu_s_per_image": statistics.median(cpu[n]),
                  "x_diffusers_20": base / statistics.median(cpu[n])} for n in names}
    for n, r in result.items():
        print(f"{n:20s} {r['s_per_image']:.3f} s/image  {r['cpu_s_per_image']:.3f} CPU s/image  "
              f"{r['x_diffusers_20']:.2f}x diffusers-20 (CPU)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "lora": a.lora or None, "results": result}, f, indent=1)


if __name__ == "__main__":
    main()
