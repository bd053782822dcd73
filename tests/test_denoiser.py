"""The Denoiser: sigma tables, eps/v -> x0, CFG batching, SDXL conditioning, ControlNet residuals."""
from __future__ import annotations

import types

import pytest
import torch
from diffusers import ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel

from fixtures import tiny_configs
from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.generate.denoiser import ControlResiduals, Denoiser, UNetInput, alphas_cumprod_from_config
from stablekit.prompts.conditioning import Conditioning
from test_samplers_support import (  # noqa: F401 (one_thread is an autouse fixture)
    CONTEXT_DIM,
    SD_SCHEDULER,
    alphas_cumprod,
    initial_noise,
    one_thread,
    prompt_pair,
    tiny_unet,
)


class RecordingUNet(torch.nn.Module):
    """Stands in for a UNet: records each call and returns a fixed function of its input."""

    config = types.SimpleNamespace(addition_embed_type=None)
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.calls = []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=True, **kwargs):
        self.calls.append(dict(sample=sample, timestep=timestep, context=encoder_hidden_states, kwargs=kwargs))
        # depends on the context so cond and uncond halves differ
        return (0.5 * sample + encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1),)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(skip=False)


def test_sigmas_are_the_model_discrete_sigmas():
    denoiser = Denoiser(None, alphas_cumprod())
    euler = EulerDiscreteScheduler.from_config(SD_SCHEDULER)
    assert torch.equal(denoiser.sigmas, euler.sigmas[:-1].flip(0))
    assert denoiser.sigma_min == pytest.approx(0.0292, abs=1e-4) and denoiser.sigma_max == pytest.approx(14.6146, abs=1e-3)
    t = torch.tensor([0.0, 250.0, 999.0])
    torch.testing.assert_close(denoiser.sigma_to_t(denoiser.t_to_sigma(t)), t, rtol=0, atol=1e-4)


def test_from_components_reads_the_training_schedule_and_prediction_type():
    for arch, prediction in (("sd1", "epsilon"), ("sd2-v", "v_prediction")):
        config = tiny_configs(arch)["scheduler"]
        components = Components(arch, RecordingUNet(), None, None, None, config)
        denoiser = Denoiser.from_components(components)
        assert denoiser.prediction_type == prediction
        assert torch.equal(denoiser.alphas_cumprod, EulerDiscreteScheduler.from_config(config).alphas_cumprod)
    assert torch.equal(alphas_cumprod_from_config(SD_SCHEDULER), alphas_cumprod())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_scales_the_input_and_converts_the_output_as_diffusers(prediction):
    rec = RecordingUNet()
    denoiser = Denoiser(rec, alphas_cumprod(), prediction)
    sigma = denoiser.sigmas[500]
    x = initial_noise() * sigma
    cond, _ = prompt_pair()
    x0 = denoiser(x, sigma, cond)
    call = rec.calls[0]
    torch.testing.assert_close(call["sample"], x / (sigma**2 + 1) ** 0.5)
    assert call["timestep"].tolist() == pytest.approx([500.0], abs=1e-3)
    # diffusers' EulerDiscreteScheduler turns the model output into x0 like this
    out = rec(call["sample"], None, cond.hidden_states)[0]
    expected = x - sigma * out if prediction == "epsilon" else out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    torch.testing.assert_close(x0, expected)


def test_cfg_is_one_batched_call_on_uncond_then_cond():
    rec = RecordingUNet()
    denoiser = Denoiser(rec, alphas_cumprod(), unet_kwargs={"cross_attention_kwargs": {"scale": 0.5}})
    cond, uncond = prompt_pair()
    x = initial_noise(batch=3) * 2.0
    out = denoiser(x, 2.0, cond, uncond, cfg_scale=7.5)
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert call["sample"].shape[0] == 6
    assert torch.equal(call["context"][:3], uncond.hidden_states.expand(3, -1, -1))
    assert torch.equal(call["context"][3:], cond.hidden_states.expand(3, -1, -1))
    assert call["kwargs"] == {"cross_attention_kwargs": {"scale": 0.5}}
    only_cond, only_uncond = (Denoiser(RecordingUNet(), alphas_cumprod())(x, 2.0, c) for c in (cond, uncond))
    torch.testing.assert_close(out, only_uncond + 7.5 * (only_cond - only_uncond))


def test_no_uncond_pass_without_guidance():
    rec = RecordingUNet()
    denoiser = Denoiser(rec, alphas_cumprod())
    cond, uncond = prompt_pair()
    x = initial_noise(batch=2)
    a = denoiser(x, 3.0, cond, uncond, cfg_scale=1.0)
    b = denoiser(x, 3.0, cond)
    assert [c["sample"].shape[0] for c in rec.calls] == [2, 2]
    assert torch.equal(a, b)


