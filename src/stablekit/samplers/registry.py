"""The name tables: A1111 sampler and schedule names, ComfyUI names as aliases, per-sampler default
schedules, and `get_sigmas`, which turns (schedule, steps, model) into the sigmas a sampler visits.

Lookups are case-insensitive and ignore surrounding spaces; any other unknown name raises a
StablekitError listing the valid names (never a silent substitute).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from stablekit.errors import StablekitError
from stablekit.samplers import classic, dpmsolver, timestep, unipc
from stablekit.samplers.common import Sampler
from stablekit.samplers.schedules import SCHEDULES


@dataclass(frozen=True)
class SamplerSpec:
    """name: the A1111 label (what PNG parameters say); aliases: ComfyUI and old A1111 names;
    schedule: what "Automatic" means for it; discard_penultimate_sigma: A1111's DPM2 quirk (one
    extra step is computed and the next-to-last sigma dropped, avoiding a tiny final step)."""

    name: str
    fn: Sampler
    aliases: tuple[str, ...]
    schedule: str
    paper: str
    stochastic: bool = False
    discard_penultimate_sigma: bool = False


_SPECS = [
    SamplerSpec("Euler", classic.sample_euler, ("euler", "k_euler"), "Normal", "Karras et al. 2022"),
    SamplerSpec("Euler a", classic.sample_euler_ancestral, ("euler_ancestral", "k_euler_a", "k_euler_ancestral"),
                "Normal", "Karras et al. 2022; Ho et al. 2020", stochastic=True),
    SamplerSpec("Heun", classic.sample_heun, ("heun", "k_heun"), "Normal", "Karras et al. 2022"),
    SamplerSpec("DPM2", classic.sample_dpm_2, ("dpm_2", "k_dpm_2"), "Karras", "Lu et al. 2022 (DPM-Solver)",
                discard_penultimate_sigma=True),
    SamplerSpec("DPM2 a", classic.sample_dpm_2_ancestral, ("dpm_2_ancestral", "k_dpm_2_a"), "Karras",
                "Lu et al. 2022 (DPM-Solver)", stochastic=True, discard_penultimate_sigma=True),
    SamplerSpec("DPM++ 2S a", dpmsolver.sample_dpmpp_2s_ancestral, ("dpmpp_2s_ancestral", "k_dpmpp_2s_a"),
                "Karras", "Lu et al. 2022 (DPM-Solver++)", stochastic=True),
    SamplerSpec("DPM++ 2M", dpmsolver.sample_dpmpp_2m, ("dpmpp_2m", "k_dpmpp_2m"), "Karras",
                "Lu et al. 2022 (DPM-Solver++)"),
    SamplerSpec("DPM++ SDE", dpmsolver.sample_dpmpp_sde, ("dpmpp_sde", "k_dpmpp_sde"), "Karras",
                "Lu et al. 2022 (DPM-Solver++)", stochastic=True),
    SamplerSpec("DPM++ 2M SDE", dpmsolver.sample_dpmpp_2m_sde, ("dpmpp_2m_sde", "k_dpmpp_2m_sde"), "Exponential",
                "Lu et al. 2022 (DPM-Solver++)", stochastic=True),
    SamplerSpec("LMS", classic.sample_lms, ("lms", "k_lms"), "Normal", "Karras et al. 2022 (k-diffusion)"),
    SamplerSpec("DDIM", timestep.sample_ddim, ("ddim",), "DDIM", "Song et al. 2021"),
    SamplerSpec("PLMS", timestep.sample_plms, ("plms", "pndm"), "DDIM", "Liu et al. 2022 (PNDM)"),
    SamplerSpec("UniPC", unipc.sample_unipc, ("uni_pc", "unipc"), "SGM Uniform", "Zhao et al. 2023"),
    SamplerSpec("UniPC bh2", partial(unipc.sample_unipc, variant="bh2"), ("uni_pc_bh2",), "SGM Uniform",
                "Zhao et al. 2023"),
    SamplerSpec("LCM", timestep.sample_lcm, ("lcm",), "LCM", "Luo et al. 2023", stochastic=True),
]

SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in _SPECS}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
SCHEDULE_NAMES: tuple[str, ...] = ("Automatic",) + tuple(SCHEDULES)


def _key(name: str) -> str:
    return name.strip().lower()


_SAMPLER_INDEX = {_key(a): spec.name for spec in _SPECS for a in (spec.name, *spec.aliases)}
_SCHEDULE_INDEX = {_key(a): canon for canon, (_, aliases) in SCHEDULES.items() for a in (canon, *aliases)}
_SCHEDULE_INDEX["automatic"] = "Automatic"


def _aliases_text(table: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{name} ({', '.join(aliases)})" if aliases else name for name, aliases in table.items())


def get_sampler_spec(name: str) -> SamplerSpec:
    """The table entry for a sampler name (A1111 label or alias, any case)."""
    canon = _SAMPLER_INDEX.get(_key(name)) if isinstance(name, str) else None
    if canon is None:
        valid = _aliases_text({s.name: s.aliases for s in _SPECS})
        raise StablekitError(f"unknown sampler {name!r}; use one of: {valid}")
    return SAMPLERS[canon]


def get_sampler(name: str) -> Sampler:
    """The sampler function for a name: `fn(model, x, sigmas, *, extra_args, callback, noise)`."""
    return get_sampler_spec(name).fn


def _canonical_schedule(schedule: str) -> str:
    canon = _SCHEDULE_INDEX.get(_key(schedule)) if isinstance(schedule, str) else None
    if canon is None:
        valid = _aliases_text({"Automatic": ()} | {k: v[1] for k, v in SCHEDULES.items()})
        raise StablekitError(f"unknown schedule {schedule!r}; use one of: {valid}")
    return canon


def resolve_schedule(schedule: str, sampler: str | None = None) -> str:
    """The canonical schedule name; "Automatic" becomes the sampler's default ("Normal" when no
    sampler is given)."""
    canon = _canonical_schedule(schedule)
    if canon == "Automatic":
        return get_sampler_spec(sampler).schedule if sampler is not None else "Normal"
    return canon


def get_schedule(schedule: str, sampler: str | None = None):
    """The schedule function `fn(steps, model_sigmas) -> sigmas` for a name (see resolve_schedule)."""
    return SCHEDULES[resolve_schedule(schedule, sampler)][0]


def model_sigmas(denoiser_or_model_sigmas) -> Tensor:
    """The model's ascending discrete sigmas, from a Denoiser (its .sigmas) or the tensor itself."""
    sigmas = getattr(denoiser_or_model_sigmas, "sigmas", denoiser_or_model_sigmas)
    sigmas = torch.as_tensor(sigmas).detach().cpu()
    if sigmas.ndim != 1 or len(sigmas) < 2 or not bool((sigmas[1:] > sigmas[:-1]).all()) or sigmas[0] <= 0:
        raise ValueError("model sigmas must be a 1-D ascending tensor of positive values (Denoiser.sigmas)")
    return sigmas


