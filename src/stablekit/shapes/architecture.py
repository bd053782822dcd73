"""The embedded model's architecture: Stable Diffusion's components at miniature width.

Same classes and block types as SD 1.x (CLIP text transformer, KL autoencoder, conditional UNet
with cross-attention), so it loads, samples and trains through exactly the code paths a real
checkpoint takes. Sizes were chosen by measurement on the 2-core CPU (docs/benchmarks.md):
16x16x4 latents (4x down-sampling of 64x64 images), a UNet of about 4 M parameters (about 22 ms
per CFG step), and a text encoder whose 49,408-token embedding dominates its 1.6 M parameters.
"""
from __future__ import annotations

IMAGE_SIZE = 64

# v-prediction on SD's own noise schedule: with the epsilon target the global colour at high
# noise is nearly unpredictable (platform-notes.md), v fixes that.
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}

TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    scaling_factor=1.0,  # replaced by the measured 1/std of the latents after stage 1
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(48, 96, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1, cross_attention_dim=TEXT_CONFIG["hidden_size"], attention_head_dim=8, norm_num_groups=16,
)


def build_text_encoder(seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)
