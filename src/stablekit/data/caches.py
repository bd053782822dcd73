"""On-disk caches of VAE latents and text-encoder outputs, reused across runs.

An entry's address is (content key, model, settings): the content key names the exact input
(an image's file hash + bucket + crop + flip, from ImageCaptionDataset batches' "keys", or the
caption text), the model is a fingerprint of the encoder's weights, and settings are whatever
else changes the output (dtype, clip skip, ...). Each (model, settings) pair has its own folder,
so a retrained VAE or another clip skip never reads a stale entry. Entries are appended in
safetensors shards written atomically (write to .tmp, rename), so a killed run loses nothing
already written and several processes can fill one cache.

When augmentations make caching pointless (random crops: a new crop every step) the dataset
says so (`latents_cacheable`); CachedLatents then encodes every batch and stores nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def fingerprint(*modules) -> str:
    """sha256 over the modules' state dicts (names, dtypes, shapes, bytes), 16 hex digits."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _digest(text: str, n: int = 32) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class TensorCache:
    """Named tensors per content key, in root/<kind>-<model>-<settings hash>/shard-*.safetensors."""

    kind = "tensors"

    def __init__(self, root: str | Path, model: str, settings: dict | None = None, memory_bytes: int = 256 << 20):
        settings = dict(settings or {})
        self.dir = Path(root) / f"{self.kind}-{model}-{_digest(json.dumps(settings, sort_keys=True, default=str), 12)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "settings.json"
        if not info.exists():  # for people reading the folder; never read back
            info.write_text(json.dumps({"kind": self.kind, "model": model, "settings": settings}, indent=2, default=str))
        self._index: dict[str, Path] | None = None
        # rows already read or computed, kept in memory up to memory_bytes: a training run asks for
        # the same few rows every epoch, and reopening a shard per row costs more than a tiny model's step
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._memory_left = memory_bytes

    def _load_index(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.dir.glob("shard-*.safetensors")):
                with safe_open(shard, "pt") as f:
                    for name in f.keys():
                        self._index[name.split("/")[0]] = shard
        return self._index

    def __len__(self) -> int:
        return len(self._load_index())

    def __contains__(self, key: str) -> bool:
        return _digest(key) in self._load_index()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        digest = _digest(key)
        if digest in self._memory:
            return self._memory[digest]
        shard = self._load_index().get(digest)
        if shard is None:
            return None
        prefix = digest + "/"
        with safe_open(shard, "pt") as f:
            row = {n[len(prefix):]: f.get_tensor(n) for n in f.keys() if n.startswith(prefix)}
        self._remember(digest, row)
        return row

    def _remember(self, digest: str, row: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in row.values())
        if size <= self._memory_left:
            self._memory[digest] = row
            self._memory_left -= size

    def put(self, entries: dict[str, dict[str, torch.Tensor]]) -> None:
        """Store {content key: {name: tensor}} as one new shard (atomic)."""
        if not entries:
            return
        tensors = {f"{_digest(k)}/{n}": t.detach().cpu().contiguous() for k, v in entries.items() for n, t in v.items()}
        path = self.dir / f"shard-{uuid.uuid4().hex[:16]}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        index = self._load_index()
        for k, row in entries.items():
            index[_digest(k)] = path
            self._remember(_digest(k), {n: t.detach().cpu().clone() for n, t in row.items()})

    def get_or_compute(self, keys: list[str], compute: Callable[[list[int]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batched tensors for `keys`: cached rows read, the missing ones computed in one call
        (compute(positions) -> {name: tensor [len(positions), ...]}) and stored."""
        rows = [self.get(k) for k in keys]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            fresh = compute(missing)
            new = {}
            for j, i in enumerate(missing):
                rows[i] = {n: t[j] for n, t in fresh.items()}
                new[keys[i]] = rows[i]
            self.put(new)
        return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}


class LatentCache(TensorCache):
    """VAE posterior means (unscaled: scaling_factor / shift_factor are applied on the way out,
    so a config change needs no re-encode), keyed by the batch's pixel keys."""

    kind = "latents"

    def __init__(self, root: str | Path, vae, settings: dict | None = None):
        self.vae = vae
        dtype = next(vae.parameters()).dtype
        super().__init__(root, fingerprint(vae), {"dtype": str(dtype), **(settings or {})})

    def encode(self, pixels: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Scaled latents [B, C, h, w] for pixels [B, 3, H, W] in [-1, 1] named by `keys`."""
        from stablekit.data.encode import encode_latents

        mean = self.get_or_compute(keys, lambda rows: {"mean": encode_latents(self.vae, [pixels[rows]])})["mean"]
        return scale_latents(self.vae, mean)


def scale_latents(vae, mean: torch.Tensor) -> torch.Tensor:
    """Posterior mean -> the latents the UNet sees (SD: x scaling_factor; SDXL/SD3: shift first)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (mean - shift) * vae.config.scaling_factor


class TextCache(TensorCache):
    """Text-encoder outputs per caption. `encode_fn(captions) -> {name: tensor [B, ...]}` is the
    encoder call (e.g. hidden states, and pooled for SDXL); settings name what else changes it
    (clip skip, which encoders)."""

    kind = "text"

    def __init__(self, root: str | Path, text_encoders: list, encode_fn: Callable[[list[str]], dict[str, torch.Tensor]],
                 settings: dict | None = None):
        self.encode_fn = encode_fn
        super().__init__(root, fingerprint(*text_encoders), settings)

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.get_or_compute(captions, lambda rows: self.encode_fn([captions[i] for i in rows]))


class CachedLatents:
    """An ImageCaptionDataset whose batches carry "latents" (scaled) instead of "pixels", read
    from a LatentCache; with random crops (dataset.latents_cacheable False) every batch is
    encoded and nothing is stored. Everything else in the batch is passed through."""

    def __init__(self, dataset, cache: LatentCache):
        self.dataset, self.cache = dataset, cache
        self.caching = bool(getattr(dataset, "latents_cacheable", False))

    def __len__(self) -> int:
        return len(self.dataset)

    def batch_order(self, seed: int, batch_size: int):
        return self.dataset.batch_order(seed, batch_size)

    def get_batch(self, indices, generator: torch.Generator | None = None) -> dict:
        from stablekit.data.encode import encode_latents

        batch = dict(self.dataset.get_batch(indices, generator))
        pixels = batch.pop("pixels")
        if self.caching:
            batch["latents"] = self.cache.encode(pixels, batch["keys"])
        else:
            batch["latents"] = scale_latents(self.cache.vae, encode_latents(self.cache.vae, [pixels]))
        return batch
