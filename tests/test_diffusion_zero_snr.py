"""diffusion_loss on a zero-terminal-SNR schedule (Lin et al. 2024): pure noise in and -x0 as the v
target at t=T, and finite Min-SNR weights there for both prediction types."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from stablekit.generate.denoiser import alphas_cumprod_from_config
from stablekit.shapes.schedules import scheduler_config
from stablekit.train.strategies.diffusion import diffusion_loss


class Draws:
    def __init__(self, noise, t):
        self.noise, self.t = noise, t

    def randn(self, n, *shape):
        return self.noise

    def randint(self, high, n):
        return self.t


class Recorder(torch.nn.Module):
    """A UNet stand-in that records its input and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, context, added_cond_kwargs=None):
        self.seen = x.clone()
        return SimpleNamespace(sample=torch.zeros_like(x) + self.w)


def test_terminal_step_is_pure_noise_and_v_target_is_minus_x0():
    acp = alphas_cumprod_from_config(scheduler_config("zero-snr"))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    unet = Recorder()
    loss, per_item = diffusion_loss(unet, x0, torch.zeros(2, 3, 8), Draws(noise, torch.tensor([999, 999])), acp,
                                    prediction_type="v_prediction")
    assert torch.allclose(unet.seen, noise, atol=1e-6)  # no signal left at t=T
    assert torch.allclose(per_item, (x0 ** 2).mean(dim=(1, 2, 3)), atol=1e-5)  # |0 - (-x0)|^2
    # on SD's schedule the same step still carries the image (the flaw zero-SNR removes)
    sd = alphas_cumprod_from_config(scheduler_config("sd"))
    diffusion_loss(unet, x0, torch.zeros(2, 3, 8), Draws(noise, torch.tensor([999, 999])), sd, "v_prediction")
    assert (unet.seen - noise).abs().max() > 0.05


def test_min_snr_weights_stay_finite_at_zero_snr():
    acp = alphas_cumprod_from_config(scheduler_config("zero-snr"))
    x0, noise = torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    for pred in ("v_prediction", "epsilon"):
        loss, _ = diffusion_loss(Recorder(), x0, torch.zeros(2, 3, 8), Draws(noise, torch.tensor([999, 10])), acp,
                                 prediction_type=pred, snr_gamma=5.0)
        assert torch.isfinite(loss), pred
    # epsilon at t=T: weight 1 (the limit of min(snr, g)/snr); target = noise = 0 so the item's loss is 0
    loss, per_item = diffusion_loss(Recorder(), x0[:1], torch.zeros(1, 3, 8), Draws(torch.ones(1, 4, 4, 4),
                                    torch.tensor([999])), acp, prediction_type="epsilon", snr_gamma=5.0)
    assert torch.isfinite(loss) and torch.allclose(loss, per_item)
