"""`stablekit train METHOD`: fine-tune, LoRA, textual inversion or DreamBooth a model on your images.

    stablekit train lora --data DIR --out runs --name outline --steps 800 --lr 1e-4 --rank 4
    stablekit train textual-inversion --data DIR --out runs --token '<hexagon>' --init-word shape --vectors 2
    stablekit train dreambooth --data DIR --out runs --instance-prompt 'a sks square' --class-prompt 'a square' [--lora]
    stablekit train controlnet --data DIR --out runs --steps 2000     (DIR/conditioning/ holds the condition images)
    stablekit train inpainting --data DIR --out runs --steps 2000     (a 9-channel inpainting model)
    stablekit train lcm --data DIR --out runs --steps 2000            (LCM-LoRA: 4-8 step generation, --sampler LCM)
    stablekit train finetune --config run.toml --steps 2000        (every TOML key is also a flag)
    stablekit train lora --print-config                            (the resolved settings, as TOML)
    accelerate launch -m stablekit train ...                       (data-parallel, same result per global batch)
"""
from __future__ import annotations

import argparse
import dataclasses

from stablekit.train.methods import METHODS, as_record, resolve, setting_fields

_HELP = {
    "data": "a folder of images + .txt captions (textual-inversion and dreambooth: captions optional), a "
            "metadata.jsonl, a CSV (image_path,caption) or a kohya dataset TOML",
    "out": "output folder: the artefact is OUT/NAME.safetensors",
    "name": "artefact name (default: the method; textual inversion: the token)",
    "model": "model file or diffusers folder (default: the embedded shapes model)",
    "steps": "optimizer updates", "lr": "learning rate",
    "text_encoder_lr": "learning rate of the text encoder(s) when they train (0: the same as lr; kohya's text_encoder_lr)",
    "batch_size": "images per step and process",
    "token": "textual inversion: the new word, e.g. '<hexagon>'", "init_word": "its starting embedding, e.g. 'shape'",
    "vectors": "embedding vectors per token",
    "learnable_property": "textual inversion: object or style, the caption templates of images without a caption file",
    "caption_templates": "textual inversion: captions of images without a caption file, '{}' = the token "
                         "(default: the learnable property's templates)",
    "instance_prompt": "DreamBooth: caption of the subject images",
    "class_prompt": "DreamBooth: class caption for prior preservation", "class_data": "folder of class images "
    "(default: drawn by the model and cached)", "prior_loss_weight": "loss weight of class / regularisation images",
    "lora": "DreamBooth-LoRA instead of the full UNet",
    "identifier_lr": "DreamBooth pivotal tuning: learning rate of the identifier's own token-embedding row(s) "
                     "(the instance-prompt words not in the class prompt, e.g. sks; 0: off; 5e-3 a textual-inversion "
                     "rate); with --lora also writes OUT/IDENTIFIER.safetensors, an embedding to load with the LoRA "
                     "(in an embeddings folder it overrides the word, as in A1111)", "device": "auto, cpu, cuda, cuda:N or mps",
    "snr_gamma": "Min-SNR-gamma loss weighting (0: off)", "noise_offset": "noise offset (0: off)",
    "sample_prompts": "prompts of the validation grid", "sample_steps": "sampler steps of the validation grid",
    "sample_cfg": "CFG scale of the validation grid", "sample_seed": "seed of the validation grid",
    "cache_dir": "folder of the latent / text-state cache reused across runs (default: the stablekit cache "
    "folder's train/; 'off': no cache)",
    "train_text_encoder": "also train the text encoder(s)", "rank": "LoRA rank", "alpha": "LoRA alpha (scale alpha/rank)",
    "dropout": "LoRA dropout", "conv": "also adapt 3x3 convolutions (LoCon)",
    "num_class_images": "DreamBooth: class images to draw when --class-data has fewer",
    "class_steps": "DreamBooth: sampler steps for drawing class images", "class_cfg": "DreamBooth: CFG for class images",
    "grad_accum": "micro-batches per optimizer update", "optimizer": "adamw, adafactor or sgd",
    "lr_schedule": "constant, linear, cosine, cosine_with_restarts or polynomial (after warm-up)",
    "warmup_steps": "linear warm-up steps", "min_lr_ratio": "decay floor as a fraction of lr",
    "lr_cycles": "cosine_with_restarts: number of cycles", "lr_power": "polynomial: power of the decay",
    "weight_decay": "optimizer weight decay", "betas": "AdamW betas (two numbers)", "momentum": "SGD momentum",
    "grad_clip": "gradient norm clip (0: off)", "ema_decay": "EMA decay of the trained weights (0: off)",
    "mixed_precision": "auto, no or bf16 (autocast, frozen UNet layers in bf16; auto: where measured faster)", "gradient_checkpointing": "trade compute for memory",
    "seed": "seed of data order, noise and augmentations", "checkpoint_every": "steps between atomic checkpoints",
    "keep_checkpoints": "checkpoints kept on disk", "sample_every": "steps between validation grids (0: never)",
    "log_every": "steps between log lines", "tensorboard": "write TensorBoard event files (needs tensorboard)",
    "threads": "torch CPU threads (0: torch's default)",
    "eval_every": "evaluate the model being trained every N steps and at the end (0: never); "
                  "metrics are logged as eval/<metric> beside the loss",
    "eval_metrics": "metrics evaluated in training: comma-separated subset of fid,kid,clip,loss,judge",
    "eval_prompts": "prompt file for evaluation in training (.txt or .jsonl; .jsonl rows with a \"named\" "
                    "attribute dict are scored by the shapes judge)",
    "eval_reference": "reference images for fid/kid/loss in training (default in the shapes world: rendered)",
    "eval_n": "images per evaluation for fid/kid/clip and the held-out loss",
    "eval_steps": "sampler steps of evaluation images", "eval_cfg": "CFG of evaluation images (0: the model's)",
    "eval_clip": "local CLIP model folder for --eval-metrics clip",
    "eval_judge_limit": "judge only the first N eval prompts (0: all)",
    "keep_best": "keep the best artefact by this eval metric (fid, kid, loss, clip, adherence, accuracy_<attr>): "
                 "OUT/NAME-best.safetensors (DreamBooth-LoRA: also OUT/IDENTIFIER-best.safetensors)",
    "resolution": "ControlNet / inpainting: training size of a folder dataset (0: the model's native size)",
    "conditioning_dir": "ControlNet: folder of same-name condition images (default: DATA/conditioning)",
    "cfg_min": "LCM: lowest teacher CFG scale (drawn uniformly per image)", "cfg_max": "LCM: highest teacher CFG scale",
    "ddim_steps": "LCM: DDIM solver steps over the training timesteps (skipping interval 1000/N)",
    "loss_type": "LCM: huber (pseudo-Huber) or l2", "huber_c": "LCM: pseudo-Huber constant c",
    "timestep_scaling": "LCM: timestep scaling of the consistency boundary conditions",
    "caption_dropout": "ControlNet: share of captions dropped to empty", "sample_conditions":
    "ControlNet: condition images of the validation grid (one per sample prompt)",
}


