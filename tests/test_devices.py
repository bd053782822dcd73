"""Devices: resolving names, explicit CPU runs, a meta-device sampling run, and a scan of the
generation code for device assumptions (NumPy on device tensors, tensors born on the CPU)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import tiny_components

import stablekit
from stablekit.cli import main
from stablekit.devices import resolve_device
from stablekit.errors import StablekitError
from stablekit.formats import save_model
from stablekit.generate import steps
from stablekit.generate.denoiser import Denoiser
from stablekit.generate.noise import ImageNoise
from stablekit.generate.pipeline import Pipeline
from stablekit.samplers import SAMPLER_NAMES, resolve_sampling

SRC = Path(stablekit.__file__).parent
# Code that runs during generation on the user's device.
GENERATION_CODE = ["generate", "samplers", "prompts", "components.py", "devices.py", "cli/generate.py"]
# Modules that compute on the CPU by design, so tensors made without device= are intended there.
CPU_BY_DESIGN = {
    "samplers/schedules.py": "sigma schedules are computed on the CPU in float64, as diffusers does",
    "samplers/unipc.py": "UniPC's small coefficient systems are solved on the CPU and used as Python floats",
    "generate/noise.py": "noise is drawn on the CPU generator per image (A1111's CPU RNG) and moved",
    "generate/openvino_unet.py": "OpenVINO runs on the CPU: its inputs and outputs are CPU tensors by design",
    "prompts/embedding_tokens.py": "training caption ids are built on the CPU by the data loader and moved with the batch",
}
CREATORS = {"tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "randn", "rand", "randint", "eye"}


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = resolve_device("auto")
    assert resolve_device(None) == auto
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert auto.type == expected
    for bad, message in (("gpu", "unknown device 'gpu'"), ("cpu:1", "only CUDA devices take an index"), (3, "device must be")):
        with pytest.raises(StablekitError, match=message) as err:
            resolve_device(bad)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_one_line():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(StablekitError, match="no usable CUDA device.*--device cpu"):
            resolve_device(spec)


def test_explicit_cpu_in_python_and_cli(tmp_path, capsys):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_components("sd1"), model, to="single-file")
    pipe = stablekit.load(model, device="cpu", dtype="fp32", progress=False)  # fp32: bit-exact with Pipeline
    assert pipe.device == torch.device("cpu")
    a = pipe.generate("a cat", steps=2, seed=3, output="np")[0]
    b = Pipeline(tiny_components("sd1"), progress=False, device="cpu").generate("a cat", steps=2, seed=3, output="np")[0]
    assert np.array_equal(a, b)
    with pytest.raises(StablekitError, match="unknown device 'gpu'"):
        stablekit.load(model, device="gpu")
    out = tmp_path / "out.png"
    args = ["generate", "a cat", "--model", str(model), "--steps", "2", "--seed", "1", "--out", str(out), "--no-progress"]
    assert main(args + ["--device", "cpu"]) == 0 and out.exists()
    assert main(args + ["--device", "auto", "--out", str(tmp_path / "auto.png")]) == 0
    capsys.readouterr()
    assert main(args + ["--device", "tpu", "--out", str(tmp_path / "tpu.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stablekit: error: unknown device 'tpu'") and "\n" not in err


def test_sampling_runs_on_the_meta_device():
    """Every tensor sample() and the Denoiser touch follows the latents' device: with the UNet and
    latents on `meta` (shapes only, no data) nothing is created on the CPU and mixed in."""
    c = tiny_components("sd1")
    cond = steps.condition(Pipeline(c, progress=False).prompts, "a cat", "ugly", 3, size=(64, 64))
    meta = torch.device("meta")
    cond.cond = [(end, type(x)(x.hidden_states.to(meta), None)) for end, x in cond.cond]
    cond.uncond = [(end, type(x)(x.hidden_states.to(meta), None)) for end, x in cond.uncond]
    c.unet.to(meta)
    denoiser = Denoiser.from_components(c)
    for name in ("Euler a", "DPM++ 2M", "DPM++ SDE", "UniPC", "Heun", "LMS"):
        sampling = resolve_sampling(name)
        latents = torch.zeros(1, 4, 8, 8, device=meta)
        out = steps.sample(denoiser, latents, sampling.sigmas(3, denoiser), sampling, cond, ImageNoise([1, 2]))
        assert out.device == meta and out.shape == (2, 4, 8, 8), name
    assert "Euler a" in SAMPLER_NAMES


def _files() -> list[Path]:
    out = []
    for entry in GENERATION_CODE:
        path = SRC / entry
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def _receiver_chain(node: ast.AST) -> list[str]:
    """Method names called on the way to `node` (x.float().cpu().numpy() -> ["numpy", "cpu", "float"])."""
    names = []
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
        node = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else node.func
    return names


def device_assumptions(path: Path) -> list[str]:
    """`.numpy()` on a tensor not moved to the CPU in the same expression; torch.<creator>(...) or
    torch.from_numpy(...) whose result is not given a device (outside CPU_BY_DESIGN modules)."""
    rel = path.relative_to(SRC).as_posix()
    tree = ast.parse(path.read_text())
    moved = set()  # from_numpy calls immediately moved with .to(...)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr == "to" and "from_numpy" in _receiver_chain(node.func.value):
            moved.add(id(_innermost_call(node.func.value, "from_numpy")))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, where = node.func.attr, f"{rel}:{node.lineno}"
        if attr == "numpy" and "cpu" not in _receiver_chain(node.func.value):
            found.append(f"{where}: .numpy() without .cpu()")
        is_torch = isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
        if is_torch and attr in CREATORS and rel not in CPU_BY_DESIGN:
            if not any(k.arg == "device" for k in node.keywords):
                found.append(f"{where}: torch.{attr}(...) without device=")
        if is_torch and attr == "from_numpy" and id(node) not in moved and rel not in CPU_BY_DESIGN:
            found.append(f"{where}: torch.from_numpy(...) not moved with .to(device)")
    return found


def _innermost_call(node: ast.AST, name: str):
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
            return node
        node = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else node.func
    return None


def test_generation_code_has_no_device_assumptions():
    problems = [p for f in _files() for p in device_assumptions(f)]
    assert problems == []


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    bad = SRC / "generate" / "_scan_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        "import torch\nx = torch.zeros(3)\ny = x.numpy()\nz = torch.from_numpy(y)\nok = x.cpu().numpy()\n"
        "fine = torch.zeros(2, device=x.device)\nmoved = torch.from_numpy(y).to(x.device)\n"))
    assert [p.split(": ", 1)[1] for p in device_assumptions(bad)] == [
        "torch.zeros(...) without device=", ".numpy() without .cpu()", "torch.from_numpy(...) not moved with .to(device)"]
