"""Depthwise causal conv1d (prefill and decode step) against the float64 reference.

Tolerances: each output is a sum of at most 4 float32 products plus a bias (and SiLU via a
polynomial exp with ~2 ulp error), so the relative error is a few float32 ulp (~1e-7);
1e-6 leaves margin while still catching any wrong tap, shift or state (those give O(1)
errors). States are copies of inputs and must match exactly.

The reference-comparison tests also run on CUDA (NumPy inputs with device="cuda"), which
computes in float32 with float32 accumulation but a different operation order and expf, so
there every tolerance is max(CPU tolerance, 1e-5), the issue's float32 bound
(cuda_util.RTOL["float32"]); states stay exact.
"""
from __future__ import annotations

import itertools

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
    """Leave a freed NaN block of the output's size in NumPy's allocation cache, so that
    an output element the kernel forgets to write shows up as NaN (effective for small
    outputs, which NumPy serves from that cache)."""
    junk = np.full(shape, np.nan, dtype=np.float32)
    del junk


def _inputs(rng, batch, dim, seqlen, width, bias, init):
    x = rng.standard_normal((batch, dim, seqlen), dtype=np.float32)
    w = (rng.standard_normal((dim, width)) * 0.5).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32) if bias else None
    s = rng.standard_normal((batch, dim, width - 1)).astype(np.float32) if init else None
    return x, w, b, s


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("batch,seqlen", [(1, 1), (3, 7), (2, 64)])
@pytest.mark.parametrize("bias,act,init", list(itertools.product(
    [False, True], [None, "silu"], [False, True])))
def test_conv1d_matches_reference(rng, backend, width, batch, seqlen, bias, act, init):
    dim = 5
    x, w, b, s = _inputs(rng, batch, dim, seqlen, width, bias, init)
    y_ref, f_ref = ref.causal_conv1d(x, w, b, act, s)
    _poison((batch, dim, seqlen))
    y, fin = samba_ext.causal_conv1d(x, w, b, act, s, return_final_states=True,
                                     device=backend)
    assert y.dtype == np.float32 and fin.dtype == np.float32
    assert_close(y, y_ref, _tol(backend), "y")
    np.testing.assert_array_equal(fin, f_ref.astype(np.float32))
    y2 = samba_ext.causal_conv1d(x, w, b, act, s, device=backend)  # no final states: same y
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [3, 16, 19, 100])
def test_conv1d_every_isa(rng, monkeypatch, isa, width, seqlen):
    """Each instruction-set path (the AVX-512 one has an explicit vector body of 16 steps
    for widths <= 4, the head and tail elementwise) against the reference."""
    monkeypatch.setenv("SAMBA_EXT_ISA", isa)
    for bias, act, init in itertools.product([False, True], [None, "silu"], [False, True]):
        x, w, b, s = _inputs(rng, 2, 3, seqlen, width, bias, init)
        y_ref, _ = ref.causal_conv1d(x, w, b, act, s)
        assert_close(samba_ext.causal_conv1d(x, w, b, act, s), y_ref, RTOL,
                     f"{isa} w{width} L{seqlen} {bias} {act} {init}")


def test_swish_alias_and_keywords(rng):
    x, w, b, s = _inputs(rng, 2, 6, 9, 4, True, True)
    a = _core.causal_conv1d(x, w, b, "silu", s, False)
    c = _core.causal_conv1d(x=x, weight=w, bias=b, activation="swish", initial_states=s)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [0, 1, 2, 3])
def test_short_sequences_final_states(rng, backend, width, seqlen):
    """seqlen < width-1: the final state mixes the initial state and x (older first)."""
    x, w, b, s = _inputs(rng, 2, 3, seqlen, width, True, True)
    y, fin = samba_ext.causal_conv1d(x, w, b, "silu", s, return_final_states=True,
                                     device=backend)
    y_ref, f_ref = ref.causal_conv1d(x, w, b, "silu", s)
    if seqlen:
        assert_close(y, y_ref, _tol(backend), "y")
    assert y.shape == (2, 3, seqlen)
    np.testing.assert_array_equal(fin, f_ref.astype(np.float32))
    # without initial states the missing history is zeros
    y0, f0 = samba_ext.causal_conv1d(x, w, None, None, None, return_final_states=True,
                                     device=backend)
    np.testing.assert_array_equal(f0, ref.causal_conv1d(x, w)[1].astype(np.float32))


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_split_sequence_equals_full(rng, backend, width, k):
    """conv over [0, L) == conv over [0, k) then [k, L) with final -> initial states (each
    output is the same float32 expression of the same values, so bit-identical)."""
    x, w, b, s = _inputs(rng, 2, 4, 11, width, True, True)

    def conv(xs, init):
        return samba_ext.causal_conv1d(xs, w, b, "silu", init, return_final_states=True,
                                       device=backend)

    y, fin = conv(x, s)
    ya, fa = conv(x[:, :, :k], s)
    yb, fb = conv(x[:, :, k:], fa)
    np.testing.assert_array_equal(np.concatenate([ya, yb], axis=2), y)
    np.testing.assert_array_equal(fb, fin)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("act", [None, "silu"])