@dataclass(frozen=True)
class Sampling:
    """A sampler and a schedule, resolved once from user names into what travels through generation.

    sampler: the table entry (its `.name` is A1111's canonical label, what PNG text carries);
    schedule: the canonical schedule label as asked ("Automatic" stays "Automatic", as A1111
    writes it); schedule_used: the schedule that actually runs ("Automatic" -> the sampler's own).
    """

    sampler: SamplerSpec
    schedule: str
    schedule_used: str

    @property
    def fn(self) -> Sampler:
        return self.sampler.fn

    def sigmas(self, steps: int, denoiser_or_model_sigmas) -> Tensor:
        """The `steps + 1` descending sigmas (ending in 0) for a model; A1111's DPM2 quirk (one
        extra step computed, the penultimate sigma dropped) is applied for DPM2 and DPM2 a."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise StablekitError(f"steps must be a positive whole number (got {steps!r})")
        table = model_sigmas(denoiser_or_model_sigmas)
        fn = SCHEDULES[self.schedule_used][0]
        if not self.sampler.discard_penultimate_sigma:
            return fn(steps, table)
        sigmas = fn(steps + 1, table)
        return torch.cat([sigmas[:-2], sigmas[-1:]])


def resolve_sampling(sampler: "str | SamplerSpec | Sampling", schedule: str = "Automatic") -> Sampling:
    """Resolve a sampler name (A1111 label or ComfyUI alias, any case) and a schedule name once.

    An already resolved Sampling is returned as is. Unknown names raise a StablekitError listing
    the valid ones.
    """
    if isinstance(sampler, Sampling):
        return sampler
    spec = sampler if isinstance(sampler, SamplerSpec) else get_sampler_spec(sampler)
    canon = _canonical_schedule(schedule)
    return Sampling(spec, canon, spec.schedule if canon == "Automatic" else canon)


def get_sigmas(schedule: str, steps: int, denoiser_or_model_sigmas, *, sampler: str | None = None) -> Tensor:
    """The `steps + 1` descending sigmas (ending in 0) for a schedule and a model.

    `denoiser_or_model_sigmas` is a Denoiser or the model's ascending discrete sigmas. With
    `sampler`, "Automatic" resolves to that sampler's default schedule and A1111's DPM2 quirk
    (discard the penultimate sigma) is applied, as A1111 does for DPM2 and DPM2 a. Without it,
    "Automatic" means "Normal" and no quirk applies (see `Sampling.sigmas`).
    """
    if sampler is not None:
        return resolve_sampling(sampler, schedule).sigmas(steps, denoiser_or_model_sigmas)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise StablekitError(f"steps must be a positive whole number (got {steps!r})")
    return get_schedule(schedule)(steps, model_sigmas(denoiser_or_model_sigmas))


def split_legacy_sampler_name(label: str) -> tuple[str, str]:
    """(sampler, schedule) for an A1111 sampler label, including the pre-1.9 labels that carried
    the schedule ("DPM++ 2M Karras" -> ("DPM++ 2M", "Karras")); plain labels give "Automatic"."""
    if _key(label) in _SAMPLER_INDEX:
        return get_sampler_spec(label).name, "Automatic"
    for suffix in ("Karras", "Exponential"):
        head = label.strip()[: -len(suffix)]
        if _key(label).endswith(" " + suffix.lower()) and _key(head) in _SAMPLER_INDEX:
            return get_sampler_spec(head).name, suffix
    return get_sampler_spec(label).name, "Automatic"  # raises, listing the valid names
