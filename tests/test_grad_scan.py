"""Gradients of the selective scan (samba_ext.grad.selective_scan_bwd, C kernel scan_bwd.c).

Two checks: (1) on tiny shapes, central finite differences of the float64 forward
reference (ref_scan.py) against the C gradients and against the float64 analytic
reference (ref_grad.py), which validates the reference itself; (2) on many shapes (odd
lengths, chunk boundaries at 64 steps, the long-sequence chunking above 16384 steps,
batch > 1, grouped and 3-D B/C, every optional input on and off, softplus on both sides
of its threshold 20), the C gradients against the analytic reference.

Tolerances (relative norm, conftest.assert_close). Inputs are rounded to float32 before
the float64 references see them, so only the kernel's float32 arithmetic differs. Each
gradient element is a sum of float32 products along the state recurrence (about 10
roundings of ~6e-8 per step, carried over the state's memory) or, for dA, dD and
ddelta_bias, a float32 sum over batch x seqlen terms; for random inputs the relative-norm
error grows like sqrt(L) and was measured at 1e-7 .. 5e-7 for these shapes.
rtol(L) = 1e-5 (1 + sqrt(L / 256)) leaves a margin of >= 20x over that, while a wrong sign,
index, mask, chunk hand-over or derivative term gives errors of 1e-3 .. 1. Finite
differences in float64 with h = 1e-6 have truncation error ~h^2 and rounding ~1e-10
relative, far below it; the reference-vs-differences check uses 1e-6.
NaN/Inf never pass (assert_close checks finiteness).
"""
from __future__ import annotations

import numpy as np
import pytest

import samba_ext
from conftest import assert_close
from ref_grad import num_grad, r32, selective_scan_bwd_ref, selective_scan_outputs
from samba_ext import grad

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def rtol(L: int) -> float:
    return 1e-5 * (1.0 + np.sqrt(max(L, 1) / 256.0))


def make(rng, batch, dim, L, N, G, *, three_d=False, D=True, z=True, bias=True, init=True,
         delta_scale=0.5, delta_shift=0.0):
    """float32-rounded float64 inputs of one scan (A negative, as in Mamba)."""
    inp = dict(
        u=rng.standard_normal((batch, dim, L)),
        delta=rng.standard_normal((batch, dim, L)) * delta_scale + delta_shift,
        A=-np.exp(rng.standard_normal((dim, N)) * 0.5),
        B=rng.standard_normal((batch, N, L) if three_d else (batch, G, N, L)),
        C=rng.standard_normal((batch, N, L) if three_d else (batch, G, N, L)),
        D=rng.standard_normal(dim) if D else None,
        z=rng.standard_normal((batch, dim, L)) if z else None,
        delta_bias=rng.standard_normal(dim) * 0.3 if bias else None,
        initial_state=rng.standard_normal((batch, dim, N)) if init else None,
    )
    return {k: (None if v is None else r32(v)) for k, v in inp.items()}


def run(inp, softplus, dout, dlast):
    got = grad.selective_scan_bwd(**inp, delta_softplus=softplus, dout=dout, dlast_state=dlast)
    ref = selective_scan_bwd_ref(**inp, delta_softplus=softplus, dout=dout, dlast_state=dlast)
    return got, ref


def grad_name(k: str) -> str:
    return "dinitial_state" if k == "initial_state" else "d" + k


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("three_d,G", [(False, 2), (True, 1)])
def test_finite_differences(rng, softplus, three_d, G):
    batch, dim, L, N = 2, 4, 5, 3
    inp = make(rng, batch, dim, L, N, G, three_d=three_d)
    dout = r32(rng.standard_normal((batch, dim, L)))
    dlast = r32(rng.standard_normal((batch, dim, N)))
    got, ref = run(inp, softplus, dout, dlast)
    work = {k: v.copy() for k, v in inp.items()}
    for k in NAMES:
        fd = num_grad(lambda i: selective_scan_outputs(i, softplus), work, k, [dout, dlast])
        assert_close(ref[grad_name(k)], fd, 1e-6, f"reference d{k} vs differences")
        assert_close(getattr(got, grad_name(k)), fd, rtol(L), f"kernel d{k} vs differences")


