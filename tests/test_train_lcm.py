"""`stablekit train lcm` (train/strategies/lcm.py): the LCM-LoRA pieces against diffusers' own,
what trains, and the exported LoRA (kohya and PEFT) in our loader and in diffusers."""
from __future__ import annotations

import copy

import pytest
import torch
from adapter_fixtures import diffusers_pipe, unet_inputs, unet_out
from fixtures import tiny_components
from safetensors.torch import load_file
from train_fixtures import TinyImages

from stablekit.errors import StablekitError
from stablekit.generate.denoiser import alphas_cumprod_from_config
from stablekit.train.methods import resolve
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies.lcm import LcmStrategy, adapters_off, boundary_scalings, ddim_solver, x0_and_eps
from stablekit.train.run import run

_BUILT = {}
FAST = dict(steps=2, batch_size=2, sample_every=0, progress=False, tensorboard=False, rank=4, alpha=4.0, lr=1e-2,
            warmup_steps=0, cache_dir="off")


def tiny(arch="sd1"):
    if arch not in _BUILT:
        _BUILT[arch] = tiny_components(arch)
    return copy.deepcopy(_BUILT[arch])


def test_solver_and_boundary_scalings_match_diffusers():
    from diffusers import LCMScheduler

    acp = alphas_cumprod_from_config(tiny().scheduler_config)
    timesteps, prev, k = ddim_solver(acp, 50)
    assert k == 20 and timesteps.tolist() == list(range(19, 1000, 20))
    assert prev[0] == acp[0] and torch.equal(prev[1:], acp[timesteps[:-1]])  # alpha-bar at t_n - k
    lcm = LCMScheduler(timestep_scaling=10.0)
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t, 10.0)
    for i, step in enumerate(t.tolist()):
        want_skip, want_out = lcm.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(float(want_skip), rel=1e-6)
        assert c_out[i].item() == pytest.approx(float(want_out), rel=1e-6, abs=1e-9)
    assert c_skip[0].item() == 1 and c_out[0].item() == 0  # f(x, 0) = x: the consistency boundary condition


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_and_eps_invert_the_forward_process(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    acp = torch.tensor([0.9, 0.5, 0.01]).view(3, 1, 1, 1)
    x_t = acp.sqrt() * x0 + (1 - acp).sqrt() * eps
    out = eps if prediction_type == "epsilon" else acp.sqrt() * eps - (1 - acp).sqrt() * x0
    got_x0, got_eps = x0_and_eps(out, x_t, acp, prediction_type)
    assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, eps, atol=1e-5)


def test_teacher_is_the_base_model_and_the_lora_stays_trainable():
    base = tiny()
    s = LcmStrategy(components=tiny(), rank=4, alpha=4.0, cache_dir="")
    for n, p in s.components.unet.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # a LoRA that changes the output
    inputs = unet_inputs(base)
    with torch.no_grad():
        want, student = unet_out(base, inputs), unet_out(s.components, inputs)
        with adapters_off(s.components.unet):
            teacher = unet_out(s.components, inputs)
    assert torch.equal(teacher, want) and not torch.allclose(student, want, atol=1e-3)
    trainable = {n for n, p in s.components.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".resnets." in n for n in trainable)  # convolutions too (the reference's targets)


