"""Run a training method end to end: load the model and data, train on the one loop, export.

    import stablekit.train
    result = stablekit.train("lora", data="shapes/outline", steps=800, lr=1e-4, rank=4)
    result["artefact"]   # runs/train/lora.safetensors, a kohya-format LoRA

Outputs (issue 8's CLI contract): <out>/<name>.safetensors is a kohya LoRA (lora, dreambooth
--lora), an A1111 embedding (textual-inversion) or a single-file checkpoint with a diffusers
folder <out>/<name>/ beside it (finetune, dreambooth); <out>/<name>.toml holds the resolved
configuration, and <out>/<name>-training/ the checkpoints (each with its config), samples and logs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.train.loop import train as train_loop
from stablekit.train.methods import as_record, resolve, uncaptioned_caption
from stablekit.train.strategies.sd import SampleSettings


def run(method: str, *, config=None, dataset=None, components=None, progress: bool = True, hooks=None,
        **settings) -> dict:
    """Train `method` ("finetune", "lora", "textual-inversion", "dreambooth", "controlnet", "inpainting",
    "lcm") and export the result.

    config: a TOML file of settings; settings: any method or loop setting (they win over the file).
    dataset: an object implementing the training-data contract instead of `data`; components: a
    loaded model instead of `model`; hooks: a loop.TrainHooks (progress, eval, cancel). Returns
    {"artefact", "config", "run_dir", "step", "history", "stopped"}; a stopped run exports nothing
    (run it again to resume from the checkpoint written when it stopped).
    """
    from stablekit.train.config import to_toml
    from stablekit.train.export import export

    s, tc = resolve(method, config, **settings)
    method = method.replace("_", "-")
    record = as_record(method, s, tc)
    if components is None:
        from stablekit.train.precision import freeze_loaded, load_dtypes

        components = load_components(s.model, load_dtypes(method, s, tc.mixed_precision, tc.device))
        freeze_loaded(components)
    if dataset is None:
        dataset = load_conditioning_data(s, components) if method == "controlnet" else \
            load_sized_data(s, components) if method == "inpainting" else \
            load_data(s.data, native_size(components), uncaptioned_caption(method, s))
    strategy, dataset = build(method, s, tc, components, dataset)
    hooks = with_eval(method, s, tc, strategy, components, record, hooks)
    result = train_loop(tc, strategy, dataset, progress=progress, record=record, hooks=hooks)
    out = Path(s.out)
    artefact = None
    if _is_main_process() and not result["stopped"]:
        out.mkdir(parents=True, exist_ok=True)
        if method == "lcm":
            from stablekit.train.strategies.lcm_run import export_lcm

            artefact = export_lcm(s, strategy, components, out, record)
        else:
            artefact = export(method, s, strategy, components, out, record)
        (out / f"{s.name}.toml").write_text(to_toml(record))
    return {"artefact": str(artefact) if artefact else None, "config": record, **result}


def with_eval(method: str, s, tc, strategy, components, record: dict, hooks=None):
    """`hooks` plus evaluation every tc.eval_every steps (and keep-best) when asked for.

    The one call from train/ up into evaluate/: imported lazily and only when eval_every > 0,
    so training without evaluation never loads the evaluation code.
    """
    if not tc.eval_every:
        return hooks
    from stablekit.evaluate import in_training
    from stablekit.train.loop import TrainHooks

    settings = in_training.settings_from(tc)
    # a textual-inversion token is used by its name: the prompt encoder spells it as training did
    evaluation = in_training.build_evaluation(settings, shapes=components.arch == "shapes")
    save_best = None
    if settings.keep_best:
        def save_best():
            return export_best(method, s, strategy, components, record)
    hook = in_training.EvalHook(settings, evaluation, tc.out_dir, tc.steps, save_best)
    inner = hooks.on_step if hooks is not None else None

    def on_step(step: int, row: dict, strat) -> None:
        if inner is not None:
            inner(step, row, strat)
        hook(step, row, strat)

    return TrainHooks(on_step=on_step, should_stop=hooks.should_stop if hooks is not None else None)


def export_best(method: str, s, strategy, components, record: dict) -> Path:
    """Export the current weights as <out>/<name>-best.* (written aside, then moved into place), with
    a DreamBooth-LoRA's identifier embeddings as <out>/<word>-best.safetensors beside it."""
    import shutil

    from stablekit.evaluate.in_training import move_into_place
    from stablekit.train.export import export

    out = Path(s.out)
    tmp = out / f".{s.name}-best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    export(method, s, strategy, components, tmp, {**record, "best_of_run": True}, suffix="-best")
    move_into_place(tmp, out)
    return out / f"{s.name}-best.safetensors"


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process


def load_components(model: str, dtypes: dict | None = None):
    """The model in fp32, except the components `dtypes` names (precision.load_dtypes)."""
    from stablekit import default_model_path
    from stablekit.formats import load_model

    return load_model(model or default_model_path(), dtype=torch.float32, component_dtypes=dtypes)


def native_size(components) -> int:
    """The model's image side in pixels (64 for the embedded model, 512 for SD 1.x, 1024 for SDXL)."""
    return int(components.unet.config.sample_size) * components.vae_scale_factor