CASES = [
    # batch, dim, L, N, G, three_d, D, z, bias, init, softplus
    (1, 1, 1, 1, 1, False, False, False, False, False, False),
    (2, 3, 2, 4, 1, True, True, False, True, False, True),
    (3, 8, 63, 16, 4, False, True, True, True, True, True),
    (1, 6, 64, 5, 3, False, False, True, False, True, False),
    (2, 4, 65, 7, 2, False, True, True, False, False, True),
    (2, 16, 129, 16, 1, True, True, True, True, True, True),
    (1, 12, 300, 8, 4, False, True, False, True, True, True),
    (2, 5, 131, 2, 5, False, False, False, False, True, False),
]


@pytest.mark.parametrize("case", CASES)
def test_against_reference(rng, case):
    batch, dim, L, N, G, three_d, D, z, bias, init, softplus = case
    inp = make(rng, batch, dim, L, N, G, three_d=three_d, D=D, z=z, bias=bias, init=init)
    dout = r32(rng.standard_normal((batch, dim, L)))
    dlast = r32(rng.standard_normal((batch, dim, N))) if init else None
    got, ref = run(inp, softplus, dout, dlast)
    for k in got._fields:
        g, r = getattr(got, k), ref[k]
        if k == "dinitial_state" and not init:
            assert g is None
            continue
        if r is None:
            assert g is None, f"{k}: expected None for an input that was not given"
            continue
        assert g.dtype == np.float32 and g.shape == r.shape, k
        assert_close(g, r, rtol(L), k)


def test_softplus_threshold(rng):
    """delta + bias straddles 20: softplus is the identity (derivative 1) above it."""
    inp = make(rng, 2, 4, 40, 4, 2, delta_scale=3.0, delta_shift=19.0)
    dout = r32(rng.standard_normal((2, 4, 40)))
    x = inp["delta"] + inp["delta_bias"][None, :, None]
    assert (x > 20).any() and (x <= 20).any()
    got, ref = run(inp, True, dout, None)
    for k in ("du", "ddelta", "dA", "ddelta_bias", "dB"):
        assert_close(getattr(got, k), ref[k], rtol(40), k)


def test_long_sequence_chunking(rng):
    """L > 256 * 64 uses longer chunks (at most 256 checkpoints per channel)."""
    L = 16411
    inp = make(rng, 1, 2, L, 2, 1, z=False, delta_scale=0.3, delta_shift=-2.0)
    dout = r32(rng.standard_normal((1, 2, L)))
    got, ref = run(inp, True, dout, None)
    for k in ("du", "ddelta", "dA", "dB", "dC", "dD", "dinitial_state"):
        assert_close(getattr(got, k), ref[k], rtol(L), k)


def test_thread_counts_agree(rng):
    inp = make(rng, 2, 8, 100, 4, 2)
    dout = r32(rng.standard_normal((2, 8, 100)))
    old = samba_ext.get_num_threads()
    try:
        samba_ext.set_num_threads(1)
        one = grad.selective_scan_bwd(**inp, delta_softplus=True, dout=dout)
        samba_ext.set_num_threads(2)
        two = grad.selective_scan_bwd(**inp, delta_softplus=True, dout=dout)
    finally:
        samba_ext.set_num_threads(old)
    for k in one._fields:
        # the same sums in a different order: float32 reassociation only
        assert_close(getattr(two, k), getattr(one, k), 1e-6, k)


def test_nan_propagates(rng):
    inp = make(rng, 1, 2, 10, 3, 1)
    dout = rng.standard_normal((1, 2, 10))
    dout[0, 1, 7] = np.nan
    got = grad.selective_scan_bwd(**inp, delta_softplus=True, dout=dout)
    assert np.isnan(got.du[0, 1, :8]).all() and np.isfinite(got.du[0, 0]).all()
    assert np.isnan(got.dA[1]).all() and np.isfinite(got.dA[0]).all()


def test_empty_sequence(rng):
    inp = make(rng, 2, 4, 0, 3, 2)
    dlast = rng.standard_normal((2, 4, 3)).astype(np.float32)
    got = grad.selective_scan_bwd(**inp, dout=np.zeros((2, 4, 0)), dlast_state=dlast)
    assert got.du.shape == (2, 4, 0) and not got.dA.any()
    np.testing.assert_array_equal(got.dinitial_state, dlast)
