"""The GEMM paths of csrc/cuda/gemm.cu (cublasGemmEx, cuBLASLt, cuBLASLt with per-shape timing)
against a float64 NumPy product: odd shapes, unaligned leading dimensions and pointers, beta 0
and 1, every input dtype, strided batches, and calls captured in a CUDA graph.

The mode is switched in-process through the extension's ``gemm_mode`` (the environment
variable SAMBA_EXT_GEMM only gives its initial value) and restored after each test.

Tolerances (relative Frobenius norm): inputs are rounded to their dtype before the float64
reference is computed, so only float32 accumulation and the output's rounding remain.
float32 outputs: float32 sums of K products; with random signs the error grows like
sqrt(K) u32 (u32 = 6e-8), 5.4e-6 at K = 8196 (the worst-case bound K u32 = 4.9e-4 assumes
every rounding in one direction); 3e-5 leaves a 5x margin. float16 / bfloat16 outputs: the
final rounding dominates (unit roundoff 4.9e-4 / 3.9e-3, a relative norm error of about 0.6
of that for random data); tests/cuda_util.RTOL (2e-3 / 1e-2) plus the float32 part.
The error is measured against max(||ref||, || |x| |w|^T || / sqrt(K)): accumulation errors
scale with the magnitude of the terms, not of their sum, so a product that cancels to a small
value (one output of M = N = 1) is not held to a tighter bound than a typical one; for random
data the two norms are of the same size (|| |x| |w|^T || ~ 0.64 K per entry, ||ref|| ~ sqrt(K)).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from cuda_util import dev, host, needs_cuda, round_to

pytestmark = needs_cuda

MODES = [0, 1, 2]  # cublas*Ex, cuBLASLt (heuristic), cuBLASLt tuned (see samba_cuda.h)
TOL = {"float32": 3e-5, "float16": 2e-3 + 3e-5, "bfloat16": 1e-2 + 3e-5}
CODE = {"float32": 0, "float16": 1, "bfloat16": 2}


def _cu():
    from samba_ext.cuda import runtime

    return runtime.require()


@pytest.fixture(params=MODES, ids=["gemmex", "lt", "lt-tune"])
def mode(request):
    cu = _cu()
    old = cu.gemm_mode()
    cu.gemm_mode(request.param)
    assert cu.gemm_mode() == request.param
    yield request.param
    cu.gemm_mode(old)


def _rel(got, ref, absref=None, K: int = 1) -> float:
    """||got - ref|| / max(||ref||, ||absref|| / sqrt(K)) (see the module docstring)."""
    den = np.linalg.norm(ref)
    if absref is not None:
        den = max(den, np.linalg.norm(absref) / np.sqrt(K))
    return float(np.linalg.norm(got - ref) / max(den, 1e-300))


def _raw_gemm(M, N, K, dt, ldx, ldw, ldy, beta, rng, stream=None, xoff=0):
    """cu.gemm on row-major x (M, ldx), w (N, ldw), y (M, ldy) (the first K / K / N columns
    used, y's others must stay); x starts `xoff` elements into its buffer (an unaligned
    pointer). Returns (got y, expected y, |x| |w|^T + beta |y0|) as float64."""
    cu = _cu()
    x = round_to(rng.standard_normal(M * ldx + xoff), dt)
    w = round_to(rng.standard_normal((N, ldw)), dt)
    y0 = round_to(rng.standard_normal((M, ldy)), dt)
    xd, wd, yd = dev(x, dt), dev(w, dt), dev(y0, dt)
    s = yd.stream if stream is None else stream
    if stream is not None:
        cu.stream_sync(yd.stream)
    isz = 4 if dt == "float32" else 2
    cu.gemm(M, N, K, (xd.ptr + xoff * isz, CODE[dt]), ldx, (wd.ptr, CODE[dt]), ldw,
            (yd.ptr, CODE[dt]), ldy, float(beta), s)
    cu.stream_sync(s)
    xm = x[xoff:].reshape(M, ldx)[:, :K]
    ref = y0.copy()
    ref[:, :N] = xm @ w[:, :K].T + beta * y0[:, :N]
    absref = np.abs(xm) @ np.abs(w[:, :K]).T + beta * np.abs(y0[:, :N])
    return host(yd), ref, absref


@functools.lru_cache(maxsize=64)
def _operand(rows: int, K: int, dt: str, seed: int) -> np.ndarray:
    """A rounded random (rows, K) operand, made once per shape, dtype and seed (the modes and
    the other operand's shapes reuse it: drawing 2560 x 8196 values dominates the test time)."""
    a = round_to(np.random.default_rng(seed).standard_normal((rows, K)), dt)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M", [1, 7, 300])
@pytest.mark.parametrize("N", [1, 33, 2560])
@pytest.mark.parametrize("K", [8, 8196])
def test_linear_matches_float64(mode, dt, M, N, K):
    from samba_ext.cuda.blas import linear

    x = _operand(M, K, dt, 1)
    w = _operand(N, K, dt, 2)
    y = host(linear(dev(x, dt), dev(w, dt)))
    assert _rel(y, x @ w.T, np.abs(x) @ np.abs(w).T, K) <= TOL[dt], (mode, dt, M, N, K)


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("M,N,K,pad", [(7, 33, 8196, (3, 1, 5)), (300, 2560, 8, (1, 3, 1)),
                                       (1, 513, 8196, (0, 1, 0)), (300, 33, 8196, (5, 0, 3))])
def test_raw_gemm_unaligned_ld_and_beta(mode, rng, dt, beta, M, N, K, pad):
    for xoff in (0, 1):  # xoff 1: an x pointer aligned to the element size only
        got, ref, absref = _raw_gemm(M, N, K, dt, K + pad[0], K + pad[1], N + pad[2], beta,
                                     rng, xoff=xoff)
        # the columns past N are y's own values, untouched
        np.testing.assert_array_equal(got[:, N:], ref[:, N:])
        assert _rel(got[:, :N], ref[:, :N], absref, K) <= TOL[dt], \
            (mode, dt, beta, M, N, K, pad, xoff)


@pytest.mark.parametrize("dt", ["float32", "bfloat16"])
def test_batched_matmul_strided_and_broadcast(mode, rng, dt):
    from samba_ext.cuda.blas import matmul

    a = round_to(rng.standard_normal((3, 7, 8196)), dt)
    b = round_to(rng.standard_normal((33, 8196)), dt)         # broadcast over the batch
    got = host(matmul(dev(a, dt), dev(b, dt), trans_b=True))  # float32 output
    assert _rel(got, a @ b.T) <= TOL["float32"], (mode, dt)
    c = round_to(rng.standard_normal((3, 20, 9)), dt)
    d = round_to(rng.standard_normal((3, 20, 5)), dt)
    got = host(matmul(dev(c, dt), dev(d, dt), trans_a=True, out_dtype=dt))
    assert _rel(got, np.swapaxes(c, 1, 2) @ d) <= TOL[dt], (mode, dt)


@pytest.mark.parametrize("warm", [True, False], ids=["warmed", "first-use-in-capture"])
def test_gemm_in_a_cuda_graph(mode, rng, warm):
    """A GEMM captured into a graph and replayed gives the product of the current inputs.
    Both cases first run an eager GEMM of another shape on the stream (it gets its
    workspace there, as the model backend's stream does in its first, eager decode step).
    warmed: the captured shape also ran eagerly first (lt-tune: its timed choice);
    first-use-in-capture: a shape seen first inside the capture (lt-tune: the heuristic's
    first algorithm, as no timing can run while capturing)."""
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import linear

    cu = _cu()
    dt = "bfloat16"
    s = int(cu.stream_create())
    M, N, K = (300, 2560, 8196) if warm else (17 + mode, 2049, 1000 + mode)
    x = round_to(rng.standard_normal((M, K)), dt)
    w = round_to(rng.standard_normal((N, K)), dt)
    # the arrays live on the capture stream (no cross-stream wait inside the capture)
    xd, wd = to_device(x.astype(np.float32), dt, stream=s), to_device(w.astype(np.float32), dt,
                                                                       stream=s)
    yd = to_device(np.zeros((M, N), np.float32), dt, stream=s)
    other = to_device(np.ones((3, 5), np.float32), dt, stream=s)
    linear(other, other, stream=s)
    if warm:
        linear(xd, wd, out=yd, stream=s)
    cu.stream_sync(s)
    cu.graph_begin(s)
    try:
        linear(xd, wd, out=yd, stream=s)
    finally:
        g = cu.graph_end(s)
    try:
        cu.memset(yd.ptr, 0, yd.nbytes, s)
        cu.graph_launch(g, s)
        cu.stream_sync(s)
        assert _rel(host(yd), x @ w.T) <= TOL[dt], (mode, warm)
    finally:
        cu.graph_free(g)


def test_gemm_mode_rejects_an_unknown_mode():
    cu = _cu()
    old = cu.gemm_mode()
    with pytest.raises(Exception, match="mode"):
        cu.gemm_mode(7)
    assert cu.gemm_mode() == old
