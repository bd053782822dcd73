"""text_encoder_lr (kohya's name): the text encoders' own optimizer parameter group."""
from __future__ import annotations

import copy

import pytest
import torch
from fixtures import tiny_components
from train_fixtures import TinyImages

import stablekit.train
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.train.config import TrainConfig
from stablekit.train.optim import ParamGroups, build_optimizer, build_scheduler

_BUILT = {}
FAST = dict(steps=3, batch_size=2, sample_every=0, progress=False, tensorboard=False, lr_schedule="constant")


def tiny():
    if "sd1" not in _BUILT:
        _BUILT["sd1"] = tiny_components("sd1")
    return copy.deepcopy(_BUILT["sd1"])


def test_text_parameters_get_their_own_group_and_the_schedule_scales_both():
    unet, text = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(3))]
    cfg = TrainConfig(lr=1e-3, text_encoder_lr=1e-5, lr_schedule="linear", warmup_steps=0, min_lr_ratio=0.0, steps=4)
    opt = build_optimizer(cfg, ParamGroups(unet, text))
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]
    assert opt.param_groups[1]["params"][0] is text[0]
    sched = build_scheduler(cfg, opt)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.75e-3, 0.75e-5])  # the UNet's lr first: what the loop logs
    # unset (0) or no text parameters: one group at lr, as before
    assert len(build_optimizer(TrainConfig(lr=1e-3), ParamGroups(unet, text)).param_groups) == 1
    assert len(build_optimizer(cfg, ParamGroups(unet)).param_groups) == 1
    assert len(build_optimizer(cfg, unet + text).param_groups) == 1  # a plain list marks nothing


def test_negative_text_encoder_lr_is_refused():
    with pytest.raises(StablekitError, match="text_encoder_lr"):
        TrainConfig(text_encoder_lr=-1.0).validate()


def test_strategies_mark_the_text_encoder_parameters():
    from stablekit.train.strategies.finetune import FinetuneStrategy
    from stablekit.train.strategies.lora import LoraStrategy

    for strategy in (LoraStrategy(tiny(), train_text_encoder=True, cache_dir=""),
                     FinetuneStrategy(tiny(), train_text_encoder=True, cache_dir="")):
        params = strategy.trainable_parameters()
        text = {id(p) for p in strategy.components.text_encoder.parameters() if p.requires_grad}
        assert text and params.text_ids == text
        assert len(params) > len(text)  # the UNet's are there too, in the first group
        assert len(build_optimizer(TrainConfig(text_encoder_lr=1e-6), params).param_groups) == 2
    frozen = LoraStrategy(tiny(), cache_dir="").trainable_parameters()
    assert not frozen.text_ids


@pytest.mark.slow  # two short training runs per method: ~20-40 s on the shared CPU
@pytest.mark.parametrize("method", ["lora", "finetune"])
def test_a_tiny_text_encoder_lr_keeps_the_text_encoder_still(tmp_path, method):
    """Same run twice: the text encoder moves at lr, and (almost) not at text_encoder_lr 1e-12,
    while the UNet trains at lr in both."""
    moved = {}
    for te_lr in (0.0, 1e-12):
        comps = tiny()
        te_before = {k: v.clone() for k, v in comps.text_encoder.state_dict().items()}
        unet_before = {k: v.clone() for k, v in comps.unet.state_dict().items()}
        stablekit.train(method, components=comps, dataset=TinyImages(), out=tmp_path / f"{method}{te_lr}", lr=1e-2,
                        text_encoder_lr=te_lr, train_text_encoder=True, **FAST)
        te, unet = comps.text_encoder.state_dict(), comps.unet.state_dict()
        if method == "lora":  # lora_B starts at zero (lora_A at random values the test did not see)
            te_delta = [te[k] for k in te if "lora_B" in k]
            unet_delta = [unet[k] for k in unet if "lora_B" in k]
        else:
            te_delta = [te[k] - te_before[k] for k in te_before]
            unet_delta = [unet[k] - unet_before[k] for k in unet_before]
        assert te_delta and unet_delta
        moved[te_lr] = (max(float(d.abs().max()) for d in te_delta), max(float(d.abs().max()) for d in unet_delta))
    assert moved[0.0][0] > 1e-4  # the text encoder trains at lr
    assert moved[1e-12][0] < 1e-8  # and not at a 1e-10x rate
    assert moved[0.0][1] > 1e-4 and moved[1e-12][1] > 1e-4  # the UNet trains at lr either way


def test_text_encoder_lr_is_a_flag_and_printed(capsys):
    assert main(["train", "lora", "--print-config", "--text-encoder-lr", "1e-05"]) == 0
    assert "text_encoder_lr = 1e-05" in capsys.readouterr().out
