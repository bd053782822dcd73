"""The generate CLI's LoRA / embedding flags, --from-png with LoRAs, and stablekit.load's argument errors."""
from __future__ import annotations

import pytest
import torch

import stablekit
from stablekit.errors import StablekitError


def test_load_names_a_missing_model_and_the_embedded_default(tmp_path):
    with pytest.raises(StablekitError) as err:
        stablekit.load(tmp_path / "nope.safetensors")
    assert str(err.value) == (f"model {tmp_path / 'nope.safetensors'} does not exist; give a .safetensors file or "
                              "diffusers folder, or leave out --model (path=None) to use the embedded shapes model")


def test_load_takes_dtype_names():
    assert stablekit.load(dtype="bf16", progress=False).components.dtype == torch.bfloat16
    with pytest.raises(StablekitError, match="unknown dtype 'fp8'; use fp32, fp16 or bf16"):
        stablekit.load(dtype="fp8")
    with pytest.raises(StablekitError, match="dtype must be"):
        stablekit.load(dtype=3)