def _reference_loss(s: LcmStrategy, teacher_unet, batch: dict, gen: torch.Generator, w_min: float, w_max: float):
    """One step of diffusers' train_lcm_distill_lora_sd_wds.py written out from its source: DDIMSolver
    (ddim_timesteps = arange(1, N + 1) * k - 1, alpha-bar prev = [acp[0]] + acp[t[:-1]]), start - k
    clamped at 0, add_noise, the LCM-formulation CFG with w = scale - 1, a separate frozen teacher,
    the student under no_grad as the target, and pseudo-Huber on the mean."""
    import numpy as np

    acp = s.alphas_cumprod.double().numpy()
    k = len(acp) // s.ddim_steps
    ddim_t = (np.arange(1, s.ddim_steps + 1) * k).round().astype(np.int64) - 1
    prev = torch.from_numpy(np.asarray([acp[0]] + acp[ddim_t[:-1]].tolist())).float()
    ddim_t = torch.from_numpy(ddim_t)
    acp = s.alphas_cumprod
    x0 = s.latents(batch["pixels"])
    b = len(x0)
    ctx, _ = s.encode_captions(list(batch["captions"]))
    unc, _ = s.encode_captions([""] * b)
    index = torch.randint(0, s.ddim_steps, (b,), generator=gen)
    start = ddim_t[index]
    end = torch.where(start - k < 0, torch.zeros_like(start), start - k)
    noise = torch.randn(x0.shape, generator=gen)
    w = ((w_max - w_min) * torch.rand((b,), generator=gen) + w_min - 1).view(b, 1, 1, 1)

    def col(v, t):
        return v[t].view(b, 1, 1, 1)

    def scal(t):
        st = 10.0 * t.float()
        return (0.25 / (st**2 + 0.25)).view(b, 1, 1, 1), (st / (st**2 + 0.25) ** 0.5).view(b, 1, 1, 1)

    def x0_eps(out, x, t):  # v-prediction and epsilon, as the script's get_predicted_* functions
        a, sg = col(acp, t).sqrt(), (1 - col(acp, t)).sqrt()
        if s.prediction_type == "v_prediction":
            return a * x - sg * out, a * out + sg * x
        return (x - sg * out) / a, out

    x_t = col(acp, start).sqrt() * x0 + (1 - col(acp, start)).sqrt() * noise
    cs, co = scal(start)
    pred = cs * x_t + co * x0_eps(s.components.unet(x_t, start, ctx).sample, x_t, start)[0]
    with torch.no_grad():
        xc, ec = x0_eps(teacher_unet(x_t, start, ctx).sample, x_t, start)
        xu, eu = x0_eps(teacher_unet(x_t, start, unc).sample, x_t, start)
        x0g, eg = xc + w * (xc - xu), ec + w * (ec - eu)
        ap = prev[index].view(b, 1, 1, 1)
        x_prev = ap.sqrt() * x0g + (1 - ap).sqrt() * eg
        ce, coe = scal(end)
        target = ce * x_prev + coe * x0_eps(s.components.unet(x_prev, end, ctx).sample, x_prev, end)[0]
    return torch.mean(torch.sqrt((pred - target) ** 2 + s.huber_c**2) - s.huber_c)