def test_update_steps_equal_full_conv(rng, backend, width, act):
    x, w, b, s = _inputs(rng, 3, 5, 9, width, True, True)
    y, fin = samba_ext.causal_conv1d(x, w, b, act, s, return_final_states=True,
                                     device=backend)
    state = s.copy()
    steps = []
    for t in range(x.shape[2]):
        _poison((3, 5))
        steps.append(samba_ext.causal_conv1d_update(x[:, :, t], state, w, b, act,
                                                    device=backend))
    ys = np.stack(steps, axis=2)
    assert_close(ys, ref.causal_conv1d(x, w, b, act, s)[0], _tol(backend), "y (steps)")
    # the step kernel sums the taps in the same order as the prefill kernel
    np.testing.assert_allclose(ys, y, rtol=_tol(backend), atol=_tol(backend))
    np.testing.assert_array_equal(state, fin)


def test_update_without_bias_keywords(rng):
    x, w, _, s = _inputs(rng, 1, 3, 1, 3, False, True)
    state = s.copy()
    y = _core.causal_conv1d_update(x=x[:, :, 0], conv_state=state, weight=w)
    y_ref, f_ref = ref.causal_conv1d(x, w, None, None, s)
    assert_close(y, y_ref[:, :, 0], RTOL)
    np.testing.assert_array_equal(state, f_ref.astype(np.float32))


def test_long_multichunk_and_threads(rng):
    """Long rows are split into time chunks (65536) and row chunks; 1 and 2 threads must
    give bit-identical results (per-element arithmetic does not depend on the split)."""
    x, w, b, s = _inputs(rng, 2, 3, 70001, 4, True, True)
    y_ref, f_ref = ref.causal_conv1d(x, w, b, "silu", s)
    n0 = samba_ext.get_num_threads()
    try:
        samba_ext.set_num_threads(1)
        y1, f1 = samba_ext.causal_conv1d(x, w, b, "silu", s, return_final_states=True)
        samba_ext.set_num_threads(2)
        y2, f2 = samba_ext.causal_conv1d(x, w, b, "silu", s, return_final_states=True)
    finally:
        samba_ext.set_num_threads(n0)
    assert_close(y1, y_ref, RTOL, "y")
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(f1, f_ref.astype(np.float32))
    np.testing.assert_array_equal(f2, f1)


def test_many_rows(rng, backend):
    """More rows than one chunk holds (8M elements / seqlen = 4094 rows per chunk)."""
    x, w, b, s = _inputs(rng, 2, 2100, 2049, 3, True, True)
    y = samba_ext.causal_conv1d(x, w, b, None, s, device=backend)
    # reference on a subset of channels (the kernel does not mix channels); rows 4093/4094
    # (b=1, d=1993/1994) sit on both sides of the chunk boundary
    sel = np.array([0, 1, 1049, 1993, 1994, 2099])
    y_ref, _ = ref.causal_conv1d(x[:, sel], w[sel], b[sel], None, s[:, sel])
    assert_close(y[:, sel], y_ref, _tol(backend))


def test_layouts_and_dtypes(rng, backend):
    """float16 / float64 / non-contiguous / negative-stride inputs are converted."""
    x, w, b, s = _inputs(rng, 2, 4, 13, 4, True, True)

    def conv(*args):
        return samba_ext.causal_conv1d(*args, device=backend)

    base = conv(x, w, b, "silu", s)
    y64 = conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), "silu",
               s.astype(np.float64))
    np.testing.assert_array_equal(y64, base)
    x16 = x.astype(np.float16)
    y16 = conv(x16, w, b, "silu", s)
    assert_close(y16, ref.causal_conv1d(x16, w, b, "silu", s)[0], _tol(backend))
    # non-contiguous: every other channel of a wider array; negative stride in time
    xw = rng.standard_normal((2, 8, 13)).astype(np.float32)
    xnc = xw[:, ::2, ::-1]
    y = conv(xnc, w, b, None, s)
    assert_close(y, ref.causal_conv1d(np.ascontiguousarray(xnc), w, b, None, s)[0],
                 _tol(backend))
    wt = np.asfortranarray(w)
    np.testing.assert_array_equal(conv(x, wt, b, "silu", s), base)


def test_empty_inputs(rng, backend):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    s = rng.standard_normal((2, 4, 2)).astype(np.float32)
    y, fin = samba_ext.causal_conv1d(np.zeros((2, 4, 0), np.float32), w, None, "silu", s,
                                     return_final_states=True, device=backend)
    assert y.shape == (2, 4, 0)
    np.testing.assert_array_equal(fin, s)
    y, fin = samba_ext.causal_conv1d(np.zeros((0, 4, 5), np.float32), w,
                                     return_final_states=True, device=backend)
    assert y.shape == (0, 4, 5) and fin.shape == (0, 4, 2)
    y, fin = samba_ext.causal_conv1d(np.zeros((2, 0, 5), np.float32),
                                     np.zeros((0, 3), np.float32), return_final_states=True,
                                     device=backend)
    assert y.shape == (2, 0, 5) and fin.shape == (2, 0, 2)
    y = samba_ext.causal_conv1d_update(np.zeros((0, 4), np.float32),
                                       np.zeros((0, 4, 2), np.float32), w, device=backend)
    assert y.shape == (0, 4)


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).
