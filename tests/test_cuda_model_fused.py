"""The vectorised single-pass CUDA paths of rms_norm (+ residual), swiglu and
causal_conv1d (+ SiLU) against the float64 references of tests/ref_small.py.

csrc/cuda/norm.cu, swiglu.cu and conv.cu take a 16-byte-vector path when the arrays share one dtype
and every row is 16-byte aligned (row lengths a multiple of 8 values for 16-bit dtypes, 4
for float32), and the element-wise kernels otherwise; the shapes below hit both, plus the
partial last vector of a conv row and rms_norm rows of 1, 2 and 4 vectors per thread.
Inputs are fresh random values rounded to the tested dtype; tolerances are tests/cuda_util
RTOL (float32 arithmetic, the output rounded to its dtype). With a residual in a 16-bit
dtype the kernels normalise the sum as stored in that dtype (what a framework's pre-norm
sees): one more rounding of the input, inside the same bound.
"""
from __future__ import annotations

import pytest
from conftest import assert_close
from cuda_util import DTYPES, RTOL, dev, host, needs_cuda, round_to
from ref_small import causal_conv1d as conv_ref
from ref_small import rms_norm as rms_ref
from ref_small import swiglu as swiglu_ref

import samba_ext

pytestmark = needs_cuda


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(3, 64), (33, 2048), (2, 8192 + 64), (2, 16384), (1, 8),
                                    (5, 12), (4, 100)])
@pytest.mark.parametrize("with_res", [False, True])
def test_rms_norm_paths(rng, dtype, rows, n, with_res):
    x = round_to(rng.standard_normal((rows, n)), dtype)
    r = round_to(rng.standard_normal((rows, n)), dtype) if with_res else None
    w = round_to(rng.uniform(0.5, 1.5, n), dtype)
    y_ref, s_ref = rms_ref(x, w, 1e-5, r)
    if with_res:
        y, s = samba_ext.rms_norm(dev(x, dtype), dev(w, dtype), 1e-5, dev(r, dtype))
        assert_close(host(s), s_ref, RTOL[dtype], "x + residual")
    else:
        y = samba_ext.rms_norm(dev(x, dtype), dev(w, dtype), 1e-5)
    assert y.dtype == dtype
    assert_close(host(y), y_ref, RTOL[dtype], "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 64), (129, 8192), (3, 1000), (7, 12), (2, 3, 40)])
def test_swiglu_paths(rng, dtype, shape):
    g = round_to(rng.standard_normal(shape) * 3, dtype)
    u = round_to(rng.standard_normal(shape), dtype)
    y = samba_ext.swiglu(dev(g, dtype), dev(u, dtype))
    assert y.dtype == dtype
    assert_close(host(y), swiglu_ref(g, u), RTOL[dtype], "swiglu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("batch,dim,L", [(2, 6, 64), (1, 5, 37), (3, 4, 1), (2, 3, 8),
                                         (1, 16, 1000)])
@pytest.mark.parametrize("init", [False, True])
def test_conv1d_silu_paths(rng, dtype, width, batch, dim, L, init):
    x = round_to(rng.standard_normal((batch, dim, L)), dtype)
    w = round_to(rng.standard_normal((dim, width)) * 0.5, "float32")
    b = round_to(rng.standard_normal(dim), "float32")
    st = round_to(rng.standard_normal((batch, dim, width - 1)), "float32") if init else None
    y_ref, fin_ref = conv_ref(x, w, b, "silu", st)
    y, fin = samba_ext.causal_conv1d(dev(x, dtype), dev(w), dev(b), "silu",
                                     None if st is None else dev(st), True)
    assert y.dtype == dtype
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(fin), fin_ref, RTOL["float32"], "final states")