@pytest.mark.parametrize("ddim_steps", [50, 4, 3])
def test_loss_is_the_reference_scripts_step(ddim_steps):
    """Our step against the reference's, written out independently, on the same draws: any change of the
    solver grid, the skip, the scalings, the CFG form or the target would move the loss."""
    teacher = tiny("sd2-v")  # v-prediction, as the embedded model
    s = LcmStrategy(components=tiny("sd2-v"), rank=4, alpha=4.0, cache_dir="", ddim_steps=ddim_steps,
                    cfg_min=2.0, cfg_max=6.0)
    assert s.prediction_type == "v_prediction"
    for n, p in s.components.unet.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # a student that differs from the teacher
    batch = TinyImages(n=4).get_batch([0, 1, 2, 3])
    loss, _ = s.loss(batch, BatchRandom(torch.Generator().manual_seed(3)))
    want = _reference_loss(s, teacher.unet, batch, torch.Generator().manual_seed(3), 2.0, 6.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    timesteps, _, k = ddim_solver(s.alphas_cumprod, ddim_steps)
    assert timesteps[-1] == 999 - 1000 % ddim_steps and k == 1000 // ddim_steps


@pytest.mark.parametrize("loss_type", ["huber", "l2"])
def test_loss_reaches_only_the_lora(loss_type):
    s = LcmStrategy(components=tiny(), rank=4, alpha=4.0, cache_dir="", loss_type=loss_type)
    batch = TinyImages(n=2).get_batch([0, 1])
    loss, metrics = s.loss(batch, BatchRandom(torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss) and loss.item() > 0 and metrics["consistency"] == loss.detach()
    loss.backward()
    grads = {n: p.grad for n, p in s.components.unet.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_A" not in n)  # lora_B starts at 0: its grads


def test_run_exports_kohya_and_peft_that_diffusers_and_our_loader_read(tmp_path):
    from stablekit.adapters import apply_adapters

    comps, ours, theirs, peft_theirs = tiny(), tiny(), tiny(), tiny()
    result = run("lcm", components=comps, dataset=TinyImages(), out=tmp_path, **FAST)
    kohya, peft = tmp_path / "lcm.safetensors", tmp_path / "lcm.peft.safetensors"
    assert result["artefact"] == str(kohya) and peft.exists()
    assert any(k.startswith("lora_unet_") and "resnets" in k for k in load_file(kohya))
    assert 'method = "lcm"' in (tmp_path / "lcm.toml").read_text()
    inputs = unet_inputs(ours)
    with torch.no_grad():
        before = unet_out(ours, inputs)
        trained = unet_out(comps, inputs)  # the strategy's own peft-wrapped UNet
        apply_adapters(ours, [(kohya, 1.0)])
        mine = unet_out(ours, inputs)
        diffusers_pipe(theirs).load_lora_weights(str(tmp_path), weight_name="lcm.safetensors")
        diffusers_pipe(peft_theirs).load_lora_weights(str(tmp_path), weight_name="lcm.peft.safetensors")
        assert not torch.allclose(trained, before, atol=1e-4)  # it trained
        for other in (mine, unet_out(theirs, inputs), unet_out(peft_theirs, inputs)):
            assert torch.allclose(other, trained, atol=1e-4, rtol=0)


def test_generation_with_the_lora_and_the_lcm_sampler(tmp_path):
    from stablekit.generate.pipeline import Pipeline

    run("lcm", components=tiny(), dataset=TinyImages(), out=tmp_path, **FAST)
    pipe = Pipeline(tiny(), progress=False)
    images = pipe.generate("a picture", steps=4, cfg=1.5, sampler="LCM", seed=1, width=64, height=64,
                           loras=[(str(tmp_path / "lcm.safetensors"), 1.0)])
    assert images[0].size == (64, 64)


def test_settings_defaults_toml_overrides_and_errors(tmp_path):
    s, tc = resolve("lcm", model="/no/such/model")  # SD-size: the reference script's settings
    assert (s.rank, s.cfg_min, s.cfg_max, s.ddim_steps, s.loss_type, s.huber_c) == (64, 6.0, 16.0, 50, "huber", 0.001)
    assert (s.sample_steps, s.sample_cfg, tc.lr, tc.warmup_steps) == (4, 1.0, 1e-4, 500)
    s, tc = resolve("lcm")  # the embedded model: the tiny recipe
    assert (s.rank, s.cfg_min, s.cfg_max, s.ddim_steps, tc.lr, tc.batch_size) == (16, 2.0, 6.0, 4, 5e-4, 64)
    toml = tmp_path / "lcm.toml"
    toml.write_text('method = "lcm"\ncfg-min = 2.0\nddim_steps = 25\n')
    s, _ = resolve("lcm", toml, cfg_max=4.0, model="/no/such/model")
    assert (s.cfg_min, s.cfg_max, s.ddim_steps) == (2.0, 4.0, 25)
    for bad in (dict(cfg_min=5.0, cfg_max=2.0), dict(loss_type="l1"), dict(train_text_encoder=True),
                dict(ddim_steps=0)):
        with pytest.raises(StablekitError):
            resolve("lcm", model="/no/such/model", **bad)


def test_cli_print_config(capsys):
    from stablekit.cli import main

    assert main(["train", "lcm", "--print-config", "--cfg-max", "3", "--loss-type", "l2"]) == 0
    out = capsys.readouterr().out
    assert 'method = "lcm"' in out and "cfg_max = 3.0" in out and 'loss_type = "l2"' in out
