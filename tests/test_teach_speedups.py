"""Issue 8, teach helper: the encoder cache in the method strategies, DreamBooth buckets and the
tiny-model recipes of train/methods.py."""
from __future__ import annotations

import copy
import tomllib

import numpy as np
import pytest
import torch
from fixtures import tiny_components
from train_fixtures import TinyImages

from stablekit.train import methods
from stablekit.train.dreambooth import PriorPreservationData
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies.encoder_cache import cache_root, pixel_keys
from stablekit.train.strategies.finetune import FinetuneStrategy
from stablekit.train.strategies.lora import LoraStrategy

_TINY = {}


def tiny():
    if "sd1" not in _TINY:
        _TINY["sd1"] = tiny_components("sd1")
    return copy.deepcopy(_TINY["sd1"])


def _loss(strategy, batch):
    with torch.no_grad():
        return float(strategy.loss(batch, BatchRandom(torch.Generator().manual_seed(0)))[0])


class CountCalls:
    def __init__(self, module, name):
        self.n, real = 0, getattr(module, name)

        def counted(*a, **k):
            self.n += 1
            return real(*a, **k)

        setattr(module, name, counted)


def test_cached_loss_equals_uncached_and_the_cache_is_read_back(tmp_path):
    batch = TinyImages(n=2).get_batch(np.arange(2))
    plain = _loss(LoraStrategy(tiny(), cache_dir=""), batch)
    comps = tiny()
    vae, te = CountCalls(comps.vae, "encode"), CountCalls(comps.text_encoder, "forward")
    assert _loss(LoraStrategy(comps, cache_dir=str(tmp_path)), batch) == pytest.approx(plain, rel=1e-4)
    assert (vae.n, te.n) == (1, 1)
    again = tiny()  # a new run (new strategy, same weights) reads the disk cache: no encoder call
    vae2, te2 = CountCalls(again.vae, "encode"), CountCalls(again.text_encoder, "forward")
    second = LoraStrategy(again, cache_dir=str(tmp_path))
    assert _loss(second, batch) == pytest.approx(plain, rel=1e-4)
    assert (vae2.n, te2.n) == (0, 0)
    flipped = dict(batch, pixels=batch["pixels"].roll(1, -1))  # an augmentation (a shift) is new content: encoded again
    _loss(second, flipped)
    assert vae2.n == 1


def test_text_is_not_cached_when_the_text_encoder_trains(tmp_path):
    batch = TinyImages(n=2).get_batch(np.arange(2))
    s = FinetuneStrategy(tiny(), train_text_encoder=True, cache_dir=str(tmp_path))
    loss, _ = s.loss(batch, BatchRandom(torch.Generator().manual_seed(0)))
    loss.backward()
    assert s.encoder_cache().text is None
    assert s.components.text_encoder.get_input_embeddings().weight.grad is not None  # gradients reach it
    assert FinetuneStrategy(tiny(), cache_dir=str(tmp_path)).encoder_cache().text is not None


def test_cache_location_and_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEKIT_TRAIN_CACHE", str(tmp_path))
    assert cache_root(None) == tmp_path and cache_root("") is None and cache_root("x") == type(tmp_path)("x")
    monkeypatch.setenv("STABLEKIT_TRAIN_CACHE", "off")
    assert cache_root(None) is None
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1, 0, 0, 0] = 1e-7
    assert pixel_keys(a)[0] == pixel_keys(b)[0] and pixel_keys(a)[1] != pixel_keys(b)[1]


class TwoBuckets(TinyImages):
    """Items 0-2 are 64x64, items 3-4 are 64x96 (h x w): two buckets, as ImageCaptionDataset reports them."""

    def __init__(self):
        super().__init__(n=5)

    def buckets(self):
        return [np.array([0, 1, 2]), np.array([3, 4])]

    def get_batch(self, indices, generator=None):
        idx = np.asarray(indices)
        wide = idx >= 3
        assert wide.all() or not wide.any(), "a batch mixes buckets"
        batch = super().get_batch(idx, generator)
        if wide.all():
            batch["pixels"] = torch.nn.functional.interpolate(batch["pixels"], size=(64, 96))
        return batch


