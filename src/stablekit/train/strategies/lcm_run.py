"""The LCM-LoRA method's pieces for train/run.py: its strategy from resolved settings, and its export
(a kohya LoRA plus a PEFT file beside it).

    result = stablekit.train("lcm", data="shapes-data", steps=2000, batch_size=64)
    result["artefact"]   # <out>/lcm.safetensors (kohya); <out>/lcm.peft.safetensors beside it
"""
from __future__ import annotations

import json
from pathlib import Path

from stablekit.train.strategies.lcm import LcmStrategy
from stablekit.train.strategies.sd import SampleSettings


def build_lcm(s, components) -> LcmStrategy:
    """The strategy of resolved LcmConfig settings `s` on loaded `components`."""
    cache_dir = None if not s.cache_dir else "" if s.cache_dir.lower() in ("off", "none", "0") else s.cache_dir
    return LcmStrategy(components=components, cache_dir=cache_dir, rank=s.rank, alpha=s.alpha, dropout=s.dropout,
                       conv=s.conv, cfg_min=s.cfg_min, cfg_max=s.cfg_max, ddim_steps=s.ddim_steps,
                       loss_type=s.loss_type, huber_c=s.huber_c, timestep_scaling=s.timestep_scaling,
                       sample=SampleSettings(list(s.sample_prompts), s.sample_seed, s.sample_steps, s.sample_cfg))


def export_lcm(s, strategy: LcmStrategy, components, out: Path, record: dict) -> Path:
    """<out>/<name>.safetensors (kohya, what A1111 / ComfyUI / our loader read) and
    <out>/<name>.peft.safetensors (diffusers' layout with the alpha metadata)."""
    from stablekit.formats.lora_peft import save_peft_lora
    from stablekit.train.export import export

    path = export("lora", s, strategy, components, out, record)
    meta = {"ss_training_comment": "stablekit LCM-LoRA", "stablekit_config": json.dumps(record)}
    save_peft_lora(out / f"{s.name}.peft.safetensors", strategy.lora_state_dicts()["unet"], alpha=strategy.alpha,
                   rank=strategy.rank, metadata=meta)
    return path
