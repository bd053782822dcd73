"""formats/weight_cache.py: a cast load leaves an entry that later loads of the same file map
(bit-equal, without reading the source), keyed by path, size and mtime, bounded, off by setting,
private to the process (in-place changes never reach it), and ignored when damaged."""
from __future__ import annotations

import gc
import os

import pytest
import torch

from stablekit.formats import weight_cache, weights
from stablekit.formats.weights import open_weights, write_safetensors

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("STABLEKIT_WEIGHT_CACHE_GB", raising=False)
    monkeypatch.setattr(weight_cache, "MIN_FILE_BYTES", 0)  # the test files are tiny
    return tmp_path / "cache" / "weights"


def _file(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {"a": torch.randn(64, 33, generator=g), "b": torch.randn(7, generator=g), "i": torch.arange(4),
               "e": torch.zeros(0, 3)}
    write_safetensors(path, [(k, (lambda v=v: v), tuple(v.shape), v.dtype) for k, v in tensors.items()])
    return tensors


def _load(path, keys=("a", "b", "i", "e")):
    wf = open_weights(path)
    out = {k: wf.get(k, BF16) for k in keys}
    del wf
    gc.collect()  # the entry is written when the file is let go
    return out


def _no_source_reads(monkeypatch):
    def fail(self, key, dtype):
        raise AssertionError(f"{key} read from the source")
    monkeypatch.setattr(weights._CastReader, "__call__", fail)


def test_second_load_maps_the_cast_bytes(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    first = _load(src)
    assert len(list(cache_dir.glob("*.json"))) == 1 and len(list(cache_dir.glob("*.bin"))) == 1
    _no_source_reads(monkeypatch)
    second = _load(src)
    for k, t in tensors.items():
        want = t.to(BF16) if t.is_floating_point() else t
        assert torch.equal(first[k], want) and torch.equal(second[k], want) and second[k].dtype == want.dtype
    second["a"].add_(1)  # private mapping: an in-place change (a fused LoRA) stays in this process
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))


def test_changed_source_damaged_entry_and_off_switch(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "m.safetensors"
    _file(src)
    _load(src)
    tensors = _file(src, seed=1)  # rewritten: another mtime/content, so the old entry must not serve it
    os.utime(src, ns=(1, 1))
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))
    for data in cache_dir.glob("*.bin"):
        data.write_bytes(data.read_bytes()[:10])  # damaged entries are ignored, not trusted
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))
    monkeypatch.setenv("STABLEKIT_WEIGHT_CACHE_GB", "0")
    other = tmp_path / "n.safetensors"
    _file(other)
    before = sorted(p.name for p in cache_dir.iterdir())
    _load(other)
    assert sorted(p.name for p in cache_dir.iterdir()) == before


def test_partial_reads_cache_what_was_read(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    _load(src, keys=("a",))
    wf = open_weights(src)
    reads = []
    original = weights._CastReader.__call__
    monkeypatch.setattr(weights._CastReader, "__call__", lambda self, k, d: (reads.append(k), original(self, k, d))[1])
    assert torch.equal(wf.get("a", BF16), tensors["a"].to(BF16)) and torch.equal(wf.get("b", BF16), tensors["b"].to(BF16))
    assert reads == ["b"]  # "a" came from the entry; "b" was never cached, so it is read


def test_bounded_least_recently_used_goes_first(tmp_path, cache_dir, monkeypatch):
    one, two, three = (tmp_path / f"{n}.safetensors" for n in "123")
    for i, p in enumerate((one, two, three)):
        _file(p, seed=i)
    _load(one)
    entry = next(cache_dir.glob("*.bin")).stat().st_size
    monkeypatch.setenv("STABLEKIT_WEIGHT_CACHE_GB", str(2.5 * entry / 1024**3))  # room for two entries
    _load(two)
    first_index = next(p for p in cache_dir.glob("*.json") if '"' + str(one) + '"' in p.read_text())
    os.utime(first_index, (1, 1))  # "one" used longest ago
    _load(three)
    sources = sorted(p.read_text().split('"source": "')[1].split('"')[0] for p in cache_dir.glob("*.json"))
    assert sources == sorted([str(two), str(three)])


def test_released_pages_read_back_the_same(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    _file(src)
    _load(src)
    wf = open_weights(src)
    t = wf.get("a", BF16)
    copy = t.clone()
    weight_cache.release(t)  # dropped pages come back from the file unchanged
    assert torch.equal(t, copy)


def test_misaligned_data_is_read_exactly(tmp_path, monkeypatch):
    """A writer without safetensors' 8-byte header padding leaves fp32 data at odd offsets: the cast
    read falls back to pread then (a tensor view needs aligned data)."""
    import json
    import struct

    monkeypatch.setenv("STABLEKIT_WEIGHT_CACHE_GB", "0")
    t = torch.randn(5, 7)
    header = json.dumps({"w": {"dtype": "F32", "shape": [5, 7], "data_offsets": [0, 140]}}).encode()
    header += b" " * ((-len(header) % 8) + 1)  # one byte off alignment
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + t.numpy().tobytes())
    try:
        wf = open_weights(path)
    except Exception as exc:  # noqa: BLE001 - if the safetensors library refuses such files, so do we
        pytest.skip(f"safetensors refuses misaligned files: {exc}")
    assert torch.equal(wf.get("w", BF16), t.to(BF16))


def test_stale_partial_entry_does_not_block_caching(tmp_path, cache_dir):
    src = tmp_path / "m.safetensors"
    _file(src)
    _load(src)
    index = next(cache_dir.glob("*.json"))
    for f in cache_dir.iterdir():
        f.unlink()
    partial = cache_dir / (index.stem + ".bin.partial")
    partial.write_bytes(b"left by a killed load")
    _load(src)
    assert not list(cache_dir.glob("*.json"))  # a fresh partial may be another live load's: left alone
    os.utime(partial, (1, 1))
    _load(src)
    assert len(list(cache_dir.glob("*.json"))) == 1 and not partial.exists()


def test_file_larger_than_the_cache_is_not_written(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("STABLEKIT_WEIGHT_CACHE_GB", str(1000 / 1024**3))  # 1,000 bytes: less than the file's casts
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
