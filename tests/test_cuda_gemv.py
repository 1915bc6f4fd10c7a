"""The small-M GEMV path of csrc/cuda/gemv.cu (SAMBA_EXT_GEMV, switched in-process through the
extension's ``gemv_mode``) against a float64 NumPy product: M 1..8 rows of bf16 / f16 x, every
output dtype, beta 0 and 1, K with a scalar tail (K % 8 != 0), W rows 16- or only 8-byte
aligned (the 8-byte vector path), unaligned W (cuBLAS must take over), strided x and y,
the one-row kernel (M = 1) and split-K (small N, M > 1) with its float32 partial sums, calls
captured in a CUDA graph, and the CUDA model's decode with the GEMV on against off.
``gemv_launches`` tells which path ran.

Tolerances (relative Frobenius norm against max(||ref||, || |x| |w|^T || / sqrt(K)), as in
tests/test_cuda_gemm_modes.py, whose docstring derives them): the inputs are exact in their
dtype, so only float32 accumulation and the output's rounding remain. float32 outputs: each
output is a float32 sum of K products in a lane-serial order (K / 32 terms per lane, or per
lane and split or warp), a 5-level warp tree and a serial sum of the S split partials (or of
the 1-8 warps sharing a row in the one-row kernel): fewer
sequential roundings than K, so the sqrt(K) u32 estimate (5.4e-6 at K = 8196) holds and 3e-5
leaves a 5x margin. float16 / bfloat16 outputs: one final rounding (unit roundoff 4.9e-4 /
3.9e-3) dominates: tests/cuda_util.RTOL (2e-3 / 1e-2) plus the float32 part.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from cuda_util import CAIView, dev, host, needs_cuda, round_to

pytestmark = needs_cuda

TOL = {"float32": 3e-5, "float16": 2e-3 + 3e-5, "bfloat16": 1e-2 + 3e-5}
CODE = {"float32": 0, "float16": 1, "bfloat16": 2}


def _rel(got, ref, absref, K: int) -> float:
    den = max(np.linalg.norm(ref), np.linalg.norm(absref) / np.sqrt(K))
    return float(np.linalg.norm(got - ref) / max(den, 1e-300))


@functools.lru_cache(maxsize=8)
def _operand(rows: int, cols: int, dt: str, seed: int) -> np.ndarray:
    """A rounded random (rows, cols) float64 operand, made once per shape / dtype / seed."""
    a = round_to(np.random.default_rng(seed).standard_normal((rows, cols)), dt)
    a.setflags(write=False)
    return a


def _pitch(K: int) -> int:
    """A row pitch for W: K where K 16-bit values make 8-byte aligned rows, else K rounded up
    to 8 (the GEMV's vector loads need 8-byte aligned rows; W rows that are not are cuBLAS's,
    tested in test_gemv_alignment_and_fallback)."""
    return K if K % 4 == 0 else -(-K // 8) * 8


def _run(cu, M, N, K, dt, odt, beta, *, ldx=None, ldw=None, ldy=None, xoff=0, woff=0, yoff=0,
         seed=0, stream=None):
    """cu.gemm on x (M, ldx), w (N, ldw), y (M, ldy) starting xoff / woff / yoff elements into
    their buffers (y's buffer is NaN where the product is not written when beta = 0).
    Returns (y rows as float64 incl. the columns past N, expected, |x||w|^T, ran the GEMV)."""
    ldx, ldw, ldy = ldx or K, ldw or _pitch(K), ldy or N
    xb = _operand(1, xoff + M * ldx, dt, 10 + seed)[0]
    wb = _operand(1, woff + N * ldw, dt, 20 + seed)[0]
    y0 = round_to(np.random.default_rng(30 + seed).standard_normal(yoff + M * ldy), odt)
    if beta == 0:
        y0[yoff:].reshape(M, ldy)[:, :N] = np.nan
    xd, wd, yd = dev(xb, dt), dev(wb, dt), dev(y0, odt)
    s = yd.stream if stream is None else stream
    isz = {"float32": 4, "float16": 2, "bfloat16": 2}
    before = cu.gemv_launches()
    cu.gemm(M, N, K, (xd.ptr + xoff * isz[dt], CODE[dt]), ldx,
            (wd.ptr + woff * isz[dt], CODE[dt]), ldw, (yd.ptr + yoff * isz[odt], CODE[odt]),
            ldy, float(beta), s)
    cu.stream_sync(s)
    ran = cu.gemv_launches() > before
    x = xb[xoff:xoff + M * ldx].reshape(M, ldx)[:, :K]
    w = wb[woff:woff + N * ldw].reshape(N, ldw)[:, :K]
    yv = y0[yoff:].reshape(M, ldy)
    ref = yv.copy()
    ref[:, :N] = x @ w.T + (beta * yv[:, :N] if beta else 0.0)
    absref = np.abs(x) @ np.abs(w).T + (beta * np.abs(yv[:, :N]) if beta else 0.0)
    got = host(yd)[yoff:].reshape(M, ldy)
    return got, ref, absref, ran


def _check(got, ref, absref, N, K, odt, what):
    assert np.isfinite(got[:, :N]).all(), what
    np.testing.assert_array_equal(got[:, N:], ref[:, N:])  # y's other columns untouched
    assert _rel(got[:, :N], ref[:, :N], absref, K) <= TOL[odt], what


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
@pytest.mark.parametrize("M", [1, 2, 3, 8])
@pytest.mark.parametrize("N", [1, 7, 160, 2048])
@pytest.mark.parametrize("K", [8, 128, 2050, 8196])
def test_gemv_matches_float64(gemv_on, dt, M, N, K):
    """Every output dtype and beta; K 2050 (W pitch 2056): a 2-element tail past the 16-byte
    vectors; K 8196: rows 8 bytes apart modulo 16 (the 8-byte path); N 160 / 2048: split-K
    for M > 1 (one row runs the one-row kernel, see test_gemv_one_row_kernels); M 8 with
    K 8196: split-K forced by the shared-memory x slice."""
    for odt in (dt, "float32"):
        for beta in (0.0, 1.0):
            got, ref, absref, ran = _run(gemv_on, M, N, K, dt, odt, beta, ldy=N + 3)
            assert ran, (dt, odt, beta, M, N, K)
            _check(got, ref, absref, N, K, odt, (dt, odt, beta, M, N, K))


@pytest.mark.parametrize("rows", ["1", "0"])
@pytest.mark.parametrize("N", [1, 7, 160, 2048, 16392])
@pytest.mark.parametrize("K", [8, 2050, 8196])
def test_gemv_one_row_kernels(gemv_on, monkeypatch, rows, N, K):
    """A one-row product runs the one-row kernel (1-8 warps per row of W: N 1 and 7 take 8,
    16392 takes 1; K 8 leaves each warp less than a vector per lane) or, with
    SAMBA_EXT_GEMV_ROWS=0 (read at each call), the split-K kernel."""
    monkeypatch.setenv("SAMBA_EXT_GEMV_ROWS", rows)
    for dt in ("bfloat16", "float16"):
        for odt, beta in ((dt, 0.0), ("float32", 1.0)):
            got, ref, absref, ran = _run(gemv_on, 1, N, K, dt, odt, beta, ldy=N + 3)
            assert ran, (rows, dt, odt, N, K)
            _check(got, ref, absref, N, K, odt, (rows, dt, odt, beta, N, K))


@pytest.mark.parametrize("M", [1, 8])
@pytest.mark.parametrize("N,K", [(16392, 2048), (50304, 2048), (16392, 2050), (2048, 8196)])
def test_gemv_model_sizes(gemv_on, M, N, K):
    for odt in ("bfloat16", "float32"):
        got, ref, absref, ran = _run(gemv_on, M, N, K, "bfloat16", odt, 0.0)
        assert ran
        _check(got, ref, absref, N, K, odt, (odt, M, N, K))


# (xoff, ldx pad, woff, ldw pad, yoff, ldy pad, GEMV expected to run)
LAYOUTS = [
    (1, 3, 0, 0, 1, 5, True),     # x and y only element-aligned: the GEMV copies x per element
    (0, 0, 4, 4, 0, 0, True),     # W 8-byte aligned (base and pitch): the 8-byte vector path
    (0, 0, 8, 8, 0, 0, True),     # W 16-byte aligned at an offset
    (0, 0, 1, 0, 0, 0, False),    # W base 2-byte aligned: cuBLAS
    (0, 0, 0, 1, 0, 0, False),    # W rows 2 bytes apart modulo 8: cuBLAS
    (0, 0, 2, 2, 0, 0, False),    # W 4-byte aligned: cuBLAS
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M,N,K", [(1, 2048, 2048), (3, 160, 4096), (8, 33, 8196)])
def test_gemv_alignment_and_fallback(gemv_on, layout, M, N, K):
    xo, xp, wo, wp, yo, yp, gemv = layout
    for beta in (0.0, 1.0):
        got, ref, absref, ran = _run(gemv_on, M, N, K, "bfloat16", "bfloat16", beta,
                                     ldx=K + xp, ldw=K + wp, ldy=N + yp, xoff=xo, woff=wo,
                                     yoff=yo)
        assert ran == gemv, (layout, M, N, K)
        _check(got, ref, absref, N, K, "bfloat16", (layout, beta, M, N, K))


@pytest.mark.parametrize("M", [1, 4, 8])
@pytest.mark.parametrize("K", [2049, 2050, 2051])
def test_gemv_8byte_rows_with_tail(gemv_on, M, K):
    """W rows 2052 elements apart (4104 bytes: 8-byte but not 16-byte aligned) with K % 4 =
    1, 2, 3: the 8-byte vector path (4 elements per load) with a scalar tail of 1..3
    elements, unsplit and split-K (N 160: 4 splits, the tail in the last one)."""
    for dt in ("bfloat16", "float16"):
        for odt, beta in ((dt, 0.0), ("float32", 1.0)):
            got, ref, absref, ran = _run(gemv_on, M, 160, K, dt, odt, beta, ldw=2052)
            assert ran, (dt, odt, M, K)
            _check(got, ref, absref, 160, K, odt, (dt, odt, beta, M, K))


def test_gemv_off_and_outside_its_range_uses_cublas(gemv_on):
    cu = gemv_on
    for M, dt in ((9, "bfloat16"), (1, "float32")):   # too many rows; float32 inputs
        got, ref, absref, ran = _run(cu, M, 64, 256, dt, dt, 0.0)
        assert not ran
        _check(got, ref, absref, 64, 256, dt, (M, dt))
    cu.gemv_mode(0)
    got, ref, absref, ran = _run(cu, 1, 64, 256, "bfloat16", "bfloat16", 0.0)
    assert not ran
    _check(got, ref, absref, 64, 256, "bfloat16", "off")


@pytest.mark.parametrize("shape,rows,runs", [((3, 1), 3, True), ((2, 4), 8, True),
                                             ((3, 3), 9, False), ((5,), 5, True)])
def test_gemv_through_matmul_batches(gemv_on, shape, rows, runs):
    """blas.matmul (the model's call): x (..., K) @ W^T with a 2-D W shared by the batch is a
    strided-batched GEMM whose batch and row axes the GEMV flattens into its <= 8 rows."""
    from samba_ext.cuda import runtime
    from samba_ext.cuda.blas import matmul

    K, N, dt = 2052, 160, "bfloat16"   # rows 8-byte aligned: the 8-byte vector path
    x = _operand(rows, K, dt, 1).reshape(shape + (K,))
    w = _operand(N, K, dt, 2)
    runtime.set_poison(True)   # outputs start as NaN
    try:
        before = gemv_on.gemv_launches()
        got = host(matmul(dev(x, dt), dev(w, dt), trans_b=True, out_dtype="float32"))
        ran = gemv_on.gemv_launches() > before
    finally:
        runtime.set_poison(False)
    assert ran == runs
    assert got.shape == shape + (N,)
    ref = x @ w.T
    absref = np.abs(x) @ np.abs(w).T
    assert np.isfinite(got).all()
    assert _rel(got, ref, absref, K) <= TOL["float32"]


def test_gemv_strided_x_view(gemv_on):
    """x a column slice of a wider matrix (the decode step's dbl[:, :R] @ dt_proj^T): read in
    place at an odd element offset and row stride."""
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import matmul

    dt, M, K, N, ld = "bfloat16", 3, 128, 4096, 161
    big = _operand(M, ld, dt, 3)
    w = _operand(N, K, dt, 4)
    base = to_device(big.astype(np.float32), dt)
    xv = CAIView(base, (M, K), (ld, 1), offset=5)
    before = gemv_on.gemv_launches()
    got = host(matmul(xv, dev(w, dt), trans_b=True, out_dtype=dt))
    assert gemv_on.gemv_launches() > before
    x = big[:, 5:5 + K]
    _check(got, x @ w.T, np.abs(x) @ np.abs(w).T, N, K, dt, "strided x")


@pytest.mark.parametrize("M,N,K,warm", [(1, 2048, 8196, True), (4, 160, 2048, True),
                                        (1, 2048, 2048, False), (2, 4096, 128, False)])
def test_gemv_in_a_cuda_graph(gemv_on, rng, M, N, K, warm):
    """A GEMV captured into a graph and replayed computes from the inputs' current values.
    warm: the stream ran a GEMM eagerly before the capture, so it has its workspace and the
    split-K partial sums of M > 1 go there; not warm: the first GEMM of a fresh stream is the
    captured one, no workspace can be allocated, and a split-K GEMV runs unsplit (S = 1). One
    row runs the one-row kernel, which needs no workspace. (These shapes fit one split's shared
    memory, so the GEMV runs with or without a workspace: gemm.cu keeps workspaces for at most
    16 streams per process.)"""
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import linear

    cu = gemv_on
    dt = "bfloat16"
    s = int(cu.stream_create())
    x1 = round_to(rng.standard_normal((M, K)), dt)
    x2 = round_to(rng.standard_normal((M, K)), dt)
    w = round_to(rng.standard_normal((N, K)), dt)
    xd = to_device(x1.astype(np.float32), dt, stream=s)
    x2d = to_device(x2.astype(np.float32), dt, stream=s)
    wd = to_device(w.astype(np.float32), dt, stream=s)
    yd = to_device(np.full((M, N), np.nan, np.float32), dt, stream=s)
    if warm:
        linear(xd, wd, out=yd, stream=s)
    cu.stream_sync(s)
    before = cu.gemv_launches()
    cu.graph_begin(s)
    try:
        linear(xd, wd, out=yd, stream=s)
    finally:
        g = cu.graph_end(s)
    assert cu.gemv_launches() > before
    try:
        cu.memset(yd.ptr, 0xFF, yd.nbytes, s)          # NaN
        cu.memcpy_d2d(xd.ptr, x2d.ptr, xd.nbytes, s)    # new inputs, same addresses
        cu.graph_launch(g, s)
        cu.stream_sync(s)
        got = host(yd)
        assert np.isfinite(got).all()
        assert _rel(got, x2 @ w.T, np.abs(x2) @ np.abs(w).T, K) <= TOL[dt], (M, N, K, warm)
    finally:
        cu.graph_free(g)



@pytest.mark.parametrize("ad", ["bfloat16", "float32"])
@pytest.mark.parametrize("B", [1, 3])
def test_model_decode_with_gemv_matches_cublas(rng, cu_modes, ad, B):
    """A tiny CUDA model (bf16 weights) decoding with CUDA graphs, GEMV on against off. The
    two paths differ only in the float32 summation order of each GEMM output (~1e-6
    relative), but an activation rounded to bf16 (a bf16 GEMM output, or a float32 activation
    rounded to bf16 as the GEMM's input) that this noise moves across a rounding boundary
    changes by one bf16 ulp (2^-8 relative) and carries on through the layers: as between
    graph and eager decode (tests/test_model_cuda.py), 1e-2 of the largest logit, while a
    wrong GEMV (errors of order 1) fails."""
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.model import Samba

    cu = cu_modes
    cfg = dataclasses.replace(SambaConfig.preset("samba-test"),
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (B, 12))
    outs, launched = [], []
    for on in (1, 0):
        cu.gemv_mode(on)
        before = cu.gemv_launches()
        m = Samba(cfg, seed=6, device=CUDABackend(act_dtype=ad, weight_dtype="bfloat16",
                                                  graphs=True))
        st = m.new_state(B)
        m.prefill(toks[:, :4], st)
        outs.append(np.stack([m.step(toks[:, t], st) for t in range(4, 12)]))
        launched.append(cu.gemv_launches() - before)
        assert m.backend.stats["replays"] > 0
    assert launched[0] > 0 and launched[1] == 0, launched
    assert np.isfinite(outs[0]).all()
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-2 * np.abs(outs[1]).max())


def test_gemv_auto_takes_one_row_where_dependent_launch_is_on(cu_modes):
    """Mode 2 (the default): the GEMV for M = 1 on a device with dependent launch (compute
    capability 9.0+) while pdl_mode is on; cuBLAS for M >= 2, with pdl_mode off, or before 9.0."""
    cu = cu_modes
    has_pdl = cu.device_info(0)["capability"][0] >= 9
    cu.gemv_mode(2)
    for pdl in (1, 0):
        cu.pdl_mode(pdl)
        for M in (1, 2):
            got, ref, absref, ran = _run(cu, M, 96, 256, "bfloat16", "bfloat16", 0.0)
            assert ran == (M == 1 and pdl == 1 and has_pdl), (M, pdl, has_pdl)
            _check(got, ref, absref, 96, 256, "bfloat16", (M, pdl))


def test_gemv_mode_rejects_other_values(cu_modes):
    cu = cu_modes
    old = cu.gemv_mode()
    for bad in (3, 7):
        with pytest.raises(Exception, match="gemv"):
            cu.gemv_mode(bad)
    assert cu.gemv_mode() == old


@pytest.mark.parametrize("env,want", [("1", 1), ("0", 0), (None, 2), ("yes", 2)])
def test_gemv_mode_starts_from_the_environment(env, want):
    """SAMBA_EXT_GEMV gives the initial setting (read once, in a fresh process): 1 on, 0 off,
    anything else auto (2: one-row products where dependent launch is on)."""
    import os
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if k != "SAMBA_EXT_GEMV"}
    if env is not None:
        e["SAMBA_EXT_GEMV"] = env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", "import samba_ext._cuda as c; "
                          "print(c.gemv_mode())"], env=e, capture_output=True, text=True,
                         check=True).stdout
    assert int(out.strip()) == want