def test_dreambooth_batches_come_from_one_bucket():
    data = PriorPreservationData(TwoBuckets(), "a sks square", torch.zeros(4, 3, 64, 64), "a square")
    order = data.batch_order(seed=0, batch_size=2)
    covered, sizes = set(), set()
    for k in range(20):
        idx = order.indices(2 * k, 2)
        batch = data.get_batch(idx)  # TwoBuckets asserts one bucket per batch
        sizes.add(tuple(batch["pixels"].shape[-2:]))
        covered |= set(idx.tolist())
        assert len(set(batch["keys"])) >= 1 and all(isinstance(k, str) for k in batch["keys"])
    assert sizes == {(64, 64), (64, 96)} and covered == set(range(len(data)))
    class_only = data.get_batch(np.array([8, 8]))  # a class position of the wide bucket: class images resized
    assert class_only["is_reg"].all()
    assert tuple(class_only["pixels"].shape[-2:]) == tuple(data.get_batch(np.array([3]))["pixels"].shape[-2:])


def test_tiny_recipes_apply_only_to_tiny_models(monkeypatch, tmp_path):
    s, tc = methods.resolve("lora", check=False)  # "" = the embedded shapes model
    assert (tc.lr, tc.steps, tc.lr_schedule, s.conv, s.snr_gamma) == (3e-3, 800, "cosine", True, 5.0)
    s, tc = methods.resolve("lora", check=False, lr=1e-3, conv=False)  # the user's settings win
    assert (tc.lr, s.conv) == (1e-3, False)
    s, tc = methods.resolve("finetune", check=False)  # m3-ft-te-2400: hexagon adherence 0.884, base drop 0.024
    assert (tc.lr, tc.steps, tc.lr_schedule, s.train_text_encoder) == (5e-5, 2400, "cosine", True)
    s, tc = methods.resolve("textual-inversion", check=False)  # m3-ti-v8-lr5e-3-400: hexagon 0.18 vs defaults 0.02
    assert (s.vectors, tc.lr, tc.steps, tc.lr_schedule) == (8, 5e-3, 400, "cosine")
    s, _ = methods.resolve("finetune", check=False, train_text_encoder=False)  # the user's settings win
    assert s.train_text_encoder is False
    assert methods.model_family(str(tmp_path / "missing.safetensors")) == "reference"
    monkeypatch.setattr(methods, "_unet_parameters", lambda path: 859_520_964)  # an SD 1.5 UNet
    s, tc = methods.resolve("lora", check=False, model="sd15.safetensors")
    assert (tc.lr, tc.steps, s.conv, s.snr_gamma) == (1e-4, 1000, False, 0.0)  # the reference trainers' defaults
    s, tc = methods.resolve("dreambooth", check=False, model="sd15.safetensors")
    assert (tc.lr, tc.text_encoder_lr, s.train_text_encoder) == (5e-6, 0.0, False)