def load_data(data: str, resolution: int = 512, uncaptioned: str | None = None):
    """The dataset at `data`, at the model's `resolution` unless a kohya TOML sets its own.
    `uncaptioned`: the caption of images without a caption file (None: they are an error).

    Why: the data layer's default is SD's 512; a 64-px model trained on 512-px upscales ran 64x
    slower and learned a scale it never generates at (the first textual-inversion runs).
    """
    if not data:
        raise StablekitError("no training data: give --data PATH (a folder, metadata.jsonl, CSV or kohya dataset TOML)")
    try:
        from stablekit.data import DatasetConfig, load_dataset
        from stablekit.data.config import SubsetConfig
    except ImportError:
        raise StablekitError("stablekit.data is not available in this installation; pass a dataset object "
                             "to stablekit.train.run(..., dataset=...)") from None
    # bucket bounds scale with the size (kohya's 256..1024 in steps of 64 are for 512 px)
    config = DatasetConfig(resolution=resolution, min_bucket_reso=min(256, resolution // 2),
                           max_bucket_reso=max(1024, resolution * 2), bucket_reso_steps=min(64, max(8, resolution // 8)),
                           subset=SubsetConfig(class_tokens=uncaptioned))
    return load_dataset(data, config)


def load_sized_data(s, components):
    """The data at `s.resolution` (0: the model's native size), for methods with that setting."""
    from stablekit.data import load_dataset
    from stablekit.data.config import DatasetConfig

    if not s.data:
        raise StablekitError("no training data: give --data PATH (a folder, metadata.jsonl, CSV or kohya dataset TOML)")
    return load_dataset(s.data, DatasetConfig(resolution=s.resolution or native_size(components)))


def load_conditioning_data(s, components):
    from stablekit.data.conditioning import load_conditioning_dataset

    if not s.data:
        raise StablekitError("no training data: give --data (a folder with a conditioning/ subfolder, or a kohya TOML)")
    return load_conditioning_dataset(s.data, s.resolution or native_size(components), s.conditioning_dir,
                                     s.caption_dropout)


def build(method: str, s, tc, components, dataset):
    """(strategy, dataset) for a method; DreamBooth wraps the dataset with its class images."""
    from stablekit.train.strategies.finetune import FinetuneStrategy
    from stablekit.train.strategies.lora import LoraStrategy
    from stablekit.train.strategies.textual_inversion import TextualInversionStrategy

    # the strategies' cache_dir: None = the default folder, "" = off (encoder_cache.cache_root)
    cache_dir = None if not s.cache_dir else "" if s.cache_dir.lower() in ("off", "none", "0") else s.cache_dir
    common = dict(components=components, snr_gamma=s.snr_gamma, noise_offset=s.noise_offset,
                  prior_loss_weight=s.prior_loss_weight, cache_dir=cache_dir,
                  sample=SampleSettings(list(s.sample_prompts), s.sample_seed, s.sample_steps, s.sample_cfg))
    lora = dict(rank=getattr(s, "rank", 8), alpha=getattr(s, "alpha", 8.0), dropout=getattr(s, "dropout", 0.0),
                conv=getattr(s, "conv", False), train_text_encoder=getattr(s, "train_text_encoder", False))
    if method == "finetune":
        return FinetuneStrategy(**common, train_text_encoder=s.train_text_encoder), dataset
    if method == "lora":
        return LoraStrategy(**common, **lora), dataset
    if method == "controlnet":
        from stablekit.train.strategies.controlnet import ControlNetStrategy, read_conditions

        return ControlNetStrategy(**common, sample_conditions=read_conditions(s.sample_conditions)), dataset
    if method == "inpainting":
        from stablekit.train.strategies.inpainting import InpaintingStrategy

        return InpaintingStrategy(**common, train_text_encoder=s.train_text_encoder), dataset
    if method == "textual-inversion":
        return TextualInversionStrategy(**common, token=s.token, init_word=s.init_word, vectors=s.vectors,
                                        templates=tuple(s.caption_templates)), dataset
    if method == "lcm":
        from stablekit.train.strategies.lcm_run import build_lcm

        return build_lcm(s, components), dataset
    dataset = dreambooth_data(s, tc, components, dataset)
    if s.identifier_lr > 0:  # pivotal tuning: the identifier's rows train too (train/pivotal.py)
        from stablekit.train.pivotal import PivotalFinetuneStrategy, PivotalLoraStrategy

        pivotal = dict(identifier_lr=s.identifier_lr, instance_prompt=s.instance_prompt, class_prompt=s.class_prompt)
        if s.lora:
            return PivotalLoraStrategy(**common, **lora, **pivotal), dataset
        return PivotalFinetuneStrategy(**common, train_text_encoder=s.train_text_encoder, **pivotal), dataset
    if s.lora:
        return LoraStrategy(**common, **lora, name="dreambooth-lora"), dataset
    return FinetuneStrategy(**common, train_text_encoder=s.train_text_encoder, name="dreambooth"), dataset


def dreambooth_data(s, tc, components, instance):
    from stablekit.train.dreambooth import PriorPreservationData, class_images, load_image_folder

    if len(instance) == 0:
        raise StablekitError("the DreamBooth instance dataset is empty; give --data with 3-5 images of the subject")
    if not s.class_prompt or s.prior_loss_weight == 0:
        return PriorPreservationData(instance, s.instance_prompt, None, s.class_prompt)
    size = _first_size(instance)
    if s.class_data:
        folder = Path(s.class_data)
    else:
        folder = class_images(components, s.class_prompt, s.num_class_images, size, Path(s.out) / "class-images",
                              seed=tc.seed, steps=s.class_steps, cfg=s.class_cfg)
    return PriorPreservationData(instance, s.instance_prompt, load_image_folder(folder, size), s.class_prompt)


def _first_size(dataset) -> tuple[int, int]:
    import numpy as np

    return tuple(dataset.get_batch(np.array([0]))["pixels"].shape[-2:])
