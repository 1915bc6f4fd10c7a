"""Attention forward-with-LSE and backward (samba_ext.grad, C kernel attention_bwd.c).

Finite differences of the float64 forward (ref_grad.attention_fwd_ref, full score
matrices) on tiny shapes against the C gradients and the analytic reference; then the C
forward (out, lse) and gradients against the references on many shapes: head dims
16/64/96/128/256 (short sequences), GQA ratios 1/2/4/6, windows shorter and longer than the
sequence, two-sided windows, causal and non-causal, seqlen_q < seqlen_k, softcap, and
queries that see no key. Also: swa_attention_bwd equals attention_bwd with
window_size=(window-1, 0), and attention_fwd agrees with samba_ext.swa_attention.

Tolerance (relative norm; inputs float32-rounded first): scores are float32 dot products
over headdim (error ~sqrt(hd) x 6e-8 relative), probabilities go through expf/tanhf (~1e-7)
and each gradient row sums over up to seqlen terms; measured <= 5e-7 on these shapes.
rtol 1e-5 leaves >= 20x margin and is far below a masking or derivative error (>= 1e-2).
lse is compared in absolute terms (it is a log): 1e-5. NaN/Inf never pass; -inf lse is
only accepted where the reference has it (a query with no visible key).
"""
from __future__ import annotations

import numpy as np
import pytest

import samba_ext
from conftest import assert_close
from ref_grad import attention_bwd_ref, attention_fwd_ref, num_grad, r32
from samba_ext import grad

RTOL = 1e-5


def make(rng, B, Lq, Lk, H, Hkv, hd):
    q = r32(rng.standard_normal((B, Lq, H, hd)))
    k = r32(rng.standard_normal((B, Lk, Hkv, hd)))
    v = r32(rng.standard_normal((B, Lk, Hkv, hd)))
    do = r32(rng.standard_normal((B, Lq, H, hd)))
    return q, k, v, do


def windows(causal, window_size):
    left, right = window_size
    return left, 0 if causal else right


@pytest.mark.parametrize("causal,window_size,softcap", [
    (True, (-1, -1), 0.0), (False, (-1, -1), 0.0), (True, (2, -1), 0.0),
    (False, (1, 2), 3.0), (True, (-1, -1), 1.5)])
def test_finite_differences(rng, causal, window_size, softcap):
    q, k, v, do = make(rng, 1, 4, 5, 2, 1, 3)
    scale = 0.7
    dq, dk, dv = grad.attention_bwd(q, k, v, scale, causal, window_size, softcap, dout=do)
    left, right = windows(causal, window_size)
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, softcap)
    inp = dict(q=q.copy(), k=k.copy(), v=v.copy())

    def f(i):
        return [attention_fwd_ref(i["q"], i["k"], i["v"], scale, left, right, softcap)[0]]
    for name, got in (("q", dq), ("k", dk), ("v", dv)):
        fd = num_grad(f, inp, name, [do])
        assert_close(ref["d" + name], fd, 1e-6, f"reference d{name}")
        assert_close(got, fd, RTOL, f"kernel d{name}")


CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap
    (1, 1, 1, 1, 1, 16, True, (-1, -1), 0.0),
    (2, 7, 7, 4, 2, 64, True, (-1, -1), 0.0),
    (1, 9, 9, 4, 1, 96, True, (3, 0), 0.0),         # window 4 < L
    (2, 6, 6, 2, 2, 128, True, (20, 0), 0.0),       # window longer than L
    (1, 5, 11, 6, 1, 256, True, (4, -1), 0.0),      # Lq < Lk, GQA 6
    (2, 8, 8, 4, 4, 64, False, (-1, -1), 0.0),
    (1, 7, 10, 4, 2, 96, False, (2, 3), 0.0),       # two-sided
    (2, 9, 9, 6, 3, 128, True, (5, 0), 30.0),       # softcap
    (1, 6, 4, 2, 1, 64, False, (-1, -1), 2.0),      # Lq > Lk, non-causal
    (1, 6, 4, 2, 2, 16, False, (0, 0), 0.0),        # some queries see no key
    (1, 65, 65, 2, 1, 64, True, (16, 0), 0.0),
]


@pytest.mark.parametrize("case", CASES)
def test_against_reference(rng, case):
    B, Lq, Lk, H, Hkv, hd, causal, ws, cap = case
    q, k, v, do = make(rng, B, Lq, Lk, H, Hkv, hd)
    scale = 1.0 / np.sqrt(hd)
    left, right = windows(causal, ws)
    out, lse = grad.attention_fwd(q, k, v, None, causal, ws, cap)
    rout, rlse = attention_fwd_ref(q, k, v, scale, left, right, cap)
    assert out.dtype == np.float32 and lse.shape == (B, H, Lq)
    assert_close(out, rout, RTOL, "out")
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rlse))
    fin = np.isfinite(rlse)
    assert np.all(np.isfinite(lse[fin]))
    assert np.max(np.abs(lse[fin] - rlse[fin]), initial=0.0) <= 1e-5
    dq, dk, dv = grad.attention_bwd(q, k, v, None, causal, ws, cap, dout=do, out=out, lse=lse)
    check_grads((dq, dk, dv), attention_bwd_ref(q, k, v, do, scale, left, right, cap))


def check_grads(got: tuple, ref: dict) -> None:
    """(dq, dk, dv) against the reference's, RTOL; near-zero reference gradients absolutely."""
    for name, g in zip(("dq", "dk", "dv"), got):
        r = ref[name]
        if np.linalg.norm(r) < 1e-6 * np.sqrt(r.size):
            # a query that sees one key has P = 1 and dS = dP - Delta = 0 exactly, so its dq
            # (and those keys' dk) is 0 in exact arithmetic and float32 rounding noise
            # (~1e-7 per element for unit-normal inputs) here: bound it absolutely
            assert np.all(np.isfinite(g)) and np.max(np.abs(g)) <= 1e-5, name
        else:
            assert_close(g, r, RTOL, name)


@pytest.mark.parametrize("window", [None, 1, 3, 50])
def test_swa_attention_bwd(rng, window):
    q, k, v, do = make(rng, 2, 6, 9, 4, 2, 32)
    got = grad.swa_attention_bwd(q, k, v, window, dout=do)
    ws = (-1 if window is None else window - 1, 0)
    want = grad.attention_bwd(q, k, v, None, True, ws, dout=do)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    out, _ = grad.attention_fwd(q, k, v, None, True, ws)
    assert_close(out, samba_ext.swa_attention(q, k, v, window), RTOL, "out vs swa_attention")


def test_recomputes_out_and_lse(rng):
    q, k, v, do = make(rng, 1, 5, 5, 2, 1, 16)
    out, lse = grad.attention_fwd(q, k, v, None, True)
    a = grad.attention_bwd(q, k, v, None, True, dout=do, out=out, lse=lse)
    b = grad.attention_bwd(q, k, v, None, True, dout=do)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_nan_propagates(rng):
    q, k, v, do = make(rng, 1, 4, 4, 1, 1, 8)
    do[0, 2, 0, 3] = np.nan
    dq, dk, dv = grad.attention_bwd(q, k, v, None, True, dout=do)
    assert np.isnan(dq[0, 2]).all() and np.isfinite(dq[0, 1]).all()
    # query 2 (causal) reaches keys 0..2: their dk rows through dS, one dv column directly
    assert np.isnan(dk[0, :3]).all() and np.isfinite(dk[0, 3]).all()
    assert np.isnan(dv[0, :3, 0, 3]).all() and np.isfinite(dv[0, 3]).all()
