"""Options of `stablekit shapes pretrain` and how a rerun resolves them against its run folder.

A run records its options in <out>/pretrain.json. Rerunning with the same --out resumes with the
recorded options: a flag given on the command line overrides one (printed), a flag not given keeps
the recorded value, and a key missing from an older run's record takes the value that recipe had
(LEGACY), never a newer default, so resuming a v3 run does not silently become v4. Options of a
stage that has already started cannot change (its checkpoints were made with them), except the
step counts and the thread count.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from stablekit.errors import StablekitError

@dataclass
class PretrainConfig:
    out: str = "runs/shapes-pretrain"
    seed: int = 0
    n_images: int = 100_000
    caption_templates: str = "generated"  # "generated" (shapes.wordings, recipe v3) or a captions.TEMPLATE_SETS name
    vae_steps: int = 3000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_edge_weight: float = 8.0  # reconstruction weight 1 + w x local contrast (shapes.vae_loss); 0 = plain
    vae_random_colours: float = 0.3  # share of autoencoder images recoloured off-palette (recipe v4; v1-v3: 0)
    text_steps: int = 1500
    text_batch: int = 256
    text_lr: float = 1e-3
    text_negatives: int = 6  # hard-negative captions per caption (one attribute changed); 0 = plain CLIP
    text_reworded_negatives: int = 2  # more, each in another generated word order (colours swapped)
    unet_steps: int = 5500
    unet_batch: int = 64
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    unet_noise_schedule: str = "sd"  # "sd" (SD's scaled-linear betas) or "zero-snr" (shapes.schedules)
    default_cfg: float = 7.0  # CFG scale written to the model's record; generate uses it when none is given
    threads: int = 0
    init_from: str = ""  # warm start from a finished run's stages (shapes.pretrain_init)


HELP = {
    "out": "run folder: stages, checkpoints and the exported model (rerun with the same folder to resume)",
    "seed": "seed of the data stream, initial weights and batch order",
    "n_images": "rendered training images (base shapes, captioned)",
    "caption_templates": "caption word orders: generated (clause grammar + the 10 extended templates, recipe v3), "
                         "v1 (model 1's 5) or extended (model 2's 10)",
    "vae_steps": "autoencoder optimizer steps",
    "vae_batch": "autoencoder batch size (images)",
    "vae_lr": "autoencoder learning rate",
    "vae_edge_weight": "weight the autoencoder's loss by 1 + this x the target's local contrast, so outlines "
                       "of small objects count (0 = plain mean)",
    "vae_random_colours": "share of the autoencoder's training images recoloured with random RGB object and "
                          "background colours, so off-palette colours (teal) survive; the captioned data is unchanged",
    "text_steps": "text-encoder contrastive steps",
    "text_batch": "text-encoder batch size (image-caption pairs)",
    "text_lr": "text-encoder learning rate",
    "text_negatives": "hard-negative captions per caption (one attribute changed); 0 = plain CLIP",
    "text_reworded_negatives": "extra hard negatives per caption in other generated word orders (object and "
                               "background colours swapped, else another shape)",
    "unet_steps": "UNet optimizer steps",
    "unet_batch": "UNet batch size (latents)",
    "unet_lr": "UNet learning rate (cosine schedule, EMA 0.999)",
    "caption_dropout": "share of UNet training captions replaced by the empty caption (for CFG)",
    "snr_gamma": "Min-SNR loss weighting gamma (0 = off)",
    "unet_noise_schedule": "UNet noise schedule: sd (SD's betas, leading steps) or zero-snr (betas rescaled to zero "
                           "terminal SNR, trailing steps; use with --snr-gamma 0, since Min-SNR gives the zero-SNR step weight 0)",
    "default_cfg": "CFG scale stored in the exported model's record as its default",
    "threads": "torch threads (0 = torch's default)",
    "init_from": "warm start: a finished pretrain run of the same seed/n_images whose images, autoencoder and "
                 "latents are reused and whose text encoder and UNet are the starting points (empty = from nothing)",
}

# Values of options added after recipe v3, for run records written before they existed.
LEGACY = {"vae_random_colours": 0.0, "unet_noise_schedule": "sd"}

CHOICES = {"unet_noise_schedule": ("sd", "zero-snr")}

# Options that shape each stage's checkpoints; the stage has started once its marker exists.
STAGE_OPTIONS = {
    "data.npz": ("seed", "n_images", "caption_templates", "init_from"),
    "vae": ("vae_batch", "vae_lr", "vae_edge_weight", "vae_random_colours"),
    "text": ("text_batch", "text_lr", "text_negatives", "text_reworded_negatives"),
    "unet": ("unet_batch", "unet_lr", "caption_dropout", "snr_gamma", "unet_noise_schedule"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field; default None so a rerun can tell "given" from "not given"."""
    for f in fields(PretrainConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                            choices=CHOICES.get(f.name), help=f"{HELP.get(f.name, f.name)} (default {f.default})")


def resolve(given: dict) -> tuple[PretrainConfig, list[str]]:
    """The run's config from the flags given (None = not given) and <out>/pretrain.json if present,
    with one line per recorded option the flags change."""
    given = {k: v for k, v in given.items() if v is not None}
    out = Path(given.get("out", PretrainConfig.out))
    record = out / "pretrain.json"
    if not record.exists():
        return PretrainConfig(**given), []
    old = config_from_record(json.loads(record.read_text()), out=str(out))
    changes = [f"{k}: {getattr(old, k)!r} -> {v!r}" for k, v in given.items() if k != "out" and getattr(old, k) != v]
    for marker, names in STAGE_OPTIONS.items():
        fixed = [k for k in names if k in given and getattr(old, k) != given[k]]
        if fixed and (out / marker).exists():
            raise StablekitError(f"{out}: the {marker.split('.')[0]} stage already ran with "
                                 + ", ".join(f"--{k.replace('_', '-')} {getattr(old, k)}" for k in fixed)
                                 + "; drop those flags to resume, or use a new --out")
    return PretrainConfig(**{**asdict(old), **given}), changes


def config_from_record(record: dict, **override) -> PretrainConfig:
    """A PretrainConfig from a pretrain.json; keys it lacks take their LEGACY (pre-v4) values."""
    known = {f.name for f in fields(PretrainConfig)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise StablekitError(f"pretrain.json has unknown options {', '.join(unknown)} (written by a newer "
                             "stablekit?); use that version or a new --out")
    return PretrainConfig(**{**LEGACY, **record, **override})
