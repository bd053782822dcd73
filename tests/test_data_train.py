"""data/ with the training loop: an image-caption folder, cached latents and cached text states
feed the diffusion strategy, and a killed run resumes exactly."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fixtures import one_thread, tiny_components
from PIL import Image

from stablekit.data import DatasetConfig, encode_text, load_dataset
from stablekit.data.caches import CachedLatents, LatentCache, TextCache
from stablekit.train import TrainConfig, train
from stablekit.train.checkpoint import latest_checkpoint
from stablekit.train.strategies import DiffusionStrategy


class WithText:
    """Adds the strategy's "text" / "uncond" from a TextCache to CachedLatents batches."""

    def __init__(self, data, text: TextCache):
        self.data, self.text = data, text
        self.uncond = text.encode([""])["hidden"][0]

    def __len__(self):
        return len(self.data)

    def get_batch(self, indices, generator=None):
        batch = self.data.get_batch(indices, generator)
        return {**batch, "text": self.text.encode(batch["captions"])["hidden"], "uncond": self.uncond}


class Crash(Exception):
    pass


def _run(comps, tmp_path, out, crash_at=None):
    folder = tmp_path / "imgs"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (70, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(f"a picture number {i % 3}")
    data = WithText(CachedLatents(load_dataset(folder, DatasetConfig(resolution=64)), LatentCache(tmp_path / "cache", comps.vae)),
                    TextCache(tmp_path / "cache", [comps.text_encoder],
                              lambda c: {"hidden": encode_text(comps.text_encoder, comps.tokenizer, c)}))
    strategy = DiffusionStrategy(copy.deepcopy(comps.unet), comps.scheduler_config, caption_dropout=0.2)
    if crash_at is not None:
        real, calls = strategy.loss, {"n": 0}

        def loss(batch, generator):
            calls["n"] += 1
            if calls["n"] > crash_at:
                raise Crash()
            return real(batch, generator)

        strategy.loss = loss
    cfg = TrainConfig(out_dir=str(tmp_path / out), steps=4, batch_size=3, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                      sample_every=0, seed=1)
    return train(cfg, strategy, data, progress=False), data


def test_folder_dataset_trains_through_the_caches_and_resumes_exactly(tmp_path):
    comps = tiny_components("sd1")
    with one_thread():
        full, data = _run(comps, tmp_path, "a")
        assert len(data.data.cache) == 6 and len(data.text) == 4  # 6 images; 3 captions + ""
        with pytest.raises(Crash):
            _run(comps, tmp_path, "b", crash_at=3)
        resumed, _ = _run(comps, tmp_path, "b")
    assert all(np.isfinite(h["loss"]) for h in full["history"])
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    ref = torch.load(latest_checkpoint(tmp_path / "a"), weights_only=True)["strategy"]["unet"]
    got = torch.load(latest_checkpoint(tmp_path / "b"), weights_only=True)["strategy"]["unet"]
    assert all(torch.equal(got[k], ref[k]) for k in ref)
