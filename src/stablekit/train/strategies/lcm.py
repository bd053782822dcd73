"""LCM-LoRA: latent consistency distillation into a LoRA (Luo et al. 2023, "Latent Consistency
Models" and "LCM-LoRA: A Universal Stable-Diffusion Acceleration Module").

The student is the base UNet plus a LoRA; the teacher is the same UNet with the LoRA switched off
(no second copy in memory). Per item, as diffusers' examples/consistency_distillation/
train_lcm_distill_lora_sd_wds.py (the reference) does:
  1. pick a solver index n of the `ddim_steps`-step DDIM schedule (timesteps 19, 39, ..., 999 for
     50 steps): start t = t_n, end s = t_n - k with the skipping interval k = 1000 / ddim_steps;
  2. noise the latents to t (forward process);
  3. student: f(x_t, t) = c_skip(t) x_t + c_out(t) x0_student(x_t, t), with the consistency
     boundary scalings (sigma_data 0.5, timesteps scaled by `timestep_scaling`), so f(x, 0) = x;
  4. teacher: one DDIM step t -> s on the CFG estimate (x0 and eps both guided) with a guidance
     scale drawn uniformly in [cfg_min, cfg_max] (LCM's w = scale - 1);
  5. target: f(x_s, s) of the same student under no_grad (stop-gradient; LCM-LoRA uses no EMA
     target network);
  6. pseudo-Huber loss sqrt((f - target)^2 + c^2) - c (c = huber_c), or plain L2.
The LoRA needs no guidance embedding, so generation runs any LCM sampler with CFG about 1-2.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from stablekit.train.strategies.lora import LoraStrategy

LOSS_TYPES = ("huber", "l2")


@contextmanager
def adapters_off(module: torch.nn.Module):
    """The base model inside `module`: every peft adapter layer passes its input through unchanged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # peft marks the adapter trainable again: all of the LoRA trains


def boundary_scalings(t: torch.Tensor, timestep_scaling: float, sigma_data: float = 0.5):
    """(c_skip, c_out) of the consistency parameterisation on discrete timesteps (diffusers'
    LCMScheduler.get_scalings_for_boundary_condition_discrete): c_skip(0) = 1, c_out(0) = 0."""
    scaled = timestep_scaling * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def x0_and_eps(out: torch.Tensor, x_t: torch.Tensor, acp: torch.Tensor, prediction_type: str):
    """The model's clean-sample and noise estimates from its output (eps or v parameterisation)."""
    a, s = acp.sqrt(), (1 - acp).sqrt()
    if prediction_type == "v_prediction":
        return a * x_t - s * out, a * out + s * x_t
    return (x_t - s * out) / a, out


def ddim_solver(alphas_cumprod: torch.Tensor, ddim_steps: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(timesteps t_n, alpha-bar at t_n - k, k) of the reference's DDIM solver: t_n = (n + 1) k - 1."""
    total = len(alphas_cumprod)
    k = total // ddim_steps
    timesteps = torch.arange(1, ddim_steps + 1) * k - 1
    prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[timesteps[:-1]]])
    return timesteps, prev, k


