"""Gradients of the causal conv1d (samba_ext.grad.causal_conv1d_bwd, C kernel conv_bwd.c).

Finite differences of the float64 forward (ref_small.causal_conv1d) on tiny shapes, against
both the C gradients and the float64 analytic reference (ref_grad.py); then the C
gradients against the analytic reference on many shapes: widths 2..4, lengths shorter
than, equal to and longer than the width (the initial state feeds the first W-1 outputs
and the final state can reach back into it), batch > 1, bias / activation / initial and
final states on and off.

Tolerance (relative norm): inputs are float32-rounded before the references see them.
dx and dinitial_states are sums of at most W float32 products, dweight and dbias sums over
batch x seqlen products (relative-norm error ~sqrt(batch L) x 6e-8); measured <= 5e-7.
rtol 1e-5 is >= 20x above that and far below any indexing or derivative error (>= 1e-2).
NaN/Inf never pass.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from ref_grad import causal_conv1d_bwd_ref, num_grad, r32
from ref_small import causal_conv1d
from samba_ext import grad

RTOL = 1e-5


def make(rng, batch, dim, L, W, bias=True, init=True):
    return dict(x=r32(rng.standard_normal((batch, dim, L))),
                weight=r32(rng.standard_normal((dim, W))),
                bias=r32(rng.standard_normal(dim)) if bias else None,
                initial_states=r32(rng.standard_normal((batch, dim, W - 1))) if init else None)


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("L", [1, 5])
def test_finite_differences(rng, W, activation, L):
    inp = make(rng, 2, 3, L, W)
    dy = r32(rng.standard_normal((2, 3, L)))
    dfin = r32(rng.standard_normal((2, 3, W - 1)))
    got = grad.causal_conv1d_bwd(**inp, activation=activation, dy=dy, dfinal_states=dfin)
    ref = causal_conv1d_bwd_ref(**inp, activation=activation, dy=dy, dfinal_states=dfin)

    def f(i):
        return list(causal_conv1d(i["x"], i["weight"], i["bias"], activation,
                                  i["initial_states"]))
    work = {k: v.copy() for k, v in inp.items()}
    for k in inp:
        fd = num_grad(f, work, k, [dy, dfin])
        assert_close(ref["d" + k], fd, 1e-6, f"reference d{k}")
        assert_close(getattr(got, "d" + k), fd, RTOL, f"kernel d{k}")


@pytest.mark.parametrize("batch,dim,L,W,bias,init,act,dfin", [
    (1, 1, 1, 4, False, False, None, False),
    (2, 5, 2, 4, True, True, "silu", True),
    (3, 7, 3, 3, True, False, "swish", True),
    (2, 16, 64, 4, True, True, "silu", False),
    (1, 33, 257, 2, False, True, None, True),
    (4, 9, 1000, 3, True, True, "silu", True),
])
def test_against_reference(rng, batch, dim, L, W, bias, init, act, dfin):
    inp = make(rng, batch, dim, L, W, bias, init)
    dy = r32(rng.standard_normal((batch, dim, L)))
    df = r32(rng.standard_normal((batch, dim, W - 1))) if dfin else None
    got = grad.causal_conv1d_bwd(**inp, activation=act, dy=dy, dfinal_states=df)
    ref = causal_conv1d_bwd_ref(**inp, activation=act, dy=dy, dfinal_states=df)
    assert_close(got.dx, ref["dx"], RTOL, "dx")
    assert_close(got.dweight, ref["dweight"], RTOL, "dweight")
    if bias:
        assert_close(got.dbias, ref["dbias"], RTOL, "dbias")
    else:
        assert got.dbias is None
    if init:
        assert_close(got.dinitial_states, ref["dinitial_states"], RTOL, "dinitial_states")
    else:
        assert got.dinitial_states is None


def test_nan_propagates(rng):
    inp = make(rng, 1, 2, 8, 4)
    dy = rng.standard_normal((1, 2, 8))
    dy[0, 0, 5] = np.nan
    got = grad.causal_conv1d_bwd(**inp, activation="silu", dy=dy)
    assert np.isnan(got.dx[0, 0, 2:6]).all() and np.isfinite(got.dx[0, 1]).all()
    assert np.isnan(got.dweight[0]).all() and np.isnan(got.dbias[0])
