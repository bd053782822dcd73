"""Shared pieces of the sampler and denoiser tests (no tests here).

The samplers are exercised on a smaller UNet than tests/fixtures.py's: a 2-level, 8/16-channel
UNet2DConditionModel (one cross-attention level, one plain) costs about a tenth of the fixture's
SD1-shaped UNet per call, and what the samplers see of a model does not depend on its depth. The
architecture-specific paths (SDXL) use the fixture's configs in test_denoiser.py.

`SkipUNet` adds its input to the random UNet's output. A random UNet predicts eps near 0, which
leaves x at sigma_max * noise (values near 40) for every sampler; predicting eps ~ its unit-variance
input, as a trained model does at high noise, keeps latents near the +-3 of real SD latents, so an
absolute tolerance of 1e-4 means about the same as it would on a real model.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from stablekit.prompts.conditioning import Conditioning

# SD 1.x / 2.x training schedule as shipped in stablekit/formats/configs/sd1/scheduler.
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True,
                    timestep_spacing="leading", prediction_type="epsilon")
CONTEXT_DIM = 16
CFG_SCALE = 7.0


class SkipUNet(UNet2DConditionModel):
    """UNet2DConditionModel whose output is input + UNet(input) (see module docstring)."""

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict=True, **kwargs):
        out = sample + super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def tiny_unet(skip: bool = True, seed: int = 0) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = (SkipUNet if skip else UNet2DConditionModel)(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CONTEXT_DIM, attention_head_dim=4, norm_num_groups=8)
    return unet.eval()


def alphas_cumprod() -> torch.Tensor:
    return DDPMScheduler.from_config(SD_SCHEDULER).alphas_cumprod


def prompt_pair(seed: int = 1, batch: int = 1) -> tuple[Conditioning, Conditioning]:
    """Fixed random (cond, uncond), 77 tokens each."""
    g = torch.Generator().manual_seed(seed)
    return (Conditioning(torch.randn(batch, 77, CONTEXT_DIM, generator=g)),
            Conditioning(torch.randn(batch, 77, CONTEXT_DIM, generator=g)))


def initial_noise(seed: int = 2, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread while these modules run: the tiny UNet gains nothing from more, and on
    the shared 2-core machine extra threads only contend with the background jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
