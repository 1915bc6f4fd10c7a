"""CUDA backward of RMSNorm (+ residual), SwiGLU and rotary (samba_ext.grad on DeviceArrays,
csrc/cuda/norm_bwd.cu, swiglu_bwd.cu, rotary.cu) against the float64 references of
tests/ref_grad.py on the same rounded inputs, and against the CPU backward.

Tolerances (relative Frobenius norm):
* float32: SwiGLU and rotary are element-wise with a few float32 roundings plus expf and
  float64 sin / cos (~1e-7 relative): 2e-6, as on the CPU (tests/test_grad_small.py). RMSNorm:
  row sums of n float32 products, dweight a sum over all rows: 1e-5 as on the CPU, plus
  4 * 2^-24 * sqrt(n) for the longer sums here (float32 rounding in a sum of n terms).
* float16 / bfloat16 (cuda_util.RTOL, 2e-3 / 1e-2): the arithmetic is float32 on the rounded
  inputs, so the error is the final rounding of each gradient to its dtype (~0.6 unit roundoff
  in norm: 2.8e-4 / 2.3e-3), plus the float32 term above.
With a residual the CUDA forward normalises s = x + residual rounded to residual's dtype (what
it stores as residual_out), and the backward differentiates at that point; the reference is
computed from the same rounded s, so it measures the kernel's error only.

Outputs are poisoned (NaN bytes) before the kernels run, so an unwritten element fails.
Run: python3 -m pytest -q tests/test_cuda_grad_small.py (or python3 this file); skipped
without a GPU / CUDA build.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import CAIView, RTOL, cuda, dev, host, rdev, round_to, transposed_view
from ref_grad import rms_norm_bwd_ref, rotary_bwd_ref, swiglu_bwd_ref

from samba_ext import grad

DTYPES = ["float32", "float16", "bfloat16"]
ELEM = {"float32": 2e-6, "float16": RTOL["float16"], "bfloat16": RTOL["bfloat16"]}
REDUCE = {"float32": 1e-5, "float16": RTOL["float16"], "bfloat16": RTOL["bfloat16"]}


def tol(dtype: str, n: int) -> float:
    """Tolerance of a result that sums n terms (module docstring)."""
    return REDUCE[dtype] + 4 * 2.0 ** -24 * math.sqrt(max(n, 1))




def row_view(a: np.ndarray, dtype: str, pad: int) -> CAIView:
    """A (..., n) view of `a` whose rows sit `n + pad` elements apart in device memory."""
    n = a.shape[-1]
    wide = np.zeros(a.shape[:-1] + (n + pad,))
    wide[..., :n] = a
    base = dev(wide, dtype)
    strides = tuple(int(np.prod(wide.shape[i + 1:], dtype=np.int64)) for i in range(wide.ndim))
    return CAIView(base, a.shape, strides)


# ------------------------------------------------------------------ RMSNorm ----------------
NORM = [
    # shape, eps, residual, dresidual_out
    pytest.param((1,), 1.0, False, False, id="n1"),
    pytest.param((5, 7), 1e-5, True, True, id="5x7-res-dro"),
    pytest.param((2, 3, 64), 1e-5, True, False, id="3d-res"),
    pytest.param((300, 4096), 1e-6, False, False, id="300x4096"),
    pytest.param((2000, 1024), 1e-5, True, True, id="rows-over-blocks"),
    pytest.param((3, 20000), 1e-5, True, True, id="n-over-shared-memory"),
    pytest.param((0, 64), 1e-5, False, False, id="no-rows"),
]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,eps,with_res,with_dro", NORM)
def test_rms_norm_bwd(poison, rng, dtype, shape, eps, with_res, with_dro):
    (x, gx), (dy, gdy) = (rdev(rng.standard_normal(shape) * 3, dtype) for _ in range(2))
    w, gw = rdev(rng.standard_normal(shape[-1]), dtype)
    res, gres = rdev(rng.standard_normal(shape), dtype) if with_res else (None, None)
    dro, gdro = rdev(rng.standard_normal(shape), dtype) if with_dro else (None, None)
    got = grad.rms_norm_bwd(gx, gw, eps, gres, dy=gdy, dresidual_out=gdro)
    s = round_to(x + res, dtype) if with_res else x
    ref = rms_norm_bwd_ref(s, w, eps, None, dy, dro)
    assert got.dx.dtype == dtype and got.dweight.dtype == dtype and got.dx.shape == shape
    assert_close(host(got.dx), ref["dx"], tol(dtype, shape[-1]), "dx")
    rows = int(np.prod(shape[:-1]))
    if rows:
        assert_close(host(got.dweight), ref["dweight"], tol(dtype, max(rows, shape[-1])),
                     "dweight")
    else:
        assert np.all(host(got.dweight) == 0)
    assert (got.dresidual is got.dx) if with_res else got.dresidual is None


@cuda
def test_rms_norm_bwd_strided_and_mixed(poison, rng):
    # rows a row stride apart (read in place), a float32 residual with bfloat16 x: the sum is
    # rounded to float32 (the residual's dtype), as the forward does
    shape, eps = (37, 96), 1e-5
    x, dy = (round_to(rng.standard_normal(shape), "bfloat16") for _ in range(2))
    w = round_to(rng.standard_normal(96), "bfloat16")
    res = round_to(rng.standard_normal(shape), "float32")
    got = grad.rms_norm_bwd(row_view(x, "bfloat16", 8), dev(w, "bfloat16"), eps,
                            dev(res, "float32"), dy=row_view(dy, "bfloat16", 24))
    ref = rms_norm_bwd_ref(round_to(x + res, "float32"), w, eps, None, dy)
    assert_close(host(got.dx), ref["dx"], tol("bfloat16", 96), "dx")
    assert_close(host(got.dweight), ref["dweight"], tol("bfloat16", 96), "dweight")


# ------------------------------------------------------------------ SwiGLU -----------------
SWIGLU = [(), (7,), (3, 5), (64, 4096), (5, 13), (2, 3, 40)]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SWIGLU, ids=str)
def test_swiglu_bwd(poison, rng, dtype, shape):
    (g, gg), (u, gu), (dy, gdy) = (rdev(rng.standard_normal(shape) * 4, dtype) for _ in range(3))
    dg, du = grad.swiglu_bwd(gg, gu, dy=gdy)
    ref = swiglu_bwd_ref(g, u, dy)
    assert dg.dtype == dtype and du.dtype == dtype and dg.shape == shape
    assert_close(host(dg), ref["dgate"], ELEM[dtype], "dgate")
    assert_close(host(du), ref["dup"], ELEM[dtype], "dup")


@cuda
def test_swiglu_bwd_strided_and_mixed(poison, rng):
    g, dy = (round_to(rng.standard_normal((9, 64)) * 4, "bfloat16") for _ in range(2))
    u = round_to(rng.standard_normal((9, 64)), "float32")
    dg, du = grad.swiglu_bwd(row_view(g, "bfloat16", 8), dev(u, "float32"),
                             dy=row_view(dy, "bfloat16", 3))
    ref = swiglu_bwd_ref(g, u, dy)
    assert dg.dtype == "bfloat16" and du.dtype == "float32"
    assert_close(host(dg), ref["dgate"], ELEM["bfloat16"], "dgate")
    assert_close(host(du), ref["dup"], ELEM["bfloat16"], "dup")


# ------------------------------------------------------------------ rotary -----------------
ROTARY = [
    pytest.param((1, 5, 2, 8), 0, id="offset0"),
    pytest.param((2, 300, 8, 64), 12345, id="offset"),
    pytest.param((1, 17, 3, 128), -40, id="negative-offset"),
    pytest.param((2, 33, 4, 64), "seq", id="positions-seq"),
    pytest.param((3, 21, 2, 96), "batched", id="positions-batched-device"),
]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,positions", ROTARY)
def test_apply_rotary_bwd(poison, rng, dtype, shape, positions):
    B, L = shape[:2]
    dy, gdy = rdev(rng.standard_normal(shape), dtype)
    if isinstance(positions, int):
        pos, arg = np.arange(L)[None, :] + positions + np.zeros((B, 1), dtype=np.int64), positions
    elif positions == "seq":
        p = rng.integers(0, 5000, L)
        pos, arg = np.broadcast_to(p, (B, L)), p
    else:
        pos = rng.integers(-100, 10 ** 6, (B, L))
        from samba_ext import cuda as _gpu

        arg = _gpu.to_device(pos, "int32")
    dx = grad.apply_rotary_bwd(None, arg, 10000.0, dy=gdy)
    assert dx.dtype == dtype and dx.shape == shape
    assert_close(host(dx), rotary_bwd_ref(dy, pos, 10000.0), ELEM[dtype], "dx")


@cuda
def test_apply_rotary_bwd_strided(poison, rng):
    dy = round_to(rng.standard_normal((2, 50, 4, 64)), "bfloat16")
    dx = grad.apply_rotary_bwd(None, 7, 500.0, dy=transposed_view(dy, "bfloat16", (0, 2, 1, 3)))
    pos = np.arange(50)[None, :] + 7 + np.zeros((2, 1), dtype=np.int64)
    assert_close(host(dx), rotary_bwd_ref(dy, pos, 500.0), ELEM["bfloat16"], "dx")


# ------------------------------------------------------------------ GPU == CPU -------------
@cuda
def test_matches_cpu_backward(rng):
    x, dy, res, dro = (round_to(rng.standard_normal((50, 512)), "float32") for _ in range(4))
    w = round_to(rng.standard_normal(512), "float32")
    cpu = grad.rms_norm_bwd(x, w, 1e-5, res, dy=dy, dresidual_out=dro)
    gpu = grad.rms_norm_bwd(dev(x), dev(w), 1e-5, dev(res), dy=dev(dy), dresidual_out=dev(dro))
    assert_close(host(gpu.dx), cpu.dx, tol("float32", 512), "rms dx")
    assert_close(host(gpu.dweight), cpu.dweight, tol("float32", 512), "rms dweight")
    cg = grad.swiglu_bwd(x, res, dy=dy)
    gg = grad.swiglu_bwd(dev(x), dev(res), dy=dev(dy))
    for a, b in zip(gg, cg):
        assert_close(host(a), b, ELEM["float32"], "swiglu")
    d4 = dy.reshape(5, 10, 8, 64)
    cr = grad.apply_rotary_bwd(None, 3, dy=d4)
    assert_close(host(grad.apply_rotary_bwd(None, 3, dy=dev(d4))), cr, ELEM["float32"], "rotary")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
