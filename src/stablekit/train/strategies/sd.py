"""What every method that trains a loaded Stable Diffusion model shares (SD 1.x, 2.x, SDXL, shapes).

A batch from an image-caption dataset (CONTRACTS.md: pixels, captions, is_reg, keys) becomes
latents (VAE posterior mean x scaling factor, without gradients: the VAE never trains) and text
conditioning read from the text encoder(s) the way generation reads it (prompts/encode.py):
SD 1.x last hidden state, SD 2.x its (already penultimate) last hidden state, SDXL both
encoders' penultimate states concatenated plus the second encoder's pooled embedding and the
size/crop ids. Captions are truncated to one 77-token chunk, as diffusers' and kohya's trainers
do by default. Methods differ only in which parameters train (`trainable_parameters`) and what
they save. Latents, and text conditioning while no text-encoder weight trains, come from the
on-disk encoder cache (encoder_cache.py; `cache_dir=""` turns it off).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from stablekit.components import Components
from stablekit.generate.denoiser import alphas_cumprod_from_config
from stablekit.prompts.embedding_tokens import caption_ids
from stablekit.train.strategies.diffusion import diffusion_loss


@dataclass
class SampleSettings:
    """Validation grid: one image per prompt, fixed seed, generated through the public Pipeline."""

    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    size: int = 0  # 0: the model's native size


@dataclass
class SDStrategy:
    """Base of the method strategies. Subclasses set `name` and override trainable_parameters,
    state_dict / load_state_dict (what a checkpoint holds) and, if needed, `encode_captions`."""

    components: Components
    snr_gamma: float = 0.0
    noise_offset: float = 0.0
    prior_loss_weight: float = 1.0  # weight of is_reg items (DreamBooth class images, kohya reg subsets)
    sample: SampleSettings = field(default_factory=SampleSettings)
    caption_hook: Callable[[str], str] | None = None  # rewrites each caption (textual inversion)
    cache_dir: str | None = None  # encoder cache folder; None: $STABLEKIT_TRAIN_CACHE or ~/.cache/stablekit/train; "": off
    name: str = "sd"

    def __post_init__(self):
        c = self.components
        for module in self.modules():
            module.requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod_from_config(c.scheduler_config)
        self.prediction_type = c.prediction_type

    # -- what the loop calls ------------------------------------------------------------------
    def modules(self) -> list[torch.nn.Module]:
        c = self.components
        return [m for m in (c.unet, c.vae, c.text_encoder, c.text_encoder_2) if m is not None]

    def text_encoders(self) -> list[torch.nn.Module]:
        c = self.components
        return [m for m in (c.text_encoder, c.text_encoder_2) if m is not None]

    def to(self, device) -> None:
        for module in self.modules():
            module.to(device)

    def enable_gradient_checkpointing(self) -> None:
        self.components.unet.enable_gradient_checkpointing()
        for te in self.text_encoders():
            if any(p.requires_grad for p in te.parameters()):
                te.gradient_checkpointing_enable()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def loss(self, batch: dict, rng):
        c = self.components
        self.set_train(True)
        x0 = self.latents(batch["pixels"])
        captions = [self.caption_hook(t) for t in batch["captions"]] if self.caption_hook else list(batch["captions"])
        context, pooled = self.encode_captions(captions)
        added = None
        if getattr(c.unet.config, "addition_embed_type", None) == "text_time":
            h, w = batch["pixels"].shape[-2:]
            # SDXL micro-conditioning: original size, crop top-left, target size (no crops here)
            time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=pooled.dtype, device=pooled.device)
            added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(x0), 1)}
        weights = None
        if "is_reg" in batch and self.prior_loss_weight != 1.0:
            is_reg = torch.as_tensor(batch["is_reg"], device=x0.device).bool()
            weights = torch.where(is_reg, self.prior_loss_weight, 1.0)
        loss, per_item = diffusion_loss(c.unet, x0, context, rng, self.alphas_cumprod, self.prediction_type,
                                        self.snr_gamma, self.noise_offset, weights, added)
        return loss, {"mse": per_item.mean()}

    def samples(self, step: int):
        if not self.sample.prompts:
            return None
        self.set_train(False)
        return sample_grid(self.components, self.sample)

    # -- helpers ------------------------------------------------------------------------------
    def set_train(self, training: bool) -> None:
        """Train mode only where something trains (LoRA dropout); frozen modules stay in eval."""
        for module in self.modules():
            module.train(training and any(p.requires_grad for p in module.parameters()))

    def encoder_cache(self):
        """The EncoderCache (built on first use, when every trainable flag is set), or None when off."""
        from stablekit.train.strategies.encoder_cache import EncoderCache, cache_root

        if getattr(self, "_cache", False) is False:
            root = cache_root(self.cache_dir)
            c = self.components
            frozen_text = self.caption_hook is None and not any(
                p.requires_grad for te in self.text_encoders() for p in te.parameters())
            # the encoders' dtype (bf16 runs read them in bf16, train/precision.py) is part of the
            # key: fp32 and bf16 entries never mix (the latents' key has it too, data/caches.py)
            settings = {"sdxl": bool(c.is_sdxl), "layer": "penultimate" if c.is_sdxl else "last",
                        "max_length": c.tokenizer.model_max_length, "vocab": len(c.tokenizer),
                        "dtype": str(next(c.text_encoder.parameters()).dtype)}
            self._cache = None if root is None else EncoderCache(
                root, c.vae, self.text_encoders() if frozen_text else None, settings)
        return self._cache

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        cache = self.encoder_cache()
        if cache is not None:
            return cache.encode_latents(pixels)
        vae = self.components.vae
        dtype = next(vae.parameters()).dtype
        z = vae.encode(pixels.to(dtype)).latent_dist.mean.float()
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z - shift
        return z * vae.config.scaling_factor

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context [B, 77, D] (and SDXL's pooled [B, D2]) with gradients where the encoder trains."""
        cache = self.encoder_cache()
        if cache is not None and cache.text is not None:
            def fresh(texts):
                with torch.no_grad():
                    context, pooled = self._encode_captions(texts)
                return {"context": context} if pooled is None else {"context": context, "pooled": pooled}

            device = next(self.components.text_encoder.parameters()).device
            out = {k: v.to(device) for k, v in cache.encode_text(list(captions), fresh).items()}
            return out["context"], out.get("pooled")
        return self._encode_captions(captions)

    def _encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.components
        if c.is_sdxl:
            h1, _ = _encode(c.text_encoder, c.tokenizer, captions, "penultimate")
            h2, pooled = _encode(c.text_encoder_2, c.tokenizer_2 or c.tokenizer, captions, "penultimate", pooled=True)
            return torch.cat([h1, h2], dim=-1), pooled
        return _encode(c.text_encoder, c.tokenizer, captions, "last")


