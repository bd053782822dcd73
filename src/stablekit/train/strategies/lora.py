"""LoRA (Hu et al. 2021) through peft on the diffusers modules; LoCon adds the convolutions.

Which layers, as kohya's networks/lora.py chooses them: in the UNet every Linear and 1x1 Conv2d
inside the transformer blocks (attention q/k/v/out, feed-forward, proj_in/proj_out); with `conv`
(LoCon) also the ResNet, down- and up-sampling convolutions; in the text encoder(s) the attention
and MLP Linears. The trained weights are the peft state dict ("...to_q.lora_A.weight"), the
interchange with formats/ (CONTRACTS.md), which writes kohya and PEFT files from it.
lora_B starts at zero, so the untrained adapter leaves the model's output unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from stablekit.train.strategies.sd import SDStrategy

_UNET_LINEAR = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
_UNET_CONV_PARENTS = ("resnets", "downsamplers", "upsamplers")
_TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def unet_targets(unet: torch.nn.Module, conv: bool) -> list[str]:
    """Names of the UNet modules LoRA wraps (kohya's choice; with conv, LoCon's)."""
    names = []
    for name, module in unet.named_modules():
        in_transformer = ".attentions." in f".{name}." and name.endswith(_UNET_LINEAR)
        if in_transformer and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            names.append(name)
        elif conv and isinstance(module, torch.nn.Conv2d) and any(f".{p}." in f".{name}" for p in _UNET_CONV_PARENTS):
            names.append(name)
    return names


@contextmanager
def _fp32_adapters(module: torch.nn.Module):
    """peft makes each adapter in fp32 and then casts it to its base layer's dtype, so on a UNet read
    into bf16 (train/precision.py) the adapters would train in bf16 from rounded initial values.
    peft takes a base layer's `compute_dtype` (bitsandbytes' attribute) over its weight's dtype:
    set to fp32 for the injection, the adapters stay exactly as made on an fp32 base."""
    marked = [m for m in module.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
              and m.weight.is_floating_point() and m.weight.dtype != torch.float32 and not hasattr(m, "compute_dtype")]
    for m in marked:
        m.compute_dtype = torch.float32
    try:
        yield
    finally:
        for m in marked:
            del m.compute_dtype


def text_targets(text_encoder: torch.nn.Module) -> list[str]:
    return [n for n, m in text_encoder.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(_TEXT)]


@dataclass
class LoraStrategy(SDStrategy):
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    conv: bool = False  # LoCon: also the 3x3 convolutions
    train_text_encoder: bool = False
    name: str = "lora"

    def __post_init__(self):
        super().__post_init__()
        from peft import LoraConfig, inject_adapter_in_model

        def config(targets):
            return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                              init_lora_weights=True, target_modules=targets)

        c = self.components
        # lora_A's init is seeded, never the caller's RNG
        with torch.random.fork_rng(devices=[]), _fp32_adapters(c.unet):
            torch.manual_seed(0)
            inject_adapter_in_model(config(unet_targets(c.unet, self.conv)), c.unet)
            if self.train_text_encoder:
                for te in self.text_encoders():
                    inject_adapter_in_model(config(text_targets(te)), te)
        self.adapted = {"unet": c.unet}
        if self.train_text_encoder:
            self.adapted.update({k: m for k, m in (("text_encoder", c.text_encoder), ("text_encoder_2", c.text_encoder_2))
                                 if m is not None})
        for module in self.adapted.values():
            for n, p in module.named_parameters():
                p.requires_grad_("lora_" in n)
                if "lora_" in n and p.dtype != torch.float32:  # a peft that ignored _fp32_adapters
                    p.data = p.data.float()

    def trainable_parameters(self):
        """The adapter weights; the text encoders' ones marked for `text_encoder_lr`."""
        from stablekit.train.optim import ParamGroups

        def trained(keys):
            return [p for k in keys for p in self.adapted[k].parameters() if p.requires_grad]

        return ParamGroups(trained(["unet"]), trained([k for k in self.adapted if k != "unet"]))

    def lora_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"unet": peft state dict, "text_encoder": ..., "text_encoder_2": ...} (detached, CPU)."""
        from peft import get_peft_model_state_dict

        return {k: {n: t.detach().cpu() for n, t in get_peft_model_state_dict(m).items()}
                for k, m in self.adapted.items()}

    def state_dict(self) -> dict:
        return self.lora_state_dicts()

    def load_state_dict(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        for k, m in self.adapted.items():
            set_peft_model_state_dict(m, state[k])
