"""data/caches: latents and text states on disk, keyed by content, model and settings; reused
across runs; bypassed when augmentations make a cache useless."""
from __future__ import annotations

import numpy as np
import torch
from fixtures import tiny_components
from PIL import Image

from stablekit.data import DatasetConfig, SubsetConfig, encode_text, load_dataset
from stablekit.data.caches import CachedLatents, LatentCache, TextCache, fingerprint
from stablekit.generate.pipeline import encode


class Counting:
    """Wrap vae.encode to count calls (the cache must not call it for stored keys)."""

    def __init__(self, vae):
        self.calls, real = 0, vae.encode

        def counted(*a, **k):
            self.calls += 1
            return real(*a, **k)

        vae.encode = counted


def _folder(path, n=3):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"caption {i}")
    return path


def test_latent_cache_hits_across_runs_and_matches_generate_encode(tmp_path):
    comps = tiny_components("sd1")
    ds = load_dataset(_folder(tmp_path / "f"), DatasetConfig(resolution=64))
    batch = ds.get_batch(np.arange(3))
    counter = Counting(comps.vae)
    first = LatentCache(tmp_path / "cache", comps.vae).encode(batch["pixels"], batch["keys"])
    assert counter.calls == 1
    again = LatentCache(tmp_path / "cache", comps.vae)  # a new run: read from disk
    assert len(again) == 3 and torch.equal(again.encode(batch["pixels"], batch["keys"]), first)
    assert counter.calls == 1
    images = ((batch["pixels"].permute(0, 2, 3, 1) + 1) / 2).numpy()
    assert torch.allclose(first, encode(comps, images), atol=1e-5)  # what img2img would start from
    # partly cached: only the new key is encoded
    counter.calls = 0
    more = ds.get_batch(np.array([0, 1]))
    LatentCache(tmp_path / "cache", comps.vae).encode(torch.cat([more["pixels"][:1], more["pixels"][1:]]),
                                                        [more["keys"][0], "other-key"])
    assert counter.calls == 1
    assert len(LatentCache(tmp_path / "cache", comps.vae)) == 4


def test_cache_keyed_by_model_and_settings(tmp_path):
    comps = tiny_components("sd1")
    a = LatentCache(tmp_path, comps.vae)
    assert LatentCache(tmp_path, comps.vae).dir == a.dir
    assert LatentCache(tmp_path, comps.vae, {"size": 64}).dir != a.dir
    with torch.no_grad():
        next(comps.vae.parameters()).add_(1e-3)  # a retrained VAE: a new folder, never a stale hit
    assert LatentCache(tmp_path, comps.vae).dir != a.dir
    assert fingerprint(comps.vae) != fingerprint(tiny_components("sd1").vae)


def test_partial_shard_is_ignored(tmp_path):
    comps = tiny_components("sd1")
    cache = LatentCache(tmp_path, comps.vae)
    (cache.dir / "shard-dead.tmp").write_bytes(b"half")
    cache.put({"k": {"mean": torch.ones(4, 2, 2)}})
    fresh = LatentCache(tmp_path, comps.vae)
    assert len(fresh) == 1 and torch.equal(fresh.get("k")["mean"], torch.ones(4, 2, 2)) and fresh.get("j") is None


def test_cached_latents_dataset_and_random_crop_bypass(tmp_path):
    comps = tiny_components("sd1")
    folder = _folder(tmp_path / "f")
    cached = CachedLatents(load_dataset(folder, DatasetConfig(resolution=64)), LatentCache(tmp_path / "c", comps.vae))
    b = cached.get_batch(np.arange(2))
    assert "pixels" not in b and b["latents"].shape == (2, 4, 8, 8) and b["captions"] == ["caption 0", "caption 1"]
    assert len(cached.cache) == 2
    cropping = load_dataset(folder, DatasetConfig(resolution=64, subset=SubsetConfig(random_crop=True)))
    bypass = CachedLatents(cropping, LatentCache(tmp_path / "c2", comps.vae))
    assert not bypass.caching
    assert bypass.get_batch(np.arange(2), torch.Generator().manual_seed(0))["latents"].shape == (2, 4, 8, 8)
    assert len(bypass.cache) == 0


def test_text_cache_encodes_each_caption_once(tmp_path):
    comps = tiny_components("sd1")
    calls = []

    def encode_fn(captions):
        calls.append(list(captions))
        return {"hidden": encode_text(comps.text_encoder, comps.tokenizer, captions)}

    cache = TextCache(tmp_path, [comps.text_encoder], encode_fn, {"clip_skip": 1})
    a = cache.encode(["a cat", "", "a dog"])["hidden"]
    b = TextCache(tmp_path, [comps.text_encoder], encode_fn, {"clip_skip": 1}).encode(["a dog", "a bird"])["hidden"]
    assert calls == [["a cat", "", "a dog"], ["a bird"]]
    assert torch.equal(b[0], a[2]) and a.shape == (3, 77, 32)
    assert TextCache(tmp_path, [comps.text_encoder], encode_fn, {"clip_skip": 2}).dir != cache.dir
