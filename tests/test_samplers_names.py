"""Sampler and schedule names are resolved once; PNG text carries A1111's canonical names, checked by
reading our text back with the rules A1111 uses (modules/sd_samplers.py get_sampler_and_scheduler)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from stablekit.errors import StablekitError
from stablekit.generate.params import GenerationParams
from stablekit.generate.record import parameters_text
from stablekit.metadata import parse_parameters
from stablekit.samplers import SAMPLERS, SCHEDULE_NAMES, Sampling, resolve_sampling
from stablekit.samplers.schedules import SCHEDULES

# A1111 1.10's sampler names (sd_samplers_kdiffusion.samplers_k_diffusion, sd_samplers_timesteps)
# and schedulers (sd_schedulers.schedulers: name, label, aliases).
A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]
A1111_SCHEDULERS = [("automatic", "Automatic", []), ("uniform", "Uniform", []), ("karras", "Karras", []),
                    ("exponential", "Exponential", []), ("polyexponential", "Polyexponential", []),
                    ("sgm_uniform", "SGM Uniform", ["SGMUniform"]), ("kl_optimal", "KL Optimal", []),
                    ("align_your_steps", "Align Your Steps", []), ("simple", "Simple", []),
                    ("normal", "Normal", []), ("ddim", "DDIM", []), ("beta", "Beta", [])]
# Ours that A1111 does not have (it would read them as its default, DPM++ 2M / Automatic).
NOT_IN_A1111 = {"UniPC bh2"}
SCHEDULES_NOT_IN_A1111 = {"LCM"}


def a1111_reads(fields: dict) -> tuple[str, str]:
    """(sampler, schedule label) as A1111's get_sampler_and_scheduler reads infotext fields: an
    exact (case-sensitive) name lookup with DPM++ 2M as fallback; a schedule suffix on the sampler
    label ("DPM++ 2M Karras") is split off. (Its last step, turning the sampler's own default
    schedule into "Automatic", changes the label, not the meaning, and is left out.)"""
    by_key = {**{n: label for n, label, _ in A1111_SCHEDULERS}, **{label: label for _, label, _ in A1111_SCHEDULERS}}
    schedule = by_key.get(fields.get("Schedule type"), "Automatic")
    name = fields.get("Sampler") or A1111_SAMPLERS[0]
    for key, label, aliases in A1111_SCHEDULERS:
        for option in (label, key, *aliases):
            if name.endswith(" " + option):
                schedule, name = label, name[: -(len(option) + 1)]
                break
    return (name if name in A1111_SAMPLERS else A1111_SAMPLERS[0]), schedule


def _text(sampler_name: str, schedule_name: str) -> str:
    sampling = resolve_sampling(sampler_name, schedule_name)
    params = GenerationParams(prompt="a cat", steps=5, sampler=sampling.sampler.name, schedule=sampling.schedule,
                              width=64, height=64)
    return parameters_text(params, 1, -1, SimpleNamespace(hash="0123456789", name="tiny"))


@pytest.mark.parametrize("canonical", [n for n in SAMPLERS if n not in NOT_IN_A1111])
def test_every_alias_is_written_as_the_name_a1111_reads_back(canonical):
    spec = SAMPLERS[canonical]
    for given in (canonical, *spec.aliases, canonical.upper()):
        for schedule in (*SCHEDULE_NAMES, *[a for _, aliases in SCHEDULES.values() for a in aliases]):
            sampling = resolve_sampling(given, schedule)
            fields = parse_parameters(_text(given, schedule))
            assert fields["Sampler"] == canonical
            if sampling.schedule not in SCHEDULES_NOT_IN_A1111:
                assert a1111_reads(fields) == (canonical, sampling.schedule), (given, schedule)


def test_what_a1111_cannot_read_is_known():
    assert {n for n in SAMPLERS if n not in A1111_SAMPLERS} == NOT_IN_A1111
    assert set(SCHEDULES) - {label for _, label, _ in A1111_SCHEDULERS} == SCHEDULES_NOT_IN_A1111
    assert a1111_reads({"Sampler": "euler_ancestral"}) == ("DPM++ 2M", "Automatic")  # why aliases must not be written


def test_sampling_spec_resolves_once():
    s = resolve_sampling("dpmpp_2m", "automatic")
    assert isinstance(s, Sampling) and (s.sampler.name, s.schedule, s.schedule_used) == ("DPM++ 2M", "Automatic", "Karras")
    assert resolve_sampling(s) is s and resolve_sampling(SAMPLERS["Euler"], "karras").schedule == "Karras"
    assert len(resolve_sampling("DPM2", "Karras").sigmas(5, _model_sigmas())) == 6  # A1111's DPM2 quirk keeps 5 steps
    with pytest.raises(StablekitError, match="unknown sampler 'eulr'"):
        resolve_sampling("eulr")
    with pytest.raises(StablekitError, match="unknown schedule"):
        resolve_sampling("Euler", "karas")


def _model_sigmas():
    import torch

    return torch.linspace(0.03, 14.6, 1000)
