"""UniPC: Zhao et al. (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models", multistep, data prediction, B(h) variants bh1 / bh2.

Written in lambda = -log(sigma) on x = x_t / alpha_t, where the paper's update
x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0 - alpha_t B(h) sum(rho_k D_k)
loses every alpha. It follows diffusers' UniPCMultistepScheduler step for step (lower order for
warm-up and at the end, no corrector after the last step), so with the same sigmas the two agree.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from stablekit.samplers.common import Callback, Model, args, report
from stablekit.samplers.noise import NoiseSource


def _unipc_update(x: Tensor, lams: list[float], ms: list[Tensor], lam_t: float, sigma_ratio: float,
                  order: int, variant: str, model_t: Tensor | None = None) -> Tensor:
    """One UniP (model_t None) or UniC (model_t = the model output at the new point) update from
    the last point in `lams`/`ms` (lambdas and x0 predictions, newest last) to lambda_t."""
    lam_s, m0 = lams[-1], ms[-1]
    h = lam_t - lam_s
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[-(k + 1)] - lam_s) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial = 1
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)

    x_t = sigma_ratio * x - h_phi_1 * m0
    if model_t is None:  # predictor UniP-p
        if not d1s:
            return x_t
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()  # corrector UniC-p
    res = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return x_t - b_h * (res + rhos[-1] * (model_t - m0))


@torch.no_grad()
def sample_unipc(model: Model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise: NoiseSource | None = None,
                 order: int = 3, variant: str = "bh1") -> Tensor:
    """UniPC multistep (Zhao et al. 2023, Algorithms 2-3): predictor UniP-p then, after each new
    model call, corrector UniC-p reusing that call. Order ramps up from 1 and comes down for the
    final steps (diffusers' lower_order_final). The last step to sigma 0 returns the denoised
    prediction. Defaults (bh1, order 3) are A1111's and ComfyUI's "uni_pc"; diffusers' default
    is bh2, order 2."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', not {variant!r}")
    extra_args = args(extra_args)
    n = len(sigmas) - 1
    lams: list[float] = []
    ms: list[Tensor] = []
    x_last, last_order = None, 0
    for i in range(n):
        denoised = model(x, sigmas[i], **extra_args)
        lam_i = -math.log(float(sigmas[i]))
        if x_last is not None:  # correct the point the predictor reached, with its model output
            ratio = float(sigmas[i]) / float(sigmas[i - 1])
            x = _unipc_update(x_last, lams, ms, lam_i, ratio, last_order, variant, model_t=denoised)
        report(callback, i, sigmas, x, denoised)
        lams, ms = (lams + [lam_i])[-order:], (ms + [denoised])[-order:]
        this_order = min(order, n - i, len(ms))
        x_last, last_order = x, this_order
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            ratio = float(sigmas[i + 1]) / float(sigmas[i])
            x = _unipc_update(x, lams, ms, -math.log(float(sigmas[i + 1])), ratio, this_order, variant)
    return x