METHOD_DESCRIPTIONS = {
    "finetune": "Full fine-tuning of the UNet (optionally the text encoders): a single-file checkpoint and a "
                "diffusers folder.",
    "lora": "LoRA (LoCon with --conv) on the UNet and optionally the text encoders: a kohya-format LoRA file.",
    "textual-inversion": "Textual inversion: only the new token's embedding rows train; an A1111-format embedding.",
    "dreambooth": "DreamBooth: identifier + class noun with prior preservation (class images drawn by the model "
                  "when none are given); full weights, or a LoRA with --lora.",
    "controlnet": "ControlNet: a trainable copy of the UNet encoder with zero convolutions, base frozen; data = "
                  "images + captions + a conditioning/ folder (or a kohya TOML with conditioning_data_dir); "
                  "an LDM-layout ControlNet file plus a diffusers folder.",
    "inpainting": "Inpainting model: the UNet gets 5 zero-initialised input channels (mask, masked-image latents) "
                  "and is fine-tuned with random and object masks; a 9-channel checkpoint and diffusers folder.",
    "lcm": "LCM-LoRA distillation (Luo et al. 2023): a LoRA that makes the model draw in 4-8 steps with the LCM "
           "sampler and CFG 1-2; teacher = the model with CFG, one DDIM step; a kohya-format LoRA and a PEFT file.",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model: finetune, lora, textual-inversion, dreambooth, controlnet, inpainting, lcm",
                                   description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="method", metavar="METHOD", help="what to train (each has its own settings)")
    parser.set_defaults(func=lambda args: parser.print_help() or 1)
    for method in METHODS:
        p = sub.add_parser(method, help=f"{method} (stablekit train {method} --print-config shows every setting)",
                           description=METHOD_DESCRIPTIONS[method], argument_default=argparse.SUPPRESS)
        p.add_argument("--config", metavar="TOML", help="settings file (flat keys; flags override it)")
        p.add_argument("--print-config", action="store_true", help="print the resolved settings as TOML and exit")
        own, loop = setting_fields(method)
        for f in own + loop:
            _add_flag(p, f)
        p.set_defaults(func=run_train, method=method)


def _add_flag(p: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    help_text = _HELP[f.name]  # every setting is described (tests/test_cli_help.py)
    if isinstance(default, bool):
        p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
    elif isinstance(default, (list, tuple)):
        item = float if f.name == "betas" else str
        p.add_argument(flag, dest=f.name, nargs=len(default) if isinstance(default, tuple) else "+", type=item,
                       help=help_text)
    else:
        p.add_argument(flag, dest=f.name, type=type(default), metavar=f.name.upper(), help=help_text)


def run_train(args) -> int:
    from stablekit.train.config import to_toml

    method = args.method
    own, loop = setting_fields(method)
    given = {f.name: getattr(args, f.name) for f in own + loop if hasattr(args, f.name)}
    config = getattr(args, "config", None)
    if getattr(args, "print_config", False):
        settings, tc = resolve(method, config, check=False, **given)
        print(to_toml(as_record(method, settings, tc)), end="")
        return 0
    from stablekit.train.run import run

    result = run(method, config=config, **given)
    if result["artefact"]:
        print(f"{method}: {result['step']} steps -> {result['artefact']}")
    return 0
