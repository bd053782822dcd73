"""`stablekit train lcm` end to end: run.py's path with the LCM strategy and a second (PEFT) file.

    result = run_lcm(data="shapes-data", steps=2000, batch_size=64)
    result["artefact"]   # <out>/lcm.safetensors (kohya); <out>/lcm.peft.safetensors beside it

Why its own entry: train/run.py's `build()` names each method it knows; until it names "lcm" (a
two-line change there, see the issue 12 notes), this module composes the same pieces around it.
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


def run_lcm(*, config=None, dataset=None, components=None, progress: bool = True, hooks=None, **settings) -> dict:
    """Distil an LCM-LoRA; arguments and result as train.run.run (settings: LcmConfig + TrainConfig)."""
    from stablekit.train.config import to_toml
    from stablekit.train.loop import train as train_loop
    from stablekit.train.methods import as_record, resolve
    from stablekit.train.run import _is_main_process, load_components, load_data, native_size, with_eval

    s, tc = resolve("lcm", config, **settings)
    record = as_record("lcm", s, tc)
    components = components if components is not None else load_components(s.model)
    if dataset is None:
        dataset = load_data(s.data, native_size(components))
    strategy = build_lcm(s, components)
    hooks = with_eval("lcm", s, tc, strategy, components, record, hooks)
    result = train_loop(tc, strategy, dataset, progress=progress, record=record, hooks=hooks)
    artefact = None
    if _is_main_process() and not result["stopped"]:
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        artefact = export_lcm(s, strategy, components, out, record)
        (out / f"{s.name}.toml").write_text(to_toml(record))
    return {"artefact": str(artefact) if artefact else None, "config": record, **result}


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
