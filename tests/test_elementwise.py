"""RMSNorm, rotary embedding and SwiGLU against float64 references, plus layouts, dtypes,
empty inputs, bad arguments and concurrent calls.

Tolerances (relative norm, conftest.assert_close): RMSNorm sums squares in double and
rounds each output a couple of times in float32 -> ~1e-7, checked at 1e-6. Rotary: cos/sin
are rounded to float32 and each output is a 2-term float32 dot product -> ~1e-7, checked
at 1e-6 (also at position 1e6, where a float32 angle would be off by O(0.1) rad; the test
shows such an implementation fails). SwiGLU: polynomial exp (~2 ulp) and two roundings ->
~2e-7, checked at 1e-6.

The reference-comparison tests also run on CUDA (NumPy inputs with device="cuda"), which
computes in float32 with float32 accumulation (RMSNorm's sum of squares too) and expf, so
there every tolerance is max(CPU tolerance, 1e-5), the issue's float32 bound
(cuda_util.RTOL["float32"]).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import samba_ext
from samba_ext import _core
from conftest import assert_close
from cuda_util import RTOL as CUDA_RTOL
import ref_small as ref

RTOL = 1e-6


def _tol(backend: str, cpu_rtol: float = RTOL) -> float:
    """The CPU tolerance, or at least the float32 bound on CUDA (see the module docstring)."""
    return cpu_rtol if backend == "cpu" else max(cpu_rtol, CUDA_RTOL["float32"])


def _poison(shape) -> None:
    """Leave a freed NaN block of the output's size in NumPy's small-allocation cache, so an
    output element the kernel never writes shows up as NaN (small outputs only)."""
    junk = np.full(shape, np.nan, dtype=np.float32)
    del junk


# ------------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 64), (2, 3, 17), (5, 1536)])
@pytest.mark.parametrize("with_res", [False, True])
def test_rms_norm_matches_reference(rng, backend, shape, with_res):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32) if with_res else None
    eps = 1e-5
    y_ref, s_ref = ref.rms_norm(x, w, eps, r)
    _poison(shape)
    res = samba_ext.rms_norm(x, w, eps, r, device=backend)
    if with_res:
        y, s = res
        np.testing.assert_array_equal(s, (x + r))  # float32 sum, exactly
        assert s.shape == shape and s.dtype == np.float32
    else:
        y = res
    assert y.shape == shape and y.dtype == np.float32
    assert_close(y, y_ref, _tol(backend), "y")


def test_rms_norm_eps_and_zero_rows(rng, backend):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    x[1] = 0.0
    w = rng.standard_normal(33).astype(np.float32)
    for eps in (0.0, 1e-6, 0.5):
        y = samba_ext.rms_norm(x[[0, 2, 3]], w, eps, device=backend)
        assert_close(y, ref.rms_norm(x[[0, 2, 3]], w, eps)[0], _tol(backend), f"eps={eps}")
    y = samba_ext.rms_norm(x, w, 1e-5, device=backend)
    np.testing.assert_array_equal(y[1], np.zeros(33, np.float32))
    assert_close(y, ref.rms_norm(x, w, 1e-5)[0], _tol(backend))
    # NaN in one row stays in that row
    x[2, 5] = np.nan
    y = samba_ext.rms_norm(x, w, 1e-5, device=backend)
    assert np.all(np.isnan(y[2])) and np.all(np.isfinite(y[[0, 1, 3]]))


def test_rms_norm_large_and_threads(rng):
    """Two row chunks (8M elements each); 1 and 2 threads give identical results."""
    x = rng.standard_normal((5600, 1536), dtype=np.float32)
    r = rng.standard_normal((5600, 1536), dtype=np.float32)
    w = rng.standard_normal(1536).astype(np.float32)
    n0 = samba_ext.get_num_threads()
    try:
        samba_ext.set_num_threads(1)
        y1, s1 = samba_ext.rms_norm(x, w, 1e-5, r)
        samba_ext.set_num_threads(2)
        y2, s2 = samba_ext.rms_norm(x, w, 1e-5, r)
    finally:
        samba_ext.set_num_threads(n0)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1, x + r)
    # reference on rows around the chunk boundary (8M // 1536 = 5461 rows per chunk)
    sel = np.array([0, 1, 2730, 5460, 5461, 5599])
    assert_close(y1[sel], ref.rms_norm(x[sel], w, 1e-5, r[sel])[0], RTOL)


def test_rms_norm_layouts_dtypes_empty(rng, backend):
    xw = rng.standard_normal((6, 40)).astype(np.float32)
    x = xw[::-2, ::2]  # negative stride rows, strided columns
    w = rng.standard_normal(20)
    r = rng.standard_normal((3, 20)).astype(np.float16)

    def rms_norm(*args, **kw):
        return samba_ext.rms_norm(*args, **kw, device=backend)

    y, s = rms_norm(x, w, 1e-5, r)
    y_ref, s_ref = ref.rms_norm(x, w.astype(np.float32), 1e-5, r)
    assert_close(y, y_ref, _tol(backend))
    assert_close(s, s_ref, _tol(backend, 1e-7))
    y = rms_norm(x.astype(np.float64), w)
    assert_close(y, ref.rms_norm(x, w.astype(np.float32), 1e-5)[0], _tol(backend))
    assert rms_norm(np.zeros((0, 8), np.float32), np.ones(8)).shape == (0, 8)
    assert rms_norm(np.zeros((3, 0), np.float32), np.ones(0)).shape == (3, 0)
    y, s = rms_norm(np.zeros((2, 0, 8)), np.ones(8), residual=np.zeros((2, 0, 8)))
    assert y.shape == s.shape == (2, 0, 8)


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).


# -------------------------------------------------------------------------------- rotary
@pytest.mark.parametrize("hd", [2, 64, 96, 128, 256])
def test_rotary_offset_matches_reference(rng, backend, hd):
    x = rng.standard_normal((2, 5, 3, hd)).astype(np.float32)
    pos = np.broadcast_to(7 + np.arange(5), (2, 5))

    def rotary(positions):
        return samba_ext.apply_rotary(x, positions, device=backend)

    _poison(x.shape)
    y = rotary(7)
    assert y.shape == x.shape and y.dtype == np.float32
    assert_close(y, ref.rotary(x, pos), _tol(backend))
    # the same positions as a (L,) array and as a (B, L) array
    np.testing.assert_array_equal(rotary(np.arange(7, 12)), y)
    np.testing.assert_array_equal(rotary(np.ascontiguousarray(pos)), y)
    np.testing.assert_array_equal(rotary(np.int32(7)), y)
    if backend == "cpu":  # a 0-d integer array as the offset: the CPU glue only
        np.testing.assert_array_equal(rotary(np.array(7, np.uint16)), y)


def test_rotary_default_positions_and_base(rng, backend):
    x = rng.standard_normal((1, 9, 2, 32)).astype(np.float32)
    pos = np.arange(9)[None]
    assert_close(_core.apply_rotary(x), ref.rotary(x, pos), RTOL)
    assert_close(samba_ext.apply_rotary(x, device=backend), ref.rotary(x, pos), _tol(backend))
    for base in (500000.0, 10.5, 123456.789):
        assert_close(samba_ext.apply_rotary(x, 3, base=base, device=backend),
                     ref.rotary(x, pos + 3, base), _tol(backend), f"base={base}")


@pytest.mark.parametrize("hd", [64, 128])
def test_rotary_large_positions(rng, backend, hd):
    """Positions around 1e6 over several 64-token blocks (the kernel advances cos/sin by a
    rotation within a block). A float32 angle would be wrong by O(0.1) rad there."""
    L = 300
    off = 1_000_000
    x = rng.standard_normal((1, L, 2, hd)).astype(np.float32)
    pos = (off + np.arange(L))[None]
    y = samba_ext.apply_rotary(x, off, device=backend)
    y_ref = ref.rotary(x, pos)
    assert_close(y, y_ref, _tol(backend))
    # this test can tell: the same formula with a float32 angle misses the tolerance
    half = hd // 2
    th32 = (10000.0 ** (-2.0 * np.arange(half) / hd)).astype(np.float32)
    ang32 = pos.astype(np.float32)[:, :, None] * th32
    c, s = np.cos(ang32)[:, :, None], np.sin(ang32)[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    bad = np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], -1)
    assert np.linalg.norm(bad - y_ref) / np.linalg.norm(y_ref) > 100 * _tol(backend)
    # 2**24 + t: beyond float32's integer range, still accurate (angle formed in double;
    # much larger positions are limited by the double angle of the reference itself)
    y = samba_ext.apply_rotary(x[:, :70], 2**24 + 1, device=backend)
    assert_close(y, ref.rotary(x[:, :70], (2**24 + 1 + np.arange(70))[None]), _tol(backend))


def test_rotary_arbitrary_positions(rng, backend):
    """Per-batch positions with jumps, repeats and negatives (re-seeded cos/sin)."""
    B, L, H, hd = 3, 150, 2, 96
    x = rng.standard_normal((B, L, H, hd)).astype(np.float32)
    pos = np.cumsum(rng.integers(0, 3, size=(B, L)), axis=1) - 20
    pos[1] = rng.integers(0, 2_000_000, size=L)
    pos[2, 70:] = pos[2, 70]  # repeated position (padding)
    _poison(x.shape) if x.size <= 256 else None
    y = samba_ext.apply_rotary(x, pos, device=backend)
    assert_close(y, ref.rotary(x, pos), _tol(backend))


def test_rotary_long_and_threads(rng):
    """1025 blocks of 64 tokens x 2 heads x 64 = two 8M-element chunks; 1 and 2 threads give
    identical results."""
    x = rng.standard_normal((1, 65600, 2, 64), dtype=np.float32)
    n0 = samba_ext.get_num_threads()
    try:
        samba_ext.set_num_threads(1)
        y1 = samba_ext.apply_rotary(x, 5)
        samba_ext.set_num_threads(2)
        y2 = samba_ext.apply_rotary(x, 5)
    finally:
        samba_ext.set_num_threads(n0)
    np.testing.assert_array_equal(y1, y2)
    assert_close(y1, ref.rotary(x, (5 + np.arange(65600))[None]), RTOL)


def test_rotary_layouts_dtypes_empty(rng, backend):
    xw = rng.standard_normal((2, 6, 3, 64))
    x = xw[:, ::-2, :, :32]  # float64, negative stride, non-contiguous head slice

    def rotary(xs, positions):
        return samba_ext.apply_rotary(xs, positions, device=backend)

    y = rotary(x, 4)
    pos = np.broadcast_to(4 + np.arange(3), (2, 3))
    assert_close(y, ref.rotary(x.astype(np.float32), pos), _tol(backend))
    x16 = x.astype(np.float16)
    assert_close(rotary(x16, 4), ref.rotary(x16, pos), _tol(backend))
    for shape in [(0, 4, 2, 8), (2, 0, 2, 8), (2, 4, 0, 8), (2, 4, 2, 0)]:
        assert rotary(np.zeros(shape, np.float32), 3).shape == shape
    y = rotary(np.zeros((2, 0, 2, 8), np.float32), np.zeros((2, 0), np.int64))
    assert y.shape == (2, 0, 2, 8)


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).


# -------------------------------------------------------------------------------- SwiGLU
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5, 11), (4, 1000)])
def test_swiglu_matches_reference(rng, backend, shape):
    g = (rng.standard_normal(shape) * 4).astype(np.float32)
    u = rng.standard_normal(shape).astype(np.float32)
    _poison(shape)
    y = samba_ext.swiglu(g, u, device=backend)
    assert y.shape == shape and y.dtype == np.float32
    assert_close(y, ref.swiglu(g, u), _tol(backend))


def test_swiglu_range_and_specials(backend):
    # the whole useful range of gate values, incl. where exp over/underflows
    g = np.linspace(-120, 120, 4801).astype(np.float32)
    u = np.ones_like(g)
    y = samba_ext.swiglu(g, u, device=backend)
    r = ref.swiglu(g, u)
    # pointwise: relative 1e-6 where |silu| is not tiny, absolute 1e-30 where it is
    np.testing.assert_allclose(y, r, rtol=_tol(backend), atol=1e-30)
    y = samba_ext.swiglu(np.array([np.nan, 1.0, np.inf, 2.0], np.float32),
                         np.array([1.0, np.nan, 1.0, 3.0], np.float32), device=backend)
    assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == np.inf
    assert_close(y[3:], ref.swiglu(np.float32([2.0]), np.float32([3.0])), _tol(backend))


def test_swiglu_large_layouts_dtypes_empty(rng, backend):
    g = rng.standard_normal((5, 2_000_001), dtype=np.float32)  # two 8M-element chunks
    u = rng.standard_normal((5, 2_000_001), dtype=np.float32)
    y = samba_ext.swiglu(g, u, device=backend)
    assert_close(y, ref.swiglu(g, u), _tol(backend))
    gw = rng.standard_normal((10, 12))
    g2 = gw[::-3, 1::2]  # float64 strided
    u2 = rng.standard_normal((6, 12)).astype(np.float16).T[::-3]
    assert g2.shape == u2.shape
    assert_close(samba_ext.swiglu(g2, u2, device=backend),
                 ref.swiglu(g2.astype(np.float32), u2), _tol(backend))
    assert samba_ext.swiglu(np.zeros((0, 3)), np.zeros((0, 3)), device=backend).shape == (0, 3)


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).


# ---------------------------------------------------------------------------- threading
def test_concurrent_calls_equal_serial(rng):
    """4 Python threads calling the kernels at once (each call may run its own OpenMP team)
    produce exactly the serial results."""
    jobs = []
    for i in range(8):
        x = rng.standard_normal((2, 96, 3000)).astype(np.float32)
        w = rng.standard_normal((96, 4)).astype(np.float32)
        b = rng.standard_normal(96).astype(np.float32)
        s = rng.standard_normal((2, 96, 3)).astype(np.float32)
        q = rng.standard_normal((1, 600, 4, 64)).astype(np.float32)
        n = rng.standard_normal((700, 768)).astype(np.float32)
        nw = rng.standard_normal(768).astype(np.float32)
        jobs.append((x, w, b, s, q, n, nw))

    def run(job):
        x, w, b, s, q, n, nw = job
        y, f = samba_ext.causal_conv1d(x, w, b, "silu", s, return_final_states=True)
        st = s.copy()
        ys = samba_ext.causal_conv1d_update(x[:, :, 0], st, w, b, "silu")
        return (y, f, ys, st, samba_ext.apply_rotary(q, 1000 * len(x)),
                *samba_ext.rms_norm(n, nw, 1e-5, n[::-1]), samba_ext.swiglu(n, n[::-1]))

    serial = [run(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=4) as ex:
        parallel = list(ex.map(run, jobs))
    for a, b in zip(serial, parallel):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