def test_embedded_model_is_tiny_by_its_header_and_print_config_shows_the_recipe(capsys):
    from stablekit import EMBEDDED_MODEL
    from stablekit.cli import main

    assert methods.model_family(str(EMBEDDED_MODEL)) == "tiny"
    assert methods.model_family(str(EMBEDDED_MODEL.parent / "diffusers")) == "tiny"
    assert main(["train", "dreambooth", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["lr"] == 1e-4 and printed["steps"] == 200 and printed["num_class_images"] == 20
    # m3-db-orange-*-te1e-5: the text encoder at a tenth of the UNet's rate binds the subject's colour
    assert printed["train_text_encoder"] is True and printed["text_encoder_lr"] == 1e-5


def _dreambooth(**settings) -> tuple:
    s, tc = methods.resolve("dreambooth", instance_prompt="a sks square", **settings)
    return tc.lr, tc.steps, s.identifier_lr, s.train_text_encoder, s.num_class_images, tc.text_encoder_lr


PIVOTAL = (3e-5, 400, 5e-3, False, 20, 1e-5)  # m3-db-orange-recipe-s14: subject 0.85, plain squares 0.83
PLAIN = (1e-4, 200, 0.0, True, 20, 1e-5)  # the recipe without pivotal tuning (m3-db-orange-*-te1e-5)


def test_tiny_dreambooth_recipe_is_pivotal_with_a_class_prompt_and_without_lora(monkeypatch, tmp_path):
    """The pivotal recipe where it was measured (full DreamBooth with a class prompt) and nowhere else."""
    assert _dreambooth(class_prompt="a square") == PIVOTAL
    assert _dreambooth() == PLAIN  # no class prompt: no identifier to tell apart (identifier_words)
    assert _dreambooth(class_prompt="a square", lora=True) == PLAIN  # lr 3e-5 is no LoRA rate
    # no prior preservation, class prompt given: m3-db-orange-noprior-idlr-s14 subject 0.80 vs 0.50
    assert _dreambooth(class_prompt="a square", prior_loss_weight=0.0) == PIVOTAL
    assert _dreambooth(class_prompt="a square", identifier_lr=0.0) == PLAIN  # pivotal tuning turned off
    # the user's settings win over whichever recipe applies
    assert _dreambooth(class_prompt="a square", lr=1e-4, train_text_encoder=True) == (1e-4, 400, 5e-3, True, 20, 1e-5)
    assert _dreambooth(class_prompt="a square", identifier_lr=1e-3) == (3e-5, 400, 1e-3, False, 20, 1e-5)
    assert _dreambooth(class_prompt="a square", lora=True, identifier_lr=1e-3) == (1e-4, 200, 1e-3, True, 20, 1e-5)
    assert _dreambooth(class_prompt="a square", steps=50) == (3e-5, 50, 5e-3, False, 20, 1e-5)
    # a TOML file's settings choose the recipe as flags do
    toml = tmp_path / "db.toml"
    toml.write_text('class-prompt = "a square"\n')
    assert _dreambooth(config_path=toml) == PIVOTAL
    toml.write_text('class_prompt = "a square"\nlora = true\n')
    assert _dreambooth(config_path=toml) == PLAIN
    # reference models keep the reference trainers' defaults, class prompt or not
    monkeypatch.setattr(methods, "_unet_parameters", lambda path: 859_520_964)
    assert _dreambooth(class_prompt="a square", model="sd15.safetensors")[:4] == (5e-6, 400, 0.0, False)


def test_tiny_pivotal_recipe_needs_an_identifier_word_and_says_how_to_turn_it_off():
    from stablekit.errors import StablekitError

    with pytest.raises(StablekitError, match="identifier_lr 0"):
        methods.resolve("dreambooth", instance_prompt="a square", class_prompt="a square")
    s, tc = methods.resolve("dreambooth", instance_prompt="a square", class_prompt="a square", identifier_lr=0.0)
    assert (s.identifier_lr, tc.lr) == (0.0, 1e-4)


def test_print_config_of_the_embedded_model_shows_the_pivotal_recipe_with_a_class_prompt(capsys):
    from stablekit.cli import main

    flags = ["train", "dreambooth", "--instance-prompt", "a sks square", "--class-prompt", "a square", "--print-config"]
    for extra, want in (([], PIVOTAL), (["--lora"], PLAIN), (["--no-train-text-encoder"], PIVOTAL),
                        (["--lora", "--lr", "1e-3"], (1e-3, *PLAIN[1:]))):
        assert main([*flags, *extra]) == 0
        p = tomllib.loads(capsys.readouterr().out)
        assert (p["lr"], p["steps"], p["identifier_lr"], p["train_text_encoder"], p["num_class_images"],
                p["text_encoder_lr"]) == want, extra
