"""ALiBi in the attention forward-with-LSE and backward (samba_ext.grad, C kernels
attention.c / attention_tile.h and attention_bwd_tile.h).

flash-attn's definition: the score of query i and key j gets -slope |i + seqlen_k - seqlen_q
- j| added after the softcap, with slopes of shape (nheads,) or (batch, nheads). Checked
against the float64 references of ref_grad (which add the same bias to full score matrices):
finite differences on tiny shapes, then the forward (out, lse) and the gradients on shapes
that reach the scalar tile path (head dim 5), the SIMD paths (16, 64, 128), GQA, windows
shorter and longer than the sequence, two-sided windows, seqlen_q < seqlen_k, softcap, and
batch rows with their own slopes; slopes of 0 give the plain attention; bad slopes raise.

Tolerances as tests/test_grad_attention.py (rtol 1e-5 on relative norms, 1e-5 absolute on
lse): the bias is one float32 multiply-add per score, |bias| <= slope x seqlen, rounded to
~6e-8 relative, which keeps the measured errors at the level of the plain kernel (<= 1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from ref_grad import attention_bwd_ref, attention_fwd_ref, num_grad, r32
from test_grad_attention import RTOL, check_grads, make

from samba_ext import grad


def slopes(rng, B, H, per_batch):
    """ALiBi-like slopes (geometric over heads, as the paper's) with a random factor."""
    base = 2.0 ** (-8.0 * (np.arange(H) + 1) / H) * rng.uniform(0.5, 2.0)
    if not per_batch:
        return r32(base)
    return r32(base[None, :] * rng.uniform(0.5, 2.0, (B, 1)))


@pytest.mark.parametrize("left,right,softcap", [(-1, -1, 0.0), (2, 0, 0.0), (1, 2, 3.0)])
def test_finite_differences(rng, left, right, softcap):
    q, k, v, do = make(rng, 1, 4, 5, 2, 1, 3)
    al = r32(np.array([0.7, 0.2]))
    scale = 0.7
    dq, dk, dv = grad.attention_bwd(q, k, v, scale, False, (left, right), softcap, al, dout=do)
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, softcap, al)
    inp = dict(q=q.astype(np.float64), k=k.astype(np.float64), v=v.astype(np.float64))

    def f(i):
        return [attention_fwd_ref(i["q"], i["k"], i["v"], scale, left, right, softcap, al)[0]]
    for name, got in (("q", dq), ("k", dk), ("v", dv)):
        fd = num_grad(f, inp, name, [do])
        assert_close(ref["d" + name], fd, 1e-6, f"reference d{name}")
        assert_close(got, fd, RTOL, f"kernel d{name}")


CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap, per-batch slopes
    (1, 9, 9, 2, 1, 5, True, (-1, -1), 0.0, False),     # head dim 5: the scalar tile path
    (2, 7, 7, 4, 2, 16, True, (-1, -1), 0.0, True),
    (1, 70, 70, 4, 1, 64, True, (20, 0), 0.0, False),   # window < L, several key tiles
    (2, 6, 6, 2, 2, 128, True, (20, 0), 0.0, True),     # window longer than L
    (1, 5, 11, 6, 1, 64, True, (4, -1), 0.0, False),    # Lq < Lk, GQA 6
    (1, 67, 80, 4, 2, 64, False, (-1, -1), 0.0, True),  # non-causal, both directions
    (1, 7, 10, 4, 2, 16, False, (2, 3), 0.0, False),    # two-sided
    (2, 9, 9, 6, 3, 128, True, (5, 0), 30.0, True),     # softcap, then the bias
    (1, 6, 4, 2, 2, 16, False, (0, 0), 0.0, False),     # some queries see no key
]


@pytest.mark.parametrize("case", CASES)
def test_against_reference(rng, case):
    B, Lq, Lk, H, Hkv, hd, causal, ws, cap, per_batch = case
    q, k, v, do = make(rng, B, Lq, Lk, H, Hkv, hd)
    al = slopes(rng, B, H, per_batch)
    scale = 1.0 / np.sqrt(hd)
    left, right = ws[0], 0 if causal else ws[1]
    out, lse = grad.attention_fwd(q, k, v, None, causal, ws, cap, alibi_slopes=al)
    rout, rlse = attention_fwd_ref(q, k, v, scale, left, right, cap, al)
    assert_close(out, rout, RTOL, "out")
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rlse))
    fin = np.isfinite(rlse)
    assert np.all(np.isfinite(lse[fin]))
    assert np.max(np.abs(lse[fin] - rlse[fin]), initial=0.0) <= 1e-5
    # the bias matters wherever a query sees two keys or more: the plain attention is far
    # from the reference there
    plain, _ = grad.attention_fwd(q, k, v, None, causal, ws, cap)
    if (left, right) != (0, 0):
        assert np.linalg.norm(plain - rout) > 1e-3 * np.linalg.norm(rout)
    dq, dk, dv = grad.attention_bwd(q, k, v, None, causal, ws, cap, al, dout=do, out=out,
                                    lse=lse)
    check_grads((dq, dk, dv), attention_bwd_ref(q, k, v, do, scale, left, right, cap, al))
    # without out / lse the backward recomputes them with the same bias
    again = grad.attention_bwd(q, k, v, None, causal, ws, cap, al, dout=do)
    for a, b in zip((dq, dk, dv), again):
        np.testing.assert_array_equal(a, b)


def test_zero_slopes_are_plain_attention(rng):
    q, k, v, do = make(rng, 2, 70, 70, 4, 2, 64)
    zero = np.zeros(4, np.float32)
    out0, lse0 = grad.attention_fwd(q, k, v, None, True, (30, 0))
    out1, lse1 = grad.attention_fwd(q, k, v, None, True, (30, 0), alibi_slopes=zero)
    np.testing.assert_array_equal(out0, out1)
    np.testing.assert_array_equal(lse0, lse1)
    g0 = grad.attention_bwd(q, k, v, None, True, (30, 0), dout=do)
    g1 = grad.attention_bwd(q, k, v, None, True, (30, 0), alibi_slopes=zero, dout=do)
    for a, b in zip(g0, g1):   # another row routine (scalar with the bias): same sums
        assert_close(b, a, RTOL, "gradients with zero slopes")


def test_per_head_equals_broadcast(rng):
    q, k, v, do = make(rng, 3, 9, 12, 4, 2, 16)
    al = slopes(rng, 3, 4, False)
    a = grad.attention_fwd(q, k, v, None, True, alibi_slopes=al)
    b = grad.attention_fwd(q, k, v, None, True, alibi_slopes=np.tile(al, (3, 1)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad,err,match", [
    (np.ones(3, np.float32), ValueError, r"alibi_slopes: expected shape \(4,\)"),
    (np.ones((2, 4), np.float32), ValueError, r"alibi_slopes: expected shape \(1, 4\)"),
    (np.ones((1, 1, 4), np.float32), ValueError, "alibi_slopes: expected a 1-D or 2-D"),
    (np.array([1.0, np.nan, 1.0, 1.0], np.float32), ValueError, "alibi_slopes: every slope"),
    (np.array([1, 2, 3, 4]), TypeError, "alibi_slopes"),
])
def test_bad_slopes_raise(rng, bad, err, match):
    q, k, v, do = make(rng, 1, 3, 3, 4, 2, 8)
    with pytest.raises(err, match=match):
        grad.attention_fwd(q, k, v, None, True, alibi_slopes=bad)
    with pytest.raises(err, match=match):
        grad.attention_bwd(q, k, v, None, True, alibi_slopes=bad, dout=do)
