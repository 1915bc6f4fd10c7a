"""Hypothesis property tests for every public CPU kernel against the float64 references
(tests/ref_scan.py, ref_small.py, ref_attention.py, written by the kernel owners).

Each example draws random shapes (including batch 0 and seqlen 0), a dtype (float16 /
float32 / float64) and, per argument, a memory layout holding the same values:
C-contiguous, Fortran order, a strided view (every other element of a larger buffer) or a
negative-stride view. Properties:

* the result equals the reference (relative norm, conftest.assert_close; NaN never passes);
* the result is a new C-contiguous float32 array of the documented shape;
* inputs are not modified (in-place state arguments excepted, which must equal the
  reference's new state);
* empty inputs give empty outputs and final states equal to the initial states.

Tolerances: the references get the same float32-rounded inputs the kernels see, so only the
kernels' float32 arithmetic is measured. The owners' tests justify RTOL 1e-6 (elementwise,
conv) / 1e-5 (attention) / 2e-6 (1 + sqrt(L/256)) (scan) for arrays of hundreds of elements;
here arrays can have a handful of elements, where the norm no longer averages rounding
errors out, so each bound is widened 5x (still orders of magnitude below any indexing,
masking or formula error, which gives errors of order 1).

Example counts are bounded (``SAMBA_PROPERTY_EXAMPLES``, default 40 per property) so the file
runs in well under 60 s on 2 cores.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ref_attention
import ref_scan
import ref_small
import samba_ext
from conftest import assert_close

EXAMPLES = int(os.environ.get("SAMBA_PROPERTY_EXAMPLES", "40"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RTOL_ELEM = 5e-6
RTOL_ATTN = 5e-5


def rtol_scan(L: int) -> float:
    return 5 * 2e-6 * (1.0 + np.sqrt(max(L, 1) / 256.0))


DTYPES = st.sampled_from([np.float16, np.float32, np.float64])
LAYOUTS = st.sampled_from(["c", "f", "strided", "negative"])


def layout(a: np.ndarray, how: str, axis_seed: int) -> np.ndarray:
    """Same values as ``a`` in another memory layout."""
    if a.ndim == 0 or a.size == 0 or how == "c":
        return a
    ax = axis_seed % a.ndim
    if how == "f":
        return np.asfortranarray(a)
    if how == "strided":
        shape = list(a.shape)
        shape[ax] *= 2
        big = np.full(shape, np.nan, dtype=a.dtype)   # poison: reading a gap gives NaN
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(None, None, 2)
        big[tuple(idx)] = a
        return big[tuple(idx)]
    rev = [slice(None)] * a.ndim
    rev[ax] = slice(None, None, -1)
    flipped = np.ascontiguousarray(a[tuple(rev)])
    return flipped[tuple(rev)]                         # negative stride along ax


class Arrays:
    """Draws inputs: values from a seeded generator, layout + dtype from hypothesis."""

    def __init__(self, data, dtype):
        self.data = data
        self.dtype = dtype
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        self.originals: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, shape, scale: float = 1.0, shift: float = 0.0, dtype=None,
                 in_place: bool = False, positive: bool = False) -> np.ndarray:
        dt = np.float32 if in_place else (dtype or self.dtype)
        a = self.rng.standard_normal(shape) * scale + shift
        if positive:
            a = np.log1p(np.exp(a))   # softplus: e.g. a time step dt > 0
        a = a.astype(dt)
        if in_place:
            return a
        how = self.data.draw(LAYOUTS, label="layout")
        v = layout(a, how, self.data.draw(st.integers(0, 7), label="axis"))
        self.originals.append((v, a.copy()))
        return v

    def f32(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """What the kernel computes from: the float32 rounding of an input."""
        return None if a is None else np.asarray(a, dtype=np.float32)

    def assert_inputs_unchanged(self) -> None:
        for v, orig in self.originals:
            np.testing.assert_array_equal(v, orig, err_msg="an input array was modified")


def check_out(y: np.ndarray, shape: tuple) -> None:
    assert isinstance(y, np.ndarray) and y.dtype == np.float32, (type(y), getattr(y, "dtype", None))
    assert y.shape == tuple(shape), (y.shape, shape)
    assert y.flags.c_contiguous


def maybe(data, label: str) -> bool:
    return data.draw(st.booleans(), label=label)


# ----------------------------------------------------------------------------------- scan ---
@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), ngroups=st.integers(1, 3),
       dpg=st.integers(1, 8), dstate=st.integers(1, 17), L=st.integers(0, 40))
def test_selective_scan(data, dtype, batch, ngroups, dpg, dstate, L):
    dim = ngroups * dpg
    arr = Arrays(data, dtype)
    four_d = ngroups > 1 or maybe(data, "4d")
    bc = (batch, ngroups, dstate, L) if four_d else (batch, dstate, L)
    softplus = maybe(data, "softplus")   # without it, delta is already a (positive) time step
    inp = dict(u=arr((batch, dim, L)), delta=arr((batch, dim, L), 0.5, -1.0, positive=not softplus),
               A=-np.exp(arr((dim, dstate), 0.5)), B=arr(bc), C=arr(bc),
               D=arr((dim,)) if maybe(data, "D") else None,
               z=arr((batch, dim, L)) if maybe(data, "z") else None,
               delta_bias=arr((dim,), 0.5, positive=not softplus) if maybe(data, "bias") else None,
               initial_state=arr((batch, dim, dstate)) if maybe(data, "h0") else None)
    y, last = samba_ext.selective_scan(**inp, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = ref_scan.selective_scan_ref(
        **{k: arr.f32(v) for k, v in inp.items()}, delta_softplus=softplus,
        return_last_state=True)
    check_out(y, (batch, dim, L))
    check_out(last, (batch, dim, dstate))
    assert_close(y, y_ref, rtol_scan(L), "y")
    assert_close(last, last_ref, rtol_scan(L), "last_state")
    if L == 0:   # defined behaviour: the state passes through unchanged
        h0 = inp["initial_state"]
        np.testing.assert_array_equal(last, np.zeros_like(last) if h0 is None else arr.f32(h0))
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), ngroups=st.integers(1, 3),
       dpg=st.integers(1, 8), dstate=st.integers(1, 17))
def test_selective_state_update(data, dtype, batch, ngroups, dpg, dstate):
    dim = ngroups * dpg
    arr = Arrays(data, dtype)
    bc = (batch, ngroups, dstate) if ngroups > 1 or maybe(data, "3d") else (batch, dstate)
    state = arr((batch, dim, dstate), in_place=True)
    state0 = state.copy()
    softplus = maybe(data, "softplus")
    inp = dict(x=arr((batch, dim)), dt=arr((batch, dim), 0.5, -1.0, positive=not softplus),
               A=-np.exp(arr((dim, dstate), 0.5)), B=arr(bc), C=arr(bc),
               D=arr((dim,)) if maybe(data, "D") else None,
               z=arr((batch, dim)) if maybe(data, "z") else None,
               dt_bias=arr((dim,), 0.5, positive=not softplus) if maybe(data, "bias") else None)
    y = samba_ext.selective_state_update(state, **inp, dt_softplus=softplus)
    y_ref, state_ref = ref_scan.selective_state_update_ref(
        state0, **{k: arr.f32(v) for k, v in inp.items()}, dt_softplus=softplus)
    check_out(y, (batch, dim))
    assert_close(y, y_ref, rtol_scan(1), "y")
    assert_close(state, state_ref, rtol_scan(1), "state (in place)")
    arr.assert_inputs_unchanged()


# --------------------------------------------------------------------------------- conv1d ---
@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), dim=st.integers(0, 20),
       L=st.integers(0, 40), width=st.integers(2, 4))
def test_causal_conv1d(data, dtype, batch, dim, L, width):
    arr = Arrays(data, dtype)
    x, w = arr((batch, dim, L)), arr((dim, width))
    bias = arr((dim,)) if maybe(data, "bias") else None
    init = arr((batch, dim, width - 1)) if maybe(data, "init") else None
    act = data.draw(st.sampled_from([None, "silu", "swish"]), label="activation")
    y, fin = samba_ext.causal_conv1d(x, w, bias, act, init, return_final_states=True)
    y_ref, fin_ref = ref_small.causal_conv1d(arr.f32(x), arr.f32(w), arr.f32(bias), act,
                                             arr.f32(init))
    check_out(y, (batch, dim, L))
    check_out(fin, (batch, dim, width - 1))
    assert_close(y, y_ref, RTOL_ELEM, "y")
    np.testing.assert_array_equal(fin, fin_ref.astype(np.float32))  # a copy of inputs: exact
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), dim=st.integers(0, 20),
       width=st.integers(2, 4))
def test_causal_conv1d_update(data, dtype, batch, dim, width):
    arr = Arrays(data, dtype)
    state = arr((batch, dim, width - 1), in_place=True)
    state0 = state.copy()
    x, w = arr((batch, dim)), arr((dim, width))
    bias = arr((dim,)) if maybe(data, "bias") else None
    act = data.draw(st.sampled_from([None, "silu"]), label="activation")
    y = samba_ext.causal_conv1d_update(x, state, w, bias, act)
    y_ref, fin_ref = ref_small.causal_conv1d(arr.f32(x)[:, :, None], arr.f32(w), arr.f32(bias),
                                             act, state0)
    check_out(y, (batch, dim))
    assert_close(y, y_ref[:, :, 0], RTOL_ELEM, "y")
    np.testing.assert_array_equal(state, fin_ref.astype(np.float32))
    arr.assert_inputs_unchanged()


# ------------------------------------------------------------------------------ attention ---
@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 2), Lq=st.integers(0, 24),
       past=st.integers(0, 12), hkv=st.integers(1, 3), group=st.integers(1, 3),
       hd=st.integers(1, 40), window=st.one_of(st.none(), st.integers(1, 30)),
       scale=st.one_of(st.none(), st.floats(0.05, 2.0)))
def test_swa_attention(data, dtype, batch, Lq, past, hkv, group, hd, window, scale):
    arr = Arrays(data, dtype)
    H, Lk = hkv * group, Lq + past
    q, k, v = arr((batch, Lq, H, hd)), arr((batch, Lk, hkv, hd)), arr((batch, Lk, hkv, hd))
    out = samba_ext.swa_attention(q, k, v, window=window, softmax_scale=scale)
    check_out(out, (batch, Lq, H, hd))
    if out.size:   # (the reference cannot reduce over zero queries; empty is checked above)
        ref = ref_attention.ref_swa_attention(arr.f32(q), arr.f32(k), arr.f32(v), window, scale)
        assert_close(out, ref, RTOL_ATTN)
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), hkv=st.integers(1, 3),
       group=st.integers(1, 3), hd=st.integers(1, 40), cap=st.integers(1, 40))
def test_swa_decode(data, dtype, batch, hkv, group, hd, cap):
    arr = Arrays(data, dtype)
    H = hkv * group
    q, kc, vc = arr((batch, H, hd)), arr((batch, cap, hkv, hd)), arr((batch, cap, hkv, hd))
    pos = np.array([data.draw(st.integers(0, 10**6), label="pos") for _ in range(batch)],
                   dtype=np.int64)
    n_valid = np.array([data.draw(st.integers(1, cap), label="n_valid") for _ in range(batch)],
                       dtype=np.int64)
    out = samba_ext.swa_decode(q, kc, vc, pos, n_valid)
    ref = ref_attention.ref_swa_decode(arr.f32(q), arr.f32(kc), arr.f32(vc), pos, n_valid)
    check_out(out, (batch, H, hd))
    assert_close(out, ref, RTOL_ATTN)
    arr.assert_inputs_unchanged()


# ---------------------------------------------------------------------- small elementwise ---
@PROPS
@given(data=st.data(), dtype=DTYPES,
       lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), n=st.integers(1, 70),
       eps=st.floats(1e-6, 1e-2), residual=st.booleans())
def test_rms_norm(data, dtype, lead, n, eps, residual):
    arr = Arrays(data, dtype)
    shape = tuple(lead) + (n,)
    x, w = arr(shape), arr((n,))
    r = arr(shape) if residual else None
    res = samba_ext.rms_norm(x, w, eps, residual=r)
    y_ref, s_ref = ref_small.rms_norm(arr.f32(x), arr.f32(w), eps, arr.f32(r))
    y = res[0] if residual else res
    check_out(y, shape)
    assert_close(y, y_ref, RTOL_ELEM, "y")
    if residual:
        check_out(res[1], shape)
        assert_close(res[1], s_ref, 1e-6, "x + residual")  # one float32 add per element
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 3), L=st.integers(0, 20),
       H=st.integers(0, 3), half=st.integers(0, 24), base=st.sampled_from([10000.0, 500.0, 1e6]),
       pos_kind=st.sampled_from(["int", "1d", "2d"]))
def test_apply_rotary(data, dtype, batch, L, H, half, base, pos_kind):
    arr = Arrays(data, dtype)
    hd = 2 * half
    x = arr((batch, L, H, hd))
    if pos_kind == "int":
        off = data.draw(st.integers(0, 4096), label="offset")
        positions, pos2d = off, np.broadcast_to(off + np.arange(L), (batch, L))
    elif pos_kind == "1d":
        positions = np.array(data.draw(st.lists(st.integers(0, 4096), min_size=L, max_size=L),
                                       label="pos"), dtype=np.int64)
        pos2d = np.broadcast_to(positions, (batch, L))
    else:
        positions = arr.rng.integers(0, 4096, size=(batch, L))
        pos2d = positions
    y = samba_ext.apply_rotary(x, positions, base)
    check_out(y, (batch, L, H, hd))
    assert_close(y, ref_small.rotary(arr.f32(x), pos2d, base), RTOL_ELEM)
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES,
       shape=st.lists(st.integers(0, 9), min_size=0, max_size=4))
def test_swiglu(data, dtype, shape):
    arr = Arrays(data, dtype)
    g, u = arr(tuple(shape), 3.0), arr(tuple(shape))
    y = samba_ext.swiglu(g, u)
    check_out(y, tuple(shape))
    assert_close(y, ref_small.swiglu(arr.f32(g), arr.f32(u)), RTOL_ELEM)
    arr.assert_inputs_unchanged()


@PROPS
@given(data=st.data(), dtype=DTYPES, shape=st.lists(st.integers(1, 6), min_size=1, max_size=3))
def test_out_argument_equals_return(data, dtype, shape):
    """out= receives exactly the values the call returns."""
    arr = Arrays(data, dtype)
    g, u = arr(tuple(shape)), arr(tuple(shape))
    out = np.full(tuple(shape), np.nan, np.float32)
    r = samba_ext.swiglu(g, u, out=out)
    assert r is out
    np.testing.assert_array_equal(out, samba_ext.swiglu(g, u))
