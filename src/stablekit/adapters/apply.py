"""Applying LoRA-like adapters to loaded Components: several at once, per-adapter scales, exact removal.

Weights are patched in place, as A1111 and ComfyUI do, so generation runs at the base model's
speed: each touched layer's original weight is kept once (a copy, in its own dtype), and the
patched weight is always recomputed from that copy, adapter by adapter in the order given
(float32 arithmetic, cast back once). Removing the adapters, or setting every scale to 0, copies
the originals back: the model is then the base bit for bit. Adapters with scale 0 are skipped.

Every file is matched against the model before any weight changes: a file with a layer that has
no module in the model, a module of another shape, or keys of no known kind fails with the counts
and examples (a LoRA for another architecture gets a one-line error naming both), so nothing is
ever half applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stablekit.adapters.math import patched_weight
from stablekit.errors import StablekitError
from stablekit.formats.lora_keys import (AdapterFile, MatchReport, addnet_hash, components_of, guess_arch,
                                        load_lora_file, resolve)

ARCH_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_ACTIVE = "applied_adapters"  # Components.extra key of the AppliedAdapters patched in


@dataclass
class LoadedAdapter:
    """One adapter file matched to the model, with its current scale."""

    name: str
    file: AdapterFile
    report: MatchReport
    scale: float


def _family(components) -> str:
    if components.is_sdxl:
        return "sdxl"
    return {"sd2-v": "sd2"}.get(components.arch, components.arch)


def match_adapter(adapter: AdapterFile, components) -> MatchReport:
    """Resolve an adapter against the model; StablekitError unless every layer matches."""
    report = resolve(adapter, components)
    if report.ok and report.matched:
        return report
    arch, family = guess_arch(adapter), _family(components)
    if arch != "unknown" and arch != family:
        raise StablekitError(
            f"{adapter.label} is a LoRA for {ARCH_NAMES.get(arch, arch)}, but the model is "
            f"{ARCH_NAMES.get(family, components.arch)}; use a LoRA made for this model")
    if not report.matched and not (report.unmatched or report.shape_mismatch):
        raise StablekitError(f"{adapter.label} holds no LoRA layers; {report.summary()}")
    raise StablekitError(f"{adapter.label} does not fit this {components.arch} model: {report.summary()}; nothing was applied")


class AppliedAdapters:
    """Adapters patched into a model's weights. `set_scales()` re-weights, `remove()` restores the base."""

    def __init__(self, components, adapters: list[LoadedAdapter]):
        active = components.extra.get(_ACTIVE)
        if active is not None and active.adapters:
            # a second set would back up already-patched weights as "originals"
            raise StablekitError(f"adapters {', '.join(active.names)} are already applied to this model; "
                                 "call .remove() on them first, or apply all adapters in one call")
        self.components = components
        self.adapters = adapters
        self._backups: dict[tuple[str, str], torch.Tensor] = {}
        self._modules = components_of(components)
        self._apply()
        components.extra[_ACTIVE] = self

    @property
    def hashes(self) -> dict[str, str]:
        """A1111's `Lora hashes`: name -> first 12 hex digits of the file's addnet hash."""
        return {a.name: addnet_hash(a.file.path)[:12] for a in self.adapters if a.file.path is not None}

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    @property
    def scales(self) -> list[float]:
        return [a.scale for a in self.adapters]

    def set_scales(self, scales: list[float]) -> None:
        """New per-adapter scales (same order as applied); weights are recomputed from the originals."""
        if len(scales) != len(self.adapters):
            raise StablekitError(f"{len(scales)} scales for {len(self.adapters)} adapters")
        for adapter, scale in zip(self.adapters, scales):
            adapter.scale = float(scale)
        self._apply()

    def remove(self) -> None:
        """Restore every patched weight to the original, bit for bit, and forget the adapters."""
        self._restore(self._backups)
        self._backups = {}
        self.adapters = []
        if self.components.extra.get(_ACTIVE) is self:
            del self.components.extra[_ACTIVE]

    def _weight(self, target: tuple[str, str]) -> torch.nn.Parameter:
        return self._modules[target[0]].get_submodule(target[1]).weight

    def _restore(self, targets) -> None:
        with torch.no_grad():
            for target in targets:
                self._weight(target).copy_(self._backups[target])

    @torch.no_grad()
    def _apply(self) -> None:
        active = [a for a in self.adapters if a.scale != 0]
        targets = {t for a in active for t in a.report.matched}
        self._restore([t for t in self._backups if t not in targets])
        for target in sorted(targets):
            weight = self._weight(target)
            if target not in self._backups:
                self._backups[target] = weight.detach().clone()
            new = self._backups[target]
            for adapter in active:
                patch = adapter.report.matched.get(target)
                if patch is not None:
                    new = patched_weight(patch, new, adapter.scale)
            weight.copy_(new.to(weight.dtype))


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """"path[:scale]" -> (path, scale); the scale defaults to 1 (a path may itself hold ":")."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def apply_adapters(components, adapters) -> AppliedAdapters:
    """Patch LoRA / LoCon / LoHa / LoKr / DoRA / PEFT adapters into `components` (in place).

    adapters: a list of (path or AdapterFile, scale), or of "path[:scale]" strings. Every file is
    read and matched before any weight changes (StablekitError with counts and examples if a
    file does not fit). Returns AppliedAdapters: `.set_scales([...])`, `.remove()`, `.names`.
    """
    loaded = []
    for item in adapters:
        source, scale = parse_adapter_spec(item) if isinstance(item, str) else item
        adapter = source if isinstance(source, AdapterFile) else load_lora_file(source)
        name = Path(adapter.path).stem if adapter.path else f"adapter{len(loaded)}"
        loaded.append(LoadedAdapter(name, adapter, match_adapter(adapter, components), float(scale)))
    return AppliedAdapters(components, loaded)


def find_adapter(name: str, folder) -> Path:
    """The LoRA file a prompt's `<lora:NAME:...>` means: NAME.safetensors anywhere under `folder`
    (A1111 matches the file name without suffix); StablekitError listing a few that exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StablekitError(f"LoRA folder {folder} does not exist; give --lora-dir an existing folder")
    files = sorted(folder.rglob("*.safetensors"))
    for path in files:
        if path.stem == name:
            return path
    known = ", ".join(p.stem for p in files[:5]) or "none"
    raise StablekitError(f"no LoRA named {name!r} in {folder} (found: {known}); check the name in <lora:{name}:...>")
