"""Helpers shared by the CUDA test files (no tests here).

Inputs are drawn in float64, rounded to the tested dtype on the host (float16 by NumPy,
bfloat16 by round-to-nearest-even on the bits), and the float64 reference is computed from
the rounded values, so the tolerance only has to cover float32 arithmetic and the final
rounding of the output to its dtype.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import CUDA_SKIP

DTYPES = ["float32", "float16", "bfloat16"]

# Relative Frobenius-norm tolerances, ||got - ref|| / ||ref||. float32: float32 arithmetic
# over at most a few hundred terms, ~1e-6 (the bound 1e-5). float16: the output is
# rounded to 11 significant bits (unit roundoff 2^-11 = 4.9e-4, a relative norm error of
# about 2.8e-4 for random data); 2e-3 leaves a 4x margin over the worst-case unit roundoff.
# bfloat16: 8 significant bits (unit roundoff 3.9e-3, norm error ~2.3e-3); the 1e-2.
RTOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}

needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(CUDA_SKIP is not None,
                                                   reason=str(CUDA_SKIP))]


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """float64 copy of `a` rounded to `dtype` (round to nearest even)."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float32":
        return a.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
        return r.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(dtype)


def dev(a: np.ndarray, dtype: str = "float32"):
    """DeviceArray of `a` (already representable in dtype) in dtype."""
    from samba_ext import cuda as samba_cuda

    return samba_cuda.to_device(np.asarray(a, dtype=np.float32), dtype)


def rdev(a: np.ndarray, dtype: str):
    """(rounded float64 host copy, DeviceArray in dtype)."""
    r = round_to(a, dtype)
    return r, dev(r, dtype)


def host(x) -> np.ndarray:
    """float64 host copy of a DeviceArray (or anything NumPy / to_numpy can read)."""
    if hasattr(x, "to_numpy"):
        return x.to_numpy().astype(np.float64)
    if hasattr(x, "get"):  # cupy
        return np.asarray(x.get(), dtype=np.float64)
    if hasattr(x, "cpu"):  # torch
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


class CAIView:
    """A strided view of a DeviceArray exposed only through __cuda_array_interface__ v3
    (exercises the CAI consumer and the strided kernel paths without torch / cupy)."""

    def __init__(self, base, shape, strides, offset: int = 0, stream=None):
        self.base = base
        self.shape = tuple(shape)
        self.strides = tuple(strides)  # elements
        self.offset = offset
        self.stream = stream

    @property
    def __cuda_array_interface__(self) -> dict:
        item = self.base.itemsize
        ts = {"float32": "<f4", "float16": "<f2", "bfloat16": "<V2", "int32": "<i4",
              "int64": "<i8"}[self.base.dtype]
        return {"shape": self.shape, "typestr": ts, "version": 3,
                "data": (self.base.ptr + self.offset * item, False),
                "strides": tuple(s * item for s in self.strides), "stream": self.stream}


def transposed_view(a: np.ndarray, dtype: str, axes: tuple):
    """A CAIView showing `a` (logical shape) whose memory is laid out as a.transpose(axes)."""
    phys = np.ascontiguousarray(np.transpose(a, axes))
    base = dev(phys, dtype)
    pstr = [int(np.prod(phys.shape[i + 1:], dtype=np.int64)) for i in range(phys.ndim)]
    inv = np.argsort(axes)
    strides = tuple(pstr[i] for i in inv)
    return CAIView(base, a.shape, strides)


def cuda(f):
    """Marks a test as needing the CUDA build and a GPU (skipped cleanly otherwise)."""
    for mark in needs_cuda:
        f = mark(f)
    return f
