"""The one denoiser wrapper: a diffusers UNet seen by samplers as D(x, sigma) -> x0.

Samplers work in k-diffusion's space (Karras et al. 2022): x = x0 + sigma * eps, where sigma =
sqrt((1 - alphas_cumprod) / alphas_cumprod); the UNet was trained on x_t = x / sqrt(sigma^2 + 1)
at timestep t(sigma). Everything that changes what one model call returns lives here and only
here: the prediction type (eps / v -> x0), classifier-free guidance, SDXL's extra conditioning,
ControlNet residuals, extra UNet keyword arguments (LoRA scale) and the guidance options (CFG
rescale, FreeU, PAG: generate/guidance.py). Samplers never branch on any of it; per-step progress
and interrupts are the samplers' callback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from stablekit.components import PREDICTION_TYPES, module_dtype
from stablekit.errors import StablekitError
from stablekit.prompts.conditioning import Conditioning
from stablekit.samplers.schedules import sigma_to_t, t_to_sigma


@dataclass
class UNetInput:
    """One UNet call as the Denoiser is about to make it: what a ControlNet needs to compute its
    residuals for the same call. With CFG the batch is [uncond images..., cond images...]."""

    sample: Tensor  # the scaled latents x / sqrt(sigma^2 + 1), in the UNet's dtype
    timestep: Tensor  # [batch] training timesteps (fractional unless quantized)
    encoder_hidden_states: Tensor
    added_cond_kwargs: dict | None  # SDXL: text_embeds and time_ids
    sigma: Tensor  # [batch]
    uncond_rows: int = 0  # leading rows conditioned on the negative prompt (CFG); the rest are the prompt's


@dataclass
class ControlResiduals:
    """ControlNet output for one UNet call: added to the UNet's skip connections and middle block
    (diffusers' down_block_additional_residuals / mid_block_additional_residual). A batch of the
    images' size is applied to both halves of a CFG batch."""

    down: Sequence[Tensor]
    mid: Tensor


# A fixed ControlResiduals, or a function computing them per call (a ControlNet, several summed).
Control = Union[ControlResiduals, Callable[[UNetInput], ControlResiduals]]


def alphas_cumprod_from_config(scheduler_config: dict) -> Tensor:
    """The training noise schedule's alphas_cumprod, built by diffusers from the scheduler config
    (beta_schedule, betas, trained_betas, rescale_betas_zero_snr) so no formula is repeated here."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.clone()


class Denoiser:
    """D(x, sigma) for a diffusers UNet2DConditionModel.

    unet: the UNet; alphas_cumprod: its training schedule ([T] tensor); prediction_type:
    "epsilon" or "v_prediction". quantize: feed the UNet the nearest integer timestep instead of
    the interpolated one (k-diffusion's option; what diffusers' DPM-Solver and UniPC do with
    Karras sigmas). unet_kwargs: passed to every UNet call (e.g. cross_attention_kwargs={"scale":
    0.8} for a LoRA scale).
    """

    def __init__(self, unet, alphas_cumprod: Tensor, prediction_type: str = "epsilon", *,
                 quantize: bool = False, unet_kwargs: dict | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise StablekitError(f"unknown prediction type {prediction_type!r}; use one of {PREDICTION_TYPES}")
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32).detach().cpu().clone()
        if alphas_cumprod[-1] == 0:
            # zero terminal SNR: sigma_max would be infinite; diffusers' Euler uses the same stand-in
            alphas_cumprod[-1] = 2.0**-24
        self.unet = unet
        self.prediction_type = prediction_type
        self.quantize = quantize
        self.unet_kwargs = dict(unet_kwargs or {})
        self.alphas_cumprod = alphas_cumprod
        # float32, computed as diffusers computes them, so both see the same table
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.double().log()

    @classmethod
    def from_components(cls, components, **kwargs) -> "Denoiser":
        """The Denoiser of a loaded model (Components), from its scheduler config."""
        return cls(components.unet, alphas_cumprod_from_config(components.scheduler_config),
                   components.prediction_type, **kwargs)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Training timestep(s) for sigma(s): log-sigma interpolation (k-diffusion DiscreteSchedule)."""
        sigma = torch.as_tensor(sigma)
        return sigma_to_t(sigma.cpu(), self.log_sigmas, self.quantize).to(torch.float32).to(sigma.device)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return t_to_sigma(t.cpu(), self.log_sigmas).to(torch.float32).to(t.device)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning, uncond: Conditioning | None = None,
                 cfg_scale: float = 1.0, added_time_ids: Tensor | None = None,
                 control: Control | None = None, guidance=None) -> Tensor:
        """The denoised x0 for x at noise level sigma (a number, or one per image).

        CFG (Ho & Salimans 2022) runs as one UNet call on [uncond, cond] and returns
        uncond + cfg_scale * (cond - uncond); without uncond, or with cfg_scale 1 (where that is
        exactly cond), only cond is evaluated. cond/uncond with one row are used for every image.
        added_time_ids: SDXL's [batch or 1, 6] size/crop ids, the same for cond and uncond.
        guidance: GuidanceOptions (generate/guidance.py); None or all off takes exactly the plain path.
        """
        batch = x.shape[0]
        # timesteps from sigma where the caller keeps it (the CPU schedule): no device round trip
        given = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        t = self.sigma_to_t(given).to(x.device).expand(batch)
        sigma = given.to(x.device).expand(batch)
        guided = uncond is not None and cfg_scale != 1.0
        conds = [_rows(uncond, batch, "uncond"), _rows(cond, batch, "cond")] if guided else [_rows(cond, batch, "cond")]
        if guided and conds[0].hidden_states.shape[1] != conds[1].hidden_states.shape[1]:
            raise StablekitError(
                f"prompt and negative prompt encode to different lengths ({conds[1].hidden_states.shape[1]} vs "
                f"{conds[0].hidden_states.shape[1]} tokens); pad the shorter with empty-prompt chunks before guidance")
        if guidance is not None and guidance.changes_model:
            return self._guided(x, sigma, t, conds, guided, cfg_scale, added_time_ids, control, guidance)
        context = Conditioning.cat(conds)
        copies = len(conds)
        x_in = x.repeat(copies, *[1] * (x.ndim - 1))
        sigma_in = sigma.repeat(copies)
        model_output = self._unet(x_in, sigma_in, t.repeat(copies), context, added_time_ids, control,
                                  batch if guided else 0)
        denoised = self._to_x0(x_in, sigma_in, model_output)
        if not guided:
            return denoised
        uncond_x0, cond_x0 = denoised.chunk(2)
        return uncond_x0 + cfg_scale * (cond_x0 - uncond_x0)

    def _guided(self, x: Tensor, sigma: Tensor, t: Tensor, conds: list, guided: bool, cfg_scale: float,
                added_time_ids: Tensor | None, control: Control | None, guidance) -> Tensor:
        """The guidance options' path (generate/guidance.py): one UNet call on [uncond?, cond,
        perturbed cond?] with FreeU / PAG patched in, the predictions combined in the model's own
        prediction space (eps or v, as diffusers), then turned into x0 (an affine map, so plain CFG
        here equals CFG on x0)."""
        from stablekit.generate.guidance import combine, patched_unet

        if guidance.pag_scale:
            conds = [*conds, conds[-1]]  # the perturbed copy: cond again, identity self-attention
        copies = len(conds)
        x_in = x.repeat(copies, *[1] * (x.ndim - 1))
        sigma_in = sigma.repeat(copies)
        with patched_unet(self.unet, guidance, x.shape[0]):
            model_output = self._unet(x_in, sigma_in, t.repeat(copies), Conditioning.cat(conds), added_time_ids,
                                      control, x.shape[0] if guided else 0)
        return self._to_x0(x, sigma, combine(model_output, cfg_scale, guided, guidance))

    def _unet(self, x: Tensor, sigma: Tensor, timestep: Tensor, context: Conditioning, added_time_ids: Tensor | None,
              control: Control | None, uncond_rows: int = 0) -> Tensor:
        dtype = module_dtype(self.unet)
        c_in = _per_image(1 / (sigma**2 + 1) ** 0.5, x)
        inputs = UNetInput(
            sample=(x * c_in).to(dtype),
            timestep=timestep,
            encoder_hidden_states=context.hidden_states.to(x.device, dtype),
            added_cond_kwargs=self._added_cond_kwargs(context, added_time_ids, x),
            sigma=sigma,
            uncond_rows=uncond_rows,
        )
        kwargs = dict(self.unet_kwargs)
        if control is not None:
            residuals = control(inputs) if callable(control) else control
            kwargs["down_block_additional_residuals"] = [_to_batch(r, x.shape[0]) for r in residuals.down]
            kwargs["mid_block_additional_residual"] = _to_batch(residuals.mid, x.shape[0])
        out = self.unet(inputs.sample, inputs.timestep, encoder_hidden_states=inputs.encoder_hidden_states,
                        added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False, **kwargs)[0]
        return out.to(x.dtype)

    def _added_cond_kwargs(self, context: Conditioning, added_time_ids: Tensor | None, x: Tensor) -> dict | None:
        """SDXL's extra conditioning (diffusers' added_cond_kwargs); None for SD 1.x / 2.x UNets."""
        if getattr(self.unet.config, "addition_embed_type", None) != "text_time":
            return None
        if context.pooled is None or added_time_ids is None:
            raise ValueError("an SDXL UNet needs pooled text embeddings (Conditioning.pooled) and added_time_ids")
        time_ids = torch.as_tensor(added_time_ids).reshape(-1, 6)
        dtype = module_dtype(self.unet)
        return {"text_embeds": context.pooled.to(x.device, dtype),
                "time_ids": _to_batch(time_ids, x.shape[0]).to(x.device, dtype)}

    def _to_x0(self, x: Tensor, sigma: Tensor, model_output: Tensor) -> Tensor:
        s = _per_image(sigma, x)
        if self.prediction_type == "epsilon":
            return x - s * model_output
        # v = alpha * eps - sigma_t * x0 on the UNet's scale (Salimans & Ho 2022), here:
        # x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)
        return x / (s**2 + 1) - model_output * s / (s**2 + 1) ** 0.5


def _per_image(values: Tensor, x: Tensor) -> Tensor:
    return values.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)


def _rows(c: Conditioning, batch: int, what: str) -> Conditioning:
    """c with one row per image: as given, or its single row repeated."""
    rows = c.hidden_states.shape[0]
    if rows == batch:
        return c
    if rows == 1:
        return c.repeat(batch)
    raise ValueError(f"{what} has {rows} rows for a batch of {batch} images; give 1 or {batch}")


def _to_batch(t: Tensor, batch: int) -> Tensor:
    """t repeated to `batch` rows when it has 1 row, or half of them (one CFG half)."""
    rows = t.shape[0]
    if rows == batch:
        return t
    if batch % rows == 0:
        return t.repeat(batch // rows, *[1] * (t.ndim - 1))
    raise ValueError(f"a tensor with {rows} rows cannot be spread over a batch of {batch}")

