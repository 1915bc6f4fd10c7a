"""ALiBi in the CUDA attention forward-with-lse and backward (samba_ext.grad on device arrays):
the general tensor-core forward (attention_mma.cu, GEN), the mma.sync backward
(attention_bwd_mma.cu; the Hopper wgmma backward does not take ALiBi, so these calls run
there) and the float32 CUDA-core kernels (attention_fwd_lse.cu, attention_bwd.cu).

flash-attn's definition: the score of query i and key j gets -slope |i + seqlen_k - seqlen_q
- j| added after the softcap; slopes (nheads,) or (batch, nheads), as host or device arrays.
Checked against the float64 references of tests/ref_grad.py computed from the same rounded
inputs, over the shapes of tests/test_cuda_grad_attention.py that matter for a position-
dependent bias: GQA, windows shorter and longer than the sequence, two-sided windows,
seqlen_q < seqlen_k and > seqlen_k, softcap, head dims 33 (CUDA cores) / 64 / 96 / 128 / 256,
batch rows with their own slopes.

Tolerances are those of tests/test_cuda_grad_attention.py (its docstring). The bias adds one
float32 product slope * log2(e) * |i - j| per score, rounded to ~1.2e-7 relative; with the
slopes below (at most 1) and sequences up to 1000 it moves a probability by at most ~1e-5
relative, inside the float32 bound, and far inside the bfloat16 / float16 ones. Zero slopes
with deterministic=True must give bit-identical results to no ALiBi (the same kernels, a bias
of exactly 0). Outputs are poisoned before the kernels run (an unwritten element fails).

Run: python3 -m pytest -q tests/test_cuda_grad_attention_alibi.py; skipped without a GPU / CUDA
build.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from cuda_util import cuda, dev, host, rdev
from ref_grad import attention_bwd_ref, attention_fwd_ref
from test_cuda_grad_attention import DTYPES, HALF, check_forward, check_grads, \
    reduction_lengths, windows
from test_grad_attention_alibi import slopes

from samba_ext import grad

CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap, per-batch slopes
    pytest.param(1, 37, 37, 4, 4, 64, True, (-1, -1), 0.0, False, id="odd-L-causal"),
    pytest.param(2, 150, 150, 8, 2, 64, True, (63, 0), 0.0, True, id="b2-gqa4-L>W"),
    pytest.param(1, 100, 100, 8, 1, 128, True, (199, 0), 0.0, False, id="gqa8-W>L-hd128"),
    pytest.param(1, 129, 129, 4, 1, 96, False, (-1, -1), 0.0, True, id="noncausal-hd96"),
    pytest.param(1, 90, 90, 2, 1, 256, True, (40, 0), 0.0, False, id="hd256"),
    pytest.param(1, 77, 200, 4, 2, 64, True, (90, 0), 0.0, False, id="Lq<Lk"),
    pytest.param(1, 120, 80, 4, 2, 64, False, (-1, -1), 0.0, True, id="Lq>Lk-noncausal"),
    pytest.param(1, 100, 130, 4, 2, 64, False, (20, 35), 0.0, False, id="two-sided"),
    pytest.param(2, 131, 131, 6, 3, 128, True, (50, 0), 30.0, True, id="softcap-hd128"),
    pytest.param(1, 100, 100, 2, 1, 33, True, (-1, -1), 2.0, False, id="hd33-cuda-cores"),
    pytest.param(1, 1000, 1000, 8, 2, 64, True, (-1, -1), 0.0, False, id="L1000-causal"),
]


def alibi_case(rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap, per_batch, on_device):
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    al = slopes(rng, B, H, per_batch)
    gal = dev(al) if on_device else al
    left, right = windows(causal, ws)
    scale = 1.0 / math.sqrt(hd)
    out, lse = grad.attention_fwd(gq, gk, gv, None, causal, ws, cap, gal)
    rout, rlse = attention_fwd_ref(q, k, v, scale, left, right, cap, al)
    check_forward(out, lse, rout, rlse, dtype)
    got = grad.attention_bwd(gq, gk, gv, None, causal, ws, cap, gal, dout=gdo, out=out, lse=lse)
    assert [g.dtype for g in got] == [dtype] * 3
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, cap, al)
    check_grads(got, ref, dtype, *reduction_lengths(Lq, Lk, H // Hkv, left, right))
    # the backward that recomputes the forward itself
    again = grad.attention_bwd(gq, gk, gv, None, causal, ws, cap, gal, dout=gdo)
    check_grads(again, ref, dtype, *reduction_lengths(Lq, Lk, H // Hkv, left, right), "recomp ")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws,cap,per_batch", CASES)
def test_against_reference(poison, rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap,
                           per_batch):
    alibi_case(rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap, per_batch, on_device=True)


@cuda
@pytest.mark.parametrize("dtype", HALF)
def test_host_slopes_with_device_inputs(poison, rng, dtype):
    alibi_case(rng, dtype, 2, 90, 90, 4, 2, 64, True, (30, 0), 0.0, True, on_device=False)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_slopes_are_plain_attention(poison, rng, dtype):
    """Slopes of 0 add a bias of exactly 0: bit-identical to no ALiBi (deterministic=True, so
    both backwards take the same fixed-order kernel). The forwards run with prefill variant v2:
    otherwise, on Hopper, the call without ALiBi takes swa_attention's wgmma kernel (a different
    summation order) and the one with ALiBi the general kernel."""
    from test_cuda_attention import attn_variant

    B, L, H, Hkv, hd = 2, 150, 4, 2, 64
    gq, gk, gv, gdo = (rdev(rng.standard_normal(s), dtype)[1] for s in (
        (B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    zero = dev(np.zeros(H, np.float32))
    with attn_variant(prefill="v2"):
        o0, l0 = grad.attention_fwd(gq, gk, gv, None, True, (40, 0))
        o1, l1 = grad.attention_fwd(gq, gk, gv, None, True, (40, 0), 0.0, zero)
    np.testing.assert_array_equal(host(o0), host(o1))
    np.testing.assert_array_equal(host(l0), host(l1))
    g0 = grad.attention_bwd(gq, gk, gv, None, True, (40, 0), dout=gdo, out=o0, lse=l0,
                            deterministic=True)
    g1 = grad.attention_bwd(gq, gk, gv, None, True, (40, 0), 0.0, zero, dout=gdo, out=o0, lse=l0,
                            deterministic=True)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(host(a), host(b))


@cuda
def test_bad_slopes_raise(rng):
    q = dev(rng.standard_normal((2, 4, 2, 16)).astype(np.float32))
    k = dev(rng.standard_normal((2, 4, 1, 16)).astype(np.float32))
    for bad in (np.ones(3, np.float32), np.ones((3, 2), np.float32), np.ones((2, 2, 1))):
        for slopes_ in (bad, dev(bad)):
            with pytest.raises(ValueError, match="alibi_slopes"):
                grad.attention_fwd(q, k, k, None, True, alibi_slopes=slopes_)
            with pytest.raises(ValueError, match="alibi_slopes"):
                grad.attention_bwd(q, k, k, None, True, alibi_slopes=slopes_, dout=q)
    with pytest.raises(ValueError, match="alibi_slopes"):  # host values are checked
        grad.attention_fwd(q, k, k, None, True, alibi_slopes=np.array([1.0, np.nan]))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
