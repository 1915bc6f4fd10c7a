"""The C DLPack producer / consumer of samba_ext._cuda, exercised with host memory.

These need the _cuda extension but no GPU: the capsule code does not care about the device
type, so NumPy (and torch CPU, where installed) stand in for the GPU frameworks. The GPU
round trips (pointer equality with torch / cupy on the device, stream handshake) are in
test_cuda_interop.py.
"""
from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

cuda = pytest.importorskip("samba_ext._cuda", reason="samba_ext built without CUDA")

KDLCPU = 1


class HostExport:
    """Exports a NumPy array's memory through _cuda.to_capsule as a DLPack CPU tensor."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def __dlpack_device__(self):
        return (KDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        versioned = max_version is not None and max_version[0] >= 1
        code = {"f": 2, "i": 0}[self.a.dtype.kind]
        return cuda.to_capsule(self, self.a.ctypes.data, self.a.shape, None, code,
                               self.a.dtype.itemsize * 8, KDLCPU, 0, int(versioned), 0, 0, 0)


class LegacyOnly(HostExport):
    def __dlpack__(self, *, stream=None):
        return super().__dlpack__(stream=stream, max_version=None)


@pytest.mark.parametrize("cls", [HostExport, LegacyOnly])
def test_numpy_consumes_our_capsule_without_copy(rng, cls):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    exp = cls(a)
    before = sys.getrefcount(exp)
    b = np.from_dlpack(exp)
    assert b.ctypes.data == a.ctypes.data  # zero copy
    np.testing.assert_array_equal(b, a)
    assert sys.getrefcount(exp) == before + 1  # the consumer keeps the producer alive
    del b
    gc.collect()
    assert sys.getrefcount(exp) == before  # ...and the deleter released it


def test_numpy_consumes_strided_capsule(rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)

    class Transposed(HostExport):  # exports a.T: shape (6, 4), element strides (1, 6)
        def __dlpack__(self, **kw):
            versioned = kw.get("max_version") is not None
            return cuda.to_capsule(self, self.a.ctypes.data, (6, 4), (1, 6), 2, 32, KDLCPU, 0,
                                   int(versioned), 0, 0, 0)

    b = np.from_dlpack(Transposed(a))
    assert b.ctypes.data == a.ctypes.data
    np.testing.assert_array_equal(b, a.T)


def test_unconsumed_capsule_releases_owner():
    a = np.arange(6, dtype=np.float32)
    exp = HostExport(a)
    before = sys.getrefcount(exp)
    for mv in (None, (1, 0)):
        cap = exp.__dlpack__(max_version=mv)
        assert sys.getrefcount(exp) == before + 1
        del cap
        gc.collect()
        assert sys.getrefcount(exp) == before


@pytest.mark.parametrize("max_version", [(1, 0), None])
def test_consume_numpy_capsule(rng, max_version):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)[:, ::2, :]  # strided view
    before = sys.getrefcount(a)
    try:
        cap = a.__dlpack__(max_version=max_version) if max_version else a.__dlpack__()
    except TypeError:
        pytest.skip("this NumPy has no versioned DLPack export")
    imp = cuda.from_capsule(cap)
    info = imp.info()
    assert info["ptr"] == a.ctypes.data
    assert info["shape"] == (2, 2, 4)
    assert info["strides"] == tuple(s // 4 for s in a.strides)
    assert info["dtype"] == (2, 32, 1)
    assert info["device"][0] == KDLCPU
    with pytest.raises(TypeError):
        cuda.from_capsule(cap)  # already consumed (renamed to used_*)
    del cap
    gc.collect()
    assert sys.getrefcount(a) > before  # still held by the Imported object
    del imp
    gc.collect()
    assert sys.getrefcount(a) == before  # the producer's deleter ran


def test_consume_rejects_non_capsule():
    with pytest.raises(TypeError, match="DLPack capsule"):
        cuda.from_capsule(object())


def test_consume_torch_cpu_capsules():
    torch = pytest.importorskip("torch")
    t = torch.arange(24, dtype=torch.bfloat16).reshape(4, 6).t()  # non-contiguous bf16
    for cap in (t.__dlpack__(max_version=(1, 0)), torch.utils.dlpack.to_dlpack(t)):
        info = cuda.from_capsule(cap).info()
        assert info["ptr"] == t.data_ptr()
        assert info["shape"] == (6, 4) and info["strides"] == (1, 6)
        assert info["dtype"] == (4, 16, 1)  # kDLBfloat


def test_torch_consumes_our_capsule(rng):
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((3, 4)).astype(np.float32)
    t = torch.from_dlpack(HostExport(a))
    assert t.data_ptr() == a.ctypes.data
    np.testing.assert_array_equal(t.numpy(), a)
