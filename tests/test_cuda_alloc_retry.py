"""An allocation that finds the device full frees what the process caches and tries again.

samba_ext's arrays come from the stream-ordered pool, which keeps freed blocks; torch's caching
allocator keeps its own. Each is invisible to the other, so a process using both can run out of
memory while most of the device is cached. On an out-of-memory error the C allocator waits for
the device, returns its pool's cached blocks to the driver and tries once more
(csrc/cuda/runtime.cu); if that fails too, DeviceArray.empty empties torch's cache (when torch
has used CUDA) and tries a last time.

The first tests replace the extension's Buffer with one that fails on demand and torch with a
stand-in, so they run anywhere; the last two use a real GPU and most of its free memory, so they
skip under pytest-xdist (other workers would share the device).
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
from cuda_util import needs_cuda

from samba_ext.cuda import array as _array


class _Buf:
    def __init__(self, n: int) -> None:
        self.ptr = 4096
        self.n = n


class _FailingCu:
    """Buffer raises MemoryError for the first `fails` allocations, then succeeds."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls = 0

    def Buffer(self, n, device=0, stream=0, keep=None):  # noqa: N802 - the extension's name
        self.calls += 1
        if self.calls <= self.fails:
            raise MemoryError("CUDA out of memory: cudaMallocAsync: out of memory")
        return _Buf(n)


def _fake_torch(initialized: bool, log: list, capturing: bool = False) -> types.ModuleType:
    t = types.ModuleType("torch")

    class Tensor:  # what is_torch_tensor checks against
        pass

    class _Dev:
        def __init__(self, i: int) -> None:
            log.append(("device", i))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    t.Tensor = Tensor
    t.cuda = types.SimpleNamespace(
        is_initialized=lambda: initialized, device=_Dev,
        is_current_stream_capturing=lambda: capturing,
        synchronize=lambda: log.append("synchronize"),
        empty_cache=lambda: log.append("empty_cache"))
    return t


@pytest.fixture
def fake(monkeypatch):
    def make(fails: int, torch_state: str) -> tuple[_FailingCu, list]:
        cu, log = _FailingCu(fails), []
        monkeypatch.setattr(_array, "require", lambda: cu)
        monkeypatch.setattr(_array, "poison_enabled", lambda: False)
        if torch_state == "absent":
            monkeypatch.delitem(sys.modules, "torch", raising=False)
        else:
            monkeypatch.setitem(sys.modules, "torch", _fake_torch(
                torch_state != "uninitialized", log, torch_state == "capturing"))
        return cu, log
    return make


def test_torch_cache_emptied_then_allocation_retried(fake):
    cu, log = fake(1, "initialized")
    a = _array.DeviceArray.empty((4, 5), "float32", device=1)
    assert a.shape == (4, 5) and cu.calls == 2
    assert log == [("device", 1), "synchronize", "empty_cache"]


@pytest.mark.parametrize("torch_state", ["absent", "uninitialized", "capturing"])
def test_no_torch_cache_no_retry(fake, torch_state):
    # no torch, torch without CUDA, or torch capturing a graph (no synchronisation allowed)
    cu, log = fake(1, torch_state)
    with pytest.raises(MemoryError, match="out of memory"):
        _array.DeviceArray.empty((4, 5), "float32")
    assert cu.calls == 1 and "synchronize" not in log and "empty_cache" not in log


def test_second_failure_raises(fake):
    cu, log = fake(2, "initialized")
    with pytest.raises(MemoryError, match="out of memory"):
        _array.DeviceArray.empty((3,), "int32")
    assert cu.calls == 2 and "empty_cache" in log


_not_shared = pytest.mark.skipif(bool(os.environ.get("PYTEST_XDIST_WORKER")),
                                 reason="uses most of the device's free memory: run without "
                                        "pytest-xdist")


def _whole_device(fn):
    """A GPU test that needs the device to itself (and torch, to read its free memory)."""
    for mark in (*needs_cuda, _not_shared):
        fn = mark(fn)
    return fn


@pytest.fixture
def emptied():
    """(samba_ext.cuda, torch, free bytes) with both caches emptied before and after."""
    import samba_ext.cuda as sc
    torch = pytest.importorskip("torch")
    sc.empty_cache(0)
    torch.cuda.empty_cache()
    yield sc, torch, torch.cuda.mem_get_info(0)[0]
    sc.synchronize()
    sc.empty_cache(0)
    torch.cuda.empty_cache()


@_whole_device
def test_our_cached_blocks_serve_a_larger_allocation(emptied):
    sc, _, free = emptied
    n = int(free * 0.45) // 4
    a = sc.empty((n,), "int32")
    b = sc.empty((n,), "int32")
    del a, b
    sc.synchronize()
    assert sc.memory_stats(0)["reserved"] >= 2 * n * 4  # the pool keeps both blocks
    c = sc.empty((int(free * 0.7) // 4,), "int32")  # more than the driver has left
    assert c.size == int(free * 0.7) // 4


@_whole_device
def test_torch_cached_blocks_serve_our_allocation(emptied):
    sc, torch, free = emptied
    t = torch.empty(int(free * 0.8), dtype=torch.uint8, device="cuda:0")
    del t  # torch's allocator keeps the block
    assert torch.cuda.memory_reserved(0) >= int(free * 0.8)
    a = sc.to_device(np.arange(3, dtype=np.float32))
    big = sc.empty((int(free * 0.5) // 4,), "float32")  # needs torch's cached block
    assert big.size == int(free * 0.5) // 4
    assert torch.cuda.memory_reserved(0) < int(free * 0.8)
    np.testing.assert_array_equal(a.to_numpy(), [0, 1, 2])