def _encode(model, tokenizer, captions: list[str], layer: str, pooled: bool = False):
    device = next(model.parameters()).device
    # embeddings (textual inversion's new tokens) spelled by the prompt encoder's own function
    ids = caption_ids(captions, tokenizer).to(device)
    out = model(input_ids=ids, output_hidden_states=layer == "penultimate")
    hidden = out.hidden_states[-2] if layer == "penultimate" else out.last_hidden_state
    # a text encoder read into bf16 (train/precision.py) gives fp32 states all the same (no-op in fp32)
    return hidden.float(), (out.text_embeds.float() if pooled else None)


def sample_grid(components: Components, settings: SampleSettings, cols: int = 4):
    """One image per prompt through the public Pipeline (stablekit.data.validation when present)."""
    try:
        from stablekit.data.validation import sample_grid as data_sample_grid
    except ImportError:
        data_sample_grid = None
    size = settings.size or None
    if data_sample_grid is not None:
        return data_sample_grid(components, settings.prompts, settings.seed, settings.steps, settings.cfg)
    from PIL import Image

    from stablekit.generate.pipeline import Pipeline

    pipe = Pipeline(components, progress=False)
    images = [pipe.generate(p, seed=settings.seed, steps=settings.steps, cfg=settings.cfg, width=size, height=size)[0]
              for p in settings.prompts]
    w, h = images[0].size
    cols = min(cols, len(images))
    grid = Image.new("RGB", (cols * w, -(-len(images) // cols) * h), (128, 128, 128))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
