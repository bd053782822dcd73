"""ControlNet training (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models"): a trainable copy of the UNet's encoder, fed the condition image through a
small convolutional hint encoder, whose outputs reach the frozen UNet's skip connections and
middle block through zero-initialised 1x1 convolutions; at step 0 the model is the base model.

The net is built by diffusers' `ControlNetModel.from_unet` (the encoder's weights copied, zero
convolutions and the hint encoder's last layer zero), as diffusers' train_controlnet.py does;
the VAE, text encoder(s) and UNet stay frozen. The hint encoder downsamples the condition image
by the VAE's factor (SD: 8 -> channels 16, 32, 96, 256; the shapes model: 4 -> 16, 32, 96).
The condition enters in [0, 1] (RGB), as in diffusers' trainer and pipelines. The artefact is a
single LDM-layout file (`formats/controlnet.save_controlnet`) plus a diffusers folder beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from stablekit.errors import StablekitError
from stablekit.train.strategies.diffusion import diffusion_loss
from stablekit.train.strategies.sd import SDStrategy

_HINT_CHANNELS = (16, 32, 96, 256, 256)


def hint_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """Hint-encoder widths that downsample by the VAE's factor (one stride-2 stage per factor 2)."""
    stages = int(round(math.log2(vae_scale_factor)))
    if 2 ** stages != vae_scale_factor or not 1 <= stages < len(_HINT_CHANNELS):
        raise StablekitError(f"cannot build a ControlNet hint encoder for a VAE factor of {vae_scale_factor}; "
                             "need 2, 4, 8 or 16")
    return _HINT_CHANNELS[:stages + 1]


def new_controlnet(unet, vae_scale_factor: int, conditioning_channels: int = 3, seed: int = 0):
    """A ControlNetModel initialised from `unet` (encoder copied, zero convolutions), seeded."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):  # the hint encoder's random init never moves the caller's RNG
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels(vae_scale_factor),
                                        conditioning_channels=conditioning_channels)
    dtype = next(unet.parameters()).dtype
    return net if dtype == torch.float32 else net.to(dtype=dtype)


class ControlledUNet(torch.nn.Module):
    """The frozen UNet with the ControlNet's residuals added: what `diffusion_loss` calls."""

    def __init__(self, unet, controlnet, condition: torch.Tensor):
        super().__init__()
        self.unet, self.controlnet, self.condition = unet, controlnet, condition

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=self.condition,
                                    added_cond_kwargs=added_cond_kwargs, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid)


@dataclass
class ControlNetStrategy(SDStrategy):
    conditioning_channels: int = 3
    sample_conditions: list = field(default_factory=list)  # one condition image (uint8 HxWx3) per sample prompt
    controlnet: torch.nn.Module | None = None  # a net to continue from; None = from the UNet
    name: str = "controlnet"

    def __post_init__(self):
        super().__post_init__()
        c = self.components
        if self.controlnet is None:
            self.controlnet = new_controlnet(c.unet, c.vae_scale_factor, self.conditioning_channels)
        self.controlnet.requires_grad_(True)

    def modules(self):
        return super().modules() + ([self.controlnet] if self.controlnet is not None else [])

    def enable_gradient_checkpointing(self) -> None:
        self.controlnet.enable_gradient_checkpointing()

    def trainable_parameters(self):
        return [p for p in self.controlnet.parameters() if p.requires_grad]

    def loss(self, batch: dict, rng):
        if "conditioning_pixels" not in batch:
            raise StablekitError("ControlNet training needs condition images; give --data a folder with a "
                                 "conditioning/ subfolder or a kohya TOML with conditioning_data_dir")
        c = self.components
        self.set_train(True)
        x0 = self.latents(batch["pixels"])
        context, pooled = self.encode_captions(list(batch["captions"]))  # caption dropout: the dataset's
        added = None
        if getattr(c.unet.config, "addition_embed_type", None) == "text_time":
            h, w = batch["pixels"].shape[-2:]
            time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=pooled.dtype, device=pooled.device)
            added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(x0), 1)}
        condition = batch["conditioning_pixels"].to(x0.device, next(self.controlnet.parameters()).dtype)
        if condition.shape[-2:] != batch["pixels"].shape[-2:]:
            raise StablekitError(f"condition images are {tuple(condition.shape[-2:])}, the images "
                                 f"{tuple(batch['pixels'].shape[-2:])}; give same-size pairs")
        weights = None
        if "is_reg" in batch and self.prior_loss_weight != 1.0:
            is_reg = torch.as_tensor(batch["is_reg"], device=x0.device).bool()
            weights = torch.where(is_reg, self.prior_loss_weight, 1.0)
        model = ControlledUNet(c.unet, self.controlnet, condition)
        loss, per_item = diffusion_loss(model, x0, context, rng, self.alphas_cumprod, self.prediction_type,
                                        self.snr_gamma, self.noise_offset, weights, added)
        return loss, {"mse": per_item.mean()}

    def samples(self, step: int):
        if not self.sample.prompts or not self.sample_conditions:
            return None
        self.set_train(False)
        return control_grid(self.components, self.controlnet, self.sample.prompts, self.sample_conditions,
                            self.sample.seed, self.sample.steps, self.sample.cfg)

    def state_dict(self) -> dict:
        return {"controlnet": self.controlnet.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.controlnet.load_state_dict(state["controlnet"])


def control_grid(components, net, prompts, conditions, seed: int, steps: int, cfg: float, cols: int = 4):
    """(condition, image) pairs through the public Pipeline, prompt i with seed + i."""
    from PIL import Image

    from stablekit.generate.control import ControlUnit
    from stablekit.generate.pipeline import Pipeline

    pipe = Pipeline(components, progress=False)
    tiles = []
    for i, (prompt, cond) in enumerate(zip(prompts, conditions)):
        cond = np.asarray(cond, dtype=np.uint8)
        h, w = cond.shape[:2]
        image = pipe.generate(prompt, seed=seed + i, steps=steps, cfg=cfg, width=w, height=h,
                              controlnets=[ControlUnit(net=net, image=cond)])[0]
        tiles += [Image.fromarray(cond), image.convert("RGB")]
    w, h = tiles[0].size
    cols = min(cols, len(prompts)) * 2
    grid = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h), (128, 128, 128))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * w, (i // cols) * h))
    return grid


def read_conditions(paths) -> list[np.ndarray]:
    """Condition images of the validation grid as uint8 RGB arrays."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise StablekitError(f"cannot read sample condition image {p}: {exc}") from None
    return out