@dataclass
class LcmStrategy(LoraStrategy):
    conv: bool = True  # the reference adapts the ResNet and sampling convolutions too
    cfg_min: float = 6.0  # teacher CFG scale range (the reference's w in [5, 15] is scale - 1)
    cfg_max: float = 16.0
    ddim_steps: int = 50  # DDIM solver steps over the 1000 training timesteps: skipping interval k = 20
    loss_type: str = "huber"
    huber_c: float = 0.001
    timestep_scaling: float = 10.0
    sampler: str = "LCM"  # validation grid sampler (the grid's steps and CFG come from SampleSettings)
    name: str = "lcm"

    def __post_init__(self):
        super().__post_init__()
        self.solver_timesteps, self.solver_prev, self.skip = ddim_solver(self.alphas_cumprod, self.ddim_steps)

    def loss(self, batch: dict, rng):
        c = self.components
        unet = c.unet
        self.set_train(True)
        x0 = self.latents(batch["pixels"])
        b, dev = len(x0), x0.device
        context, pooled = self.encode_captions(list(batch["captions"]))
        uncond, uncond_pooled = self.encode_captions([""] * b)
        added, added_uncond = self._added(batch, pooled), self._added(batch, uncond_pooled)

        index = rng.randint(self.ddim_steps, b).to(dev)
        start = self.solver_timesteps.to(dev)[index]
        end = (start - self.skip).clamp(min=0)
        acp = self.alphas_cumprod.to(dev)
        acp_start, acp_end = acp[start].view(b, 1, 1, 1), acp[end].view(b, 1, 1, 1)
        noise = rng.randn(b, *x0.shape[1:]).to(x0)
        x_t = acp_start.sqrt() * x0 + (1 - acp_start).sqrt() * noise
        scale = self.cfg_min + (self.cfg_max - self.cfg_min) * rng.rand(b).to(dev)
        w = (scale - 1).view(b, 1, 1, 1)  # LCM's guidance: cond + w (cond - uncond)
        dtype = next(unet.parameters()).dtype

        def run(x, t, ctx, extra):
            return unet(x.to(dtype), t, ctx.to(dtype), added_cond_kwargs=extra).sample.float()

        skip_start, out_start = boundary_scalings(start, self.timestep_scaling)
        student_x0, _ = x0_and_eps(run(x_t, start, context, added), x_t, acp_start, self.prediction_type)
        prediction = skip_start * x_t + out_start * student_x0

        with torch.no_grad():
            with adapters_off(unet):  # the teacher: the base model, cond and uncond in one batch
                both = run(torch.cat([x_t, x_t]), torch.cat([start, start]), torch.cat([context, uncond]),
                           _cat(added, added_uncond))
            x0_c, eps_c = x0_and_eps(both[:b], x_t, acp_start, self.prediction_type)
            x0_u, eps_u = x0_and_eps(both[b:], x_t, acp_start, self.prediction_type)
            x0_g, eps_g = x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u)
            acp_prev = self.solver_prev.to(dev)[index].view(b, 1, 1, 1)
            x_prev = acp_prev.sqrt() * x0_g + (1 - acp_prev).sqrt() * eps_g  # one DDIM step t -> s
            target_x0, _ = x0_and_eps(run(x_prev, end, context, added), x_prev, acp_end, self.prediction_type)
            skip_end, out_end = boundary_scalings(end, self.timestep_scaling)
            target = skip_end * x_prev + out_end * target_x0

        diff = prediction - target
        if self.loss_type == "huber":
            per_item = ((diff**2 + self.huber_c**2).sqrt() - self.huber_c).mean(dim=(1, 2, 3))
        else:
            per_item = (diff**2).mean(dim=(1, 2, 3))
        return per_item.mean(), {"consistency": per_item.detach().mean()}

    def _added(self, batch: dict, pooled):
        """SDXL's added conditioning (pooled text + size/crop ids), or None for SD 1.x/2.x."""
        if getattr(self.components.unet.config, "addition_embed_type", None) != "text_time":
            return None
        h, w = batch["pixels"].shape[-2:]
        time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=pooled.dtype, device=pooled.device)
        return {"text_embeds": pooled, "time_ids": time_ids.repeat(len(pooled), 1)}

    def samples(self, step: int):
        """The validation grid with the LCM sampler (few steps, low CFG): what the LoRA is for."""
        if not self.sample.prompts:
            return None
        from stablekit.data.validation import sample_grid

        self.set_train(False)
        return sample_grid(self.components, self.sample.prompts, self.sample.seed, self.sample.steps,
                           self.sample.cfg, sampler=self.sampler)


def _cat(a: dict | None, b: dict | None) -> dict | None:
    return None if a is None else {k: torch.cat([a[k], b[k]]) for k in a}
