"""Loading speed paths: tensors cast while read keep no file pages resident (formats/weights.py),
and workflow checkpoints load through stablekit.load's fast default (nodes/loaders.py)."""
from __future__ import annotations

import os

import pytest
import torch
from fixtures import one_thread, tiny_components

import stablekit
from stablekit.formats import save_model
from stablekit.formats.weights import open_weights, write_safetensors
from stablekit.generate import acceleration


def _write(path, tensors: dict) -> None:
    write_safetensors(path, [(k, (lambda v=v: v), tuple(v.shape), v.dtype) for k, v in tensors.items()])


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_cast_reads_are_exact_and_bypass_the_memory_map(tmp_path, monkeypatch):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7), "i": torch.arange(4), "s": torch.tensor(2.5)}
    path = tmp_path / "w.safetensors"
    _write(path, tensors)
    wf = open_weights(path)
    uncast = {k: wf.get(k) for k in tensors}
    monkeypatch.setattr(wf, "_reader", lambda key: (_ for _ in ()).throw(AssertionError(f"mmap read of {key}")))
    for key, t in tensors.items():
        if t.is_floating_point():
            got = wf.get(key, torch.bfloat16)
            assert got.dtype == torch.bfloat16 and got.shape == t.shape and torch.equal(got, t.to(torch.bfloat16))
        assert torch.equal(uncast[key], t)


def test_tensors_read_uncast_are_64_byte_aligned_and_equal(tmp_path):
    """Float tensors at unaligned file offsets come back in aligned memory (oneDNN sums unaligned
    weights in another order: 1e-7 differences from the same weights held in memory); integer
    tensors and aligned floats stay zero-copy views of the map."""
    tensors = {"a": torch.randn(3), "b": torch.randn(5, 7), "c": torch.randn(16), "d": torch.randn(2, 3),
               "i": torch.arange(3)}
    path = tmp_path / "w.safetensors"
    _write(path, tensors)
    wf = open_weights(path)
    offsets = [wf._cast_reader.data_start + wf._cast_reader.header[k]["data_offsets"][0] for k in "abcd"]
    assert any(o % 64 for o in offsets)  # the case under test occurs in this file
    for key, t in tensors.items():
        got = wf.get(key)
        assert torch.equal(got, t) and got.dtype == t.dtype
        if t.is_floating_point():
            assert got.data_ptr() % 64 == 0, key


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc (Linux)")
def test_loading_into_bf16_keeps_no_fp32_pages_resident(tmp_path):
    """Before: every fp32 page read through the map stayed resident while the file was open, so a bf16
    load held the bf16 tensors plus the whole fp32 file (1.5x the file here); now about 0.5x."""
    path = tmp_path / "big.safetensors"
    n = 16
    _write(path, {f"t{i}": torch.randn(1024, 1024) for i in range(n)})  # 64 MiB of fp32
    size = n * 1024 * 1024 * 4
    wf = open_weights(path)
    before = _resident_bytes()
    kept = [wf.get(k, torch.bfloat16) for k in wf.keys()]
    grown = _resident_bytes() - before
    assert len(kept) == n
    assert grown < 0.8 * size, f"resident memory grew {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


@pytest.fixture()
def checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEKIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    for name in ("input", "output"):
        (tmp_path / name).mkdir()
    with one_thread():
        save_model(tiny_components("sd1"), tmp_path / "models" / "checkpoints" / "tiny.safetensors", to="single-file")
        yield tmp_path


def _load_in_workflow(root):
    from stablekit.nodes import Engine, Folders
    from stablekit.nodes.loaders import CheckpointLoaderSimple
    from stablekit.nodes.executor import Context

    engine = Engine(Folders(root / "models", root / "input", root / "output"))
    node = CheckpointLoaderSimple()
    node.ctx = Context(engine.folders, lambda *a: None)
    return node.load_checkpoint("tiny.safetensors")[0].components


def test_workflow_checkpoints_take_the_default_fast_path(checkpoints, monkeypatch):
    """CheckpointLoaderSimple used to load fp32 whatever the machine measured; now it is stablekit.load's path."""
    path = checkpoints / "models" / "checkpoints" / "tiny.safetensors"
    config = acceleration.unet_config_of(path, None, False)
    acceleration.cache_file().parent.mkdir(parents=True, exist_ok=True)
    verdict = {"best": {"dtype": "bf16", "channels_last": True}, "why": "test", "channels_last": {}, "seconds": {}}
    acceleration.cache_file().write_text(__import__("json").dumps({acceleration.probe_key(config): verdict}))
    monkeypatch.delenv("STABLEKIT_DTYPE", raising=False)
    monkeypatch.setenv("STABLEKIT_TRACE", "0")  # a large UNet's path (small ones are traced and stay contiguous)
    components = _load_in_workflow(checkpoints)
    assert components.dtype == torch.bfloat16  # what the (forced) probe verdict says is fastest here
    assert components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert components.dtype == stablekit.load(path, progress=False).components.dtype
    monkeypatch.setenv("STABLEKIT_DTYPE", "fp32")  # the override reaches workflows too
    assert _load_in_workflow(checkpoints).dtype == torch.float32
