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
    monkeypatch.setattr(weight_cache, "QUIET_SECONDS", 0)  # no waiting for the end of a load (tested once below)
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
    gc.collect()  # the entry is written when the file is let go, on a writer thread
    weight_cache.wait_for_writes()
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


def test_partial_of_a_live_writer_is_left_alone_and_a_dead_ones_taken_over(tmp_path, cache_dir):
    fcntl = pytest.importorskip("fcntl")
    src = tmp_path / "m.safetensors"
    _file(src)
    _load(src)
    index = next(cache_dir.glob("*.json"))
    for f in cache_dir.iterdir():
        f.unlink()
    partial = cache_dir / (index.stem + ".bin.partial")
    partial.write_bytes(b"being written by another process")
    with open(partial, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live writer holds its lock
        _load(src)
        assert not list(cache_dir.glob("*.json")) and partial.exists()
    _load(src)  # the writer died (its lock went with it): its partial is taken over at once
    assert len(list(cache_dir.glob("*.json"))) == 1 and not partial.exists()


def test_file_larger_than_the_cache_is_not_written(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("STABLEKIT_WEIGHT_CACHE_GB", str(1000 / 1024**3))  # 1,000 bytes: less than the file's casts
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def _gated_writer(monkeypatch):
    """Hold the writer thread (once it has claimed its partial file) until `gate` is set."""
    import threading

    entered, gate, original = threading.Event(), threading.Event(), weight_cache.CastCache._write_data

    def gated(self, f):
        entered.set()
        assert gate.wait(10), "the test never released the writer"
        return original(self, f)
    monkeypatch.setattr(weight_cache.CastCache, "_write_data", gated)
    return entered, gate


def test_load_returns_before_the_entry_is_written_and_in_place_changes_stay_out(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    entered, gate = _gated_writer(monkeypatch)
    wf = open_weights(src)
    first = {k: wf.get(k, BF16) for k in ("a", "b")}
    del wf
    gc.collect()  # the load is over: the writer has started and waits at the gate
    assert entered.wait(10)
    assert not list(cache_dir.glob("*.json")) and list(cache_dir.glob("*.partial"))
    first["a"].add_(1)  # e.g. a LoRA fused in place before the write ran: the entry must not see it
    gate.set()
    weight_cache.wait_for_writes()
    assert len(list(cache_dir.glob("*.json"))) == 1 and not list(cache_dir.glob("*.partial"))
    _no_source_reads(monkeypatch)
    second = _load(src, keys=("a", "b"))
    assert torch.equal(second["a"], tensors["a"].to(BF16)) and torch.equal(second["b"], tensors["b"].to(BF16))


def test_source_changed_during_the_write_leaves_no_entry(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "m.safetensors"
    _file(src)
    _, gate = _gated_writer(monkeypatch)
    wf = open_weights(src)
    wf.get("a", BF16)
    del wf
    gc.collect()
    os.utime(src, ns=(5, 5))  # rewritten while the writer waits
    gate.set()
    weight_cache.wait_for_writes()
    assert not any(cache_dir.iterdir())


_CHILD = """
import gc, os, sys, time
import torch
from stablekit.formats import weight_cache
from stablekit.formats.weights import open_weights
weight_cache.MIN_FILE_BYTES = 0
weight_cache.QUIET_SECONDS = 0
original = weight_cache.CastCache._write_data
def slow(self, f):
    sys.stdout.write("writing\\n")  # one write per line: print() writes the text and its newline apart,
    sys.stdout.flush()  # and the two threads' lines once interleaved ("writingreturned")
    time.sleep(float(sys.argv[2]))
    return original(self, f)
weight_cache.CastCache._write_data = slow
wf = open_weights(sys.argv[1])
wf.get("a", torch.bfloat16)
del wf
gc.collect()
sys.stdout.write(f"returned {weight_cache._WRITER is not None and weight_cache._WRITER.is_alive()}\\n")  # writing
sys.stdout.flush()
"""


def _child(src, cache_dir, sleep):
    import subprocess
    import sys

    env = {**os.environ, "STABLEKIT_CACHE_DIR": str(cache_dir.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(sleep)], env=env, stdout=subprocess.PIPE, text=True)


def test_process_exit_waits_for_a_started_write(tmp_path, cache_dir):
    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    proc = _child(src, cache_dir, 0.5)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and sorted(out.split()) == ["True", "returned", "writing"]  # returned mid-write
    assert len(list(cache_dir.glob("*.json"))) == 1 and not list(cache_dir.glob("*.partial"))
    assert torch.equal(_load(src, keys=("a",))["a"], tensors["a"].to(BF16))


def test_kill_during_the_write_leaves_nothing_trusted(tmp_path, cache_dir, monkeypatch):
    import signal

    src = tmp_path / "m.safetensors"
    tensors = _file(src)
    proc = _child(src, cache_dir, 60)
    while proc.stdout.readline().split()[:1] != ["writing"]:  # the load may return first
        pass
    assert list(cache_dir.glob("*.partial"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not list(cache_dir.glob("*.json"))  # nothing a later load could trust
    assert torch.equal(_load(src)["a"], tensors["a"].to(BF16))  # read from the source; the dead writer's partial taken over
    assert len(list(cache_dir.glob("*.json"))) == 1 and not list(cache_dir.glob("*.partial"))


def test_the_writer_waits_until_no_tensor_has_been_cast_for_a_while(tmp_path, cache_dir, monkeypatch):
    import time

    monkeypatch.setattr(weight_cache, "QUIET_SECONDS", 0.3)
    one, two = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    _file(one)
    _file(two, seed=1)
    wf = open_weights(one)
    wf.get("a", BF16)
    monkeypatch.setattr(weight_cache, "_LAST_CAST", time.monotonic() + 3600)  # casts go on...
    del wf
    gc.collect()  # ...while file one, let go, has its entry queued
    time.sleep(0.6)
    assert not list(cache_dir.glob("*.json"))
    other = open_weights(two)
    last_cast = time.monotonic()
    other.get("a", BF16)  # the last cast of the load
    weight_cache.wait_for_writes()
    assert len(list(cache_dir.glob("*.json"))) == 1 and time.monotonic() - last_cast >= 0.3