def test_per_image_sigmas_and_quantized_timesteps():
    rec = RecordingUNet()
    denoiser = Denoiser(rec, alphas_cumprod(), quantize=True)
    sigmas = torch.stack([denoiser.t_to_sigma(torch.tensor(100.3)), denoiser.t_to_sigma(torch.tensor(700.7))])
    denoiser(initial_noise(batch=2), sigmas, prompt_pair()[0])
    assert rec.calls[0]["timestep"].tolist() == [100.0, 701.0]


def test_prompt_and_negative_of_different_lengths_are_refused():
    cond = Conditioning(torch.zeros(1, 154, CONTEXT_DIM))
    uncond = Conditioning(torch.zeros(1, 77, CONTEXT_DIM))
    with pytest.raises(StablekitError, match="154 vs 77"):
        Denoiser(RecordingUNet(), alphas_cumprod())(initial_noise(), 1.0, cond, uncond, cfg_scale=7.0)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(StablekitError, match="sample"):
        Denoiser(None, alphas_cumprod(), "sample")


def test_cfg_batch_equals_separate_unet_calls(unet):
    denoiser = Denoiser(unet, alphas_cumprod(), "v_prediction")
    cond, uncond = prompt_pair()
    x = initial_noise(batch=2) * 3.0
    with torch.no_grad():
        guided = denoiser(x, 3.0, cond, uncond, cfg_scale=6.0)
        c, u = denoiser(x, 3.0, cond), denoiser(x, 3.0, uncond)
    torch.testing.assert_close(guided, u + 6.0 * (c - u), rtol=1e-5, atol=1e-5)


def test_controlnet_residuals_reach_the_unet(unet):
    """A ControlNet plugs in as a `control` callable; zero-initialised it changes nothing."""
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16)).eval()
    hint = torch.rand(1, 3, 64, 64)
    seen: list[UNetInput] = []

    def control(inp: UNetInput) -> ControlResiduals:
        seen.append(inp)
        down, mid = controlnet(inp.sample, inp.timestep, encoder_hidden_states=inp.encoder_hidden_states,
                               controlnet_cond=hint.expand(inp.sample.shape[0], -1, -1, -1), return_dict=False)
        return ControlResiduals(down, mid)

    denoiser = Denoiser(unet, alphas_cumprod())
    cond, uncond = prompt_pair()
    x = initial_noise() * 5.0
    with torch.no_grad():
        plain = denoiser(x, 5.0, cond, uncond, cfg_scale=4.0)
        zero_init = denoiser(x, 5.0, cond, uncond, cfg_scale=4.0, control=control)
        for p in controlnet.parameters():  # leave the zero-initialised state
            p.add_(torch.randn_like(p) * 0.05)
        controlled = denoiser(x, 5.0, cond, uncond, cfg_scale=4.0, control=control)
        fixed = control(seen[-1])  # one image's residuals spread over both CFG halves
        halves = ControlResiduals([r[:1] for r in fixed.down], fixed.mid[:1])
        spread = denoiser(x, 5.0, cond, uncond, cfg_scale=4.0, control=halves)
    assert seen[0].sample.shape[0] == 2 and torch.equal(seen[0].encoder_hidden_states[1:], cond.hidden_states)
    torch.testing.assert_close(zero_init, plain)
    assert (controlled - plain).abs().max() > 1e-3
    assert torch.isfinite(spread).all() and (spread - plain).abs().max() > 1e-3


def test_sdxl_unet_gets_pooled_embeddings_and_time_ids():
    config = tiny_configs("sdxl")["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config).eval()
    denoiser = Denoiser(unet, alphas_cumprod())
    g = torch.Generator().manual_seed(4)
    ctx_dim, pooled_dim = config["cross_attention_dim"], config["projection_class_embeddings_input_dim"] - 6 * 8
    cond = Conditioning(torch.randn(1, 77, ctx_dim, generator=g), torch.randn(1, pooled_dim, generator=g))
    uncond = Conditioning(torch.randn(1, 77, ctx_dim, generator=g), torch.randn(1, pooled_dim, generator=g))
    time_ids = torch.tensor([64.0, 64.0, 0.0, 0.0, 64.0, 64.0])
    sigma, x = 4.0, initial_noise() * 4.0
    with torch.no_grad():
        ours = denoiser(x, sigma, cond, uncond, cfg_scale=5.0, added_time_ids=time_ids)
        # as StableDiffusionXLPipeline calls the UNet
        eps_u, eps_c = unet(torch.cat([x, x]) / (sigma**2 + 1) ** 0.5, denoiser.sigma_to_t(torch.tensor(sigma)),
                            encoder_hidden_states=torch.cat([uncond.hidden_states, cond.hidden_states]),
                            added_cond_kwargs={"text_embeds": torch.cat([uncond.pooled, cond.pooled]),
                                               "time_ids": time_ids.expand(2, 6)}).sample.chunk(2)
    # guidance on x0 (ours) vs on eps (diffusers) differs only by rounding, of order sigma * |eps| * 1e-7
    torch.testing.assert_close(ours, x - sigma * (eps_u + 5.0 * (eps_c - eps_u)), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="pooled"):
        denoiser(x, sigma, Conditioning(cond.hidden_states), added_time_ids=time_ids)
