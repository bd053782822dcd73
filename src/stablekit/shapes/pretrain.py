"""`stablekit shapes pretrain`: the embedded model from nothing, in Stable Diffusion's two stages.

    data   render the captioned training set (base shapes only), cached as one .npz; captions in
           generated word orders (shapes.wordings, recipe v3) or fixed templates (v1, extended)
    vae    stage 1: KL autoencoder, 64x64x3 <-> 16x16x4; recipe v4 recolours a share of its images
           with random RGB (shapes.vae_recolour) so off-palette colours such as teal survive
    text   CLIP-architecture text encoder, contrastive image-text pretraining with hard-negative
           captions (one attribute changed), then frozen
    cache  latents (posterior mean x scale factor) and text hidden states per distinct caption
    unet   stage 2: conditional UNet, v-objective on SD's noise schedule (or zero terminal SNR,
           shapes.schedules), caption dropout, EMA
    export the Components as a diffusers folder and a single LDM-layout .safetensors

Every stage trains through stablekit.train (atomic checkpoints, exact resume), so the command can
be killed and rerun at any time: finished stages are skipped, the running one resumes, and the
options recorded in <out>/pretrain.json are kept unless given again (shapes.pretrain_config).
`--init-from RUN` warm-starts from a finished run (shapes.pretrain_init).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from stablekit.data.arrays import LatentData, PixelData, image_grid, to_pixels, to_u8
from stablekit.data.encode import encode_latents, encode_text
from stablekit.data.validation import grid_sampler
from stablekit.shapes import architecture as arch
from stablekit.shapes.pretrain_config import PretrainConfig, add_arguments as add_config_arguments, resolve
from stablekit.shapes.schedules import generation_defaults, scheduler_config
from stablekit.train import TrainConfig, train
from stablekit.train.checkpoint import save_atomic


STAGES = ("data", "vae", "text", "cache", "unet", "export")


# ---------------------------------------------------------------------------------------------
def stage_data(cfg: PretrainConfig, out: Path) -> None:
    from stablekit.errors import StablekitError
    from stablekit.shapes.captions import TEMPLATE_SETS, make_batch

    path = out / "data.npz"
    if path.exists():
        return
    if cfg.caption_templates not in (*TEMPLATE_SETS, "generated"):
        raise StablekitError(f"unknown --caption-templates {cfg.caption_templates!r}; "
                             f"use generated or one of {', '.join(TEMPLATE_SETS)}")
    t = time.time()
    if cfg.caption_templates == "generated":
        from stablekit.shapes.wordings import generated_batch

        images, captions, specs = generated_batch(cfg.n_images, seed=cfg.seed, render_images=not cfg.init_from)
        if cfg.init_from:  # same stream: the images (and later the latents) are the init run's
            from stablekit.shapes.pretrain_init import init_run, reuse_images

            images = reuse_images(init_run(cfg.init_from), cfg.seed, cfg.n_images, specs)
    else:
        images, captions, _ = make_batch(cfg.n_images, seed=cfg.seed, templates=TEMPLATE_SETS[cfg.caption_templates])
    unique, index = np.unique(np.array(captions), return_inverse=True)
    tmp = out / "data.tmp.npz"
    np.savez(tmp, images=images, captions=unique, caption_index=index.astype(np.int64))
    tmp.replace(path)
    print(f"data: {cfg.n_images} images, {len(unique)} distinct captions, {time.time() - t:.0f} s")


def load_data(out: Path):
    d = np.load(out / "data.npz")
    return d["images"], [str(c) for c in d["captions"]], d["caption_index"]


def stage_vae(cfg: PretrainConfig, out: Path):
    final = out / "vae" / "final.pt"
    vae = arch.build_vae(cfg.seed)
    if final.exists():
        vae.load_state_dict(torch.load(final, weights_only=True))
        return vae
    if cfg.init_from:
        from stablekit.shapes.pretrain_init import copy_vae, init_run

        copy_vae(init_run(cfg.init_from), final)
        vae.load_state_dict(torch.load(final, weights_only=True))
        return vae
    images, _, caption_index = load_data(out)
    held_out = to_pixels(images[-16:])

    def recon_grid(step):
        rec = vae.decode(vae.encode(held_out).latent_dist.mode()).sample
        return image_grid(to_u8(held_out) + to_u8(rec), cols=16)

    from stablekit.shapes.vae_loss import EdgeWeightedAutoencoderStrategy
    from stablekit.train.strategies import AutoencoderStrategy

    strategy = (EdgeWeightedAutoencoderStrategy(vae, sample_fn=recon_grid, edge_weight=cfg.vae_edge_weight,
                                                random_colours=cfg.vae_random_colours)
                if cfg.vae_edge_weight > 0 or cfg.vae_random_colours > 0
                else AutoencoderStrategy(vae, sample_fn=recon_grid))
    tc = TrainConfig(out_dir=str(out / "vae"), steps=cfg.vae_steps, batch_size=cfg.vae_batch, lr=cfg.vae_lr,
                     warmup_steps=100, ema_decay=0.0, mixed_precision=vae_precision(), seed=cfg.seed,
                     checkpoint_every=250, sample_every=250, threads=cfg.threads, weight_decay=0.0)
    train(tc, strategy, PixelData(images[:-16], caption_index))
    save_atomic(vae.state_dict(), final)
    return vae


def vae_precision() -> str:
    """bf16 autocast for the autoencoder stage only where oneDNN has native bf16 kernels. Measured,
    one step of 32 images at 1 thread: 0.6 s in bf16 on a Zen 4 with AVX-512 BF16 (the committed
    runs); on an AVX2-only EPYC bf16 is emulated, 60 CPU s against 4.1-4.9 in fp32 (2026-12-02)."""
    from stablekit.generate.acceleration import bf16_supported

    return "bf16" if bf16_supported() else "no"


def stage_text(cfg: PretrainConfig, out: Path):
    from stablekit.formats.tokenizer import clip_tokenizer
    from stablekit.train.strategies.contrastive import ContrastiveTextStrategy, SmallImageEncoder

    final = out / "text" / "final.pt"
    te = arch.build_text_encoder(cfg.seed)
    if final.exists():
        te.load_state_dict(torch.load(final, weights_only=True))
        return te
    from stablekit.shapes.captions import hard_negatives

    images, captions, caption_index = load_data(out)
    tok = clip_tokenizer()
    from stablekit.shapes.wordings import reworded_negatives

    k = cfg.text_negatives + cfg.text_reworded_negatives
    negatives = [n for c in captions for n in hard_negatives(c, k=cfg.text_negatives, seed=cfg.seed)
                 + (reworded_negatives(c, k=cfg.text_reworded_negatives, seed=cfg.seed)
                    if cfg.text_reworded_negatives else [])]
    # Padded to the longest caption, not 77: the pooled (end-of-text) state sees only the tokens
    # before it (causal mask), so it is the same and training is ~4x cheaper.
    ids = tok(captions + negatives, padding="longest", truncation=True, max_length=77, return_tensors="pt").input_ids
    negative_ids = ids[len(captions):].reshape(len(captions), k, -1) if k else None
    ids = ids[:len(captions)]
    strategy = ContrastiveTextStrategy(te, SmallImageEncoder(arch.TEXT_CONFIG["projection_dim"] * 2),
                                       embed_dim=arch.TEXT_CONFIG["projection_dim"] * 2)
    if cfg.init_from:  # starting point only: the stage's own checkpoints take over on resume
        from stablekit.shapes.pretrain_init import init_run, text_strategy_state

        strategy.load_state_dict(text_strategy_state(init_run(cfg.init_from)))
    tc = TrainConfig(out_dir=str(out / "text"), steps=cfg.text_steps, batch_size=cfg.text_batch, lr=cfg.text_lr,
                     warmup_steps=50, seed=cfg.seed, checkpoint_every=200, sample_every=0, threads=cfg.threads,
                     weight_decay=0.1, log_every=10)
    train(tc, strategy, PixelData(images, caption_index, ids, negative_ids))
    save_atomic(te.state_dict(), final)
    return te


def stage_cache(cfg: PretrainConfig, out: Path, vae, te):
    from stablekit.formats.tokenizer import clip_tokenizer

    path = out / "cache.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    images, captions, caption_index = load_data(out)
    t = time.time()
    if cfg.init_from:  # same images through the same autoencoder (stage_data / stage_vae checked)
        from stablekit.shapes.pretrain_init import init_run, latents as init_latents

        scaled, scale = init_latents(init_run(cfg.init_from))
    else:
        starts = range(0, len(images), 500)
        latents = encode_latents(vae, (to_pixels(images[i:i + 500]) for i in starts), desc="cache: latents",
                                 total=len(starts))
        scale = float(1.0 / latents.std())
        scaled = latents * scale
    tok = clip_tokenizer()
    cache = {"latents": scaled, "scaling_factor": torch.tensor(scale),
             "text": encode_text(te, tok, captions, desc="cache: text"), "uncond": encode_text(te, tok, [""])[0],
             "caption_index": torch.from_numpy(caption_index)}
    save_atomic(cache, path)
    print(f"cache: latents {tuple(scaled.shape)} scale {scale:.4f}, text {tuple(cache['text'].shape)}, {time.time() - t:.0f} s")
    return cache


GRID_PROMPTS = [f"a {size} {color} {shape} on a {bg} background"
                for shape, color, bg, size in [("circle", "red", "blue", "large"), ("square", "green", "yellow", "small"),
                                               ("triangle", "blue", "white", "large"), ("star", "yellow", "black", "large"),
                                               ("circle", "purple", "orange", "small"), ("square", "orange", "purple", "large"),
                                               ("triangle", "white", "red", "small"), ("star", "black", "green", "small")]]
GRID_PROMPTS += ["a red star on the left", "a small blue circle at the top", "a green square at the bottom",
                 "a large white triangle on the right", "a circle", "a square on a red background",
                 "yellow triangle in the center, purple background", "a black circle on a white background"]


def stage_unet(cfg: PretrainConfig, out: Path, vae, te, cache):
    from stablekit.train.strategies import DiffusionStrategy

    unet = arch.build_unet(cfg.seed)
    if cfg.init_from:  # starting point only: the stage's own checkpoints take over on resume
        from stablekit.shapes.pretrain_init import init_run

        unet.load_state_dict(load_unet_from_checkpoint(init_run(cfg.init_from))[0].state_dict())
    data = LatentData(cache["latents"], cache["caption_index"].numpy(), cache["text"], cache["uncond"])
    # Validation grids by the public generation API on the modules as they train (Euler, CFG 5).
    comps = build_components(vae, te, unet, float(cache["scaling_factor"]), cfg.unet_noise_schedule)
    sampler = grid_sampler(comps, GRID_PROMPTS, seed=cfg.seed, steps=20, cfg=5.0, sampler="Euler")
    strategy = DiffusionStrategy(unet, comps.scheduler_config, caption_dropout=cfg.caption_dropout,
                                 snr_gamma=cfg.snr_gamma, sample_fn=sampler)
    tc = TrainConfig(out_dir=str(out / "unet"), steps=cfg.unet_steps, batch_size=cfg.unet_batch, lr=cfg.unet_lr,
                     warmup_steps=200, ema_decay=0.999, seed=cfg.seed, checkpoint_every=100, sample_every=250,
                     threads=cfg.threads, weight_decay=0.01, log_every=10)
    train(tc, strategy, data)  # leaves the EMA weights in `unet`
    return unet


def load_unet_from_checkpoint(out: Path):
    """The EMA UNet of the newest checkpoint (export mid-run works too)."""
    from stablekit.train.checkpoint import latest_checkpoint, load_checkpoint

    state = load_checkpoint(latest_checkpoint(out / "unet"))
    unet = arch.build_unet()
    unet.load_state_dict(state["strategy"]["unet"])
    if state.get("ema"):
        with torch.no_grad():
            for p, s in zip([p for p in unet.parameters() if p.requires_grad], state["ema"]["shadow"]):
                p.copy_(s)
    return unet, state["step"]


def build_components(vae, te, unet, scaling_factor: float, noise_schedule: str = "sd", name: str = "shapes"):
    from stablekit.components import Components
    from stablekit.formats.tokenizer import clip_tokenizer

    vae.register_to_config(scaling_factor=scaling_factor)
    # diffusers' from_config drops keys listed in _use_default_values (those not passed at
    # construction), which would silently reset the measured scale to SD's 0.18215 on reload.
    defaults = [k for k in vae.config.get("_use_default_values", []) if k != "scaling_factor"]
    vae.register_to_config(_use_default_values=defaults)
    return Components(arch="shapes", unet=unet.eval(), vae=vae.eval(), text_encoder=te.eval(),
                      tokenizer=clip_tokenizer(), scheduler_config=scheduler_config(noise_schedule), name=name)


def stage_export(cfg: PretrainConfig, out: Path, vae, te, cache, dest: Path):
    from stablekit.formats import save_model

    unet, step = load_unet_from_checkpoint(out)
    comps = build_components(vae, te, unet, float(cache["scaling_factor"]), cfg.unet_noise_schedule)
    comps.extra["defaults"] = generation_defaults(cfg)  # generate uses them for settings not given
    dest.mkdir(parents=True, exist_ok=True)
    save_model(comps, dest / "diffusers", to="diffusers", dtype=torch.float16)
    save_model(comps, dest / "shapes.safetensors", to="single-file", dtype=torch.float16)
    (dest / "training.json").write_text(json.dumps({"unet_step": step, "default_cfg": cfg.default_cfg,
                                                    "config": asdict(cfg)}, indent=2))
    print(f"export: UNet step {step} -> {dest}")


# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until", choices=STAGES, default="export",
                        help="stop after this stage (finished stages are always skipped)")
    parser.add_argument("--export-to", default=None,
                        help="folder for the exported model (default: <out>/model)")
    add_config_arguments(parser)


def run(args) -> int:
    cfg, changes = resolve({k: getattr(args, k) for k in asdict(PretrainConfig())})
    for line in changes:
        print(f"pretrain: option changed from the run's pretrain.json: {line}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain.json").write_text(json.dumps(asdict(cfg), indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    want = STAGES[: STAGES.index(args.until) + 1]
    t0 = time.time()
    stage_data(cfg, out)
    vae = stage_vae(cfg, out) if "vae" in want else None
    te = stage_text(cfg, out) if "text" in want else None
    cache = stage_cache(cfg, out, vae, te) if "cache" in want else None
    if "unet" in want:
        stage_unet(cfg, out, vae, te, cache)
    if "export" in want:
        stage_export(cfg, out, vae, te, cache, Path(args.export_to or out / "model"))
    print(f"pretrain: done in {time.time() - t0:.0f} s")
    return 0
