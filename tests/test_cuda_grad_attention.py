"""CUDA attention forward-with-lse and backward (samba_ext.grad on DeviceArrays): the
tensor-core kernels (bfloat16 / float16) and the exact float32 CUDA-core kernels against float64
references computed from the same rounded inputs (tests/ref_grad.py, and a chunked version of it
for real sizes), and against the CPU backward.

Tolerances (relative Frobenius norm, tol(dtype, n) below, n = the longest sum behind one
gradient element: the visible keys of a query for dq, H / Hkv times the visible queries of a key
for dk and dv):
* bfloat16 1e-2, float16 2e-3 (cuda_util.RTOL). Besides float32 accumulation, the tensor-core
  backward rounds to the input dtype: the forward's out (which enters Delta = dout . out), P
  before dV = P^T dout, dS before dK = dS^T Q and dQ = dS K, and the gradients themselves. Each is
  a relative error of at most one unit roundoff u per term with independent signs, so the
  relative norm error stays ~u whatever the length of the sums. A float64 emulation of exactly
  these roundings on the shapes below (L 200..1000, d 64..128, GQA up to 8:1, windows, softcap)
  gives 2.3e-3..2.6e-3 for bfloat16 (u = 3.9e-3) and 2.8e-4..3.3e-4 for float16 (u = 4.9e-4):
  margins of 3.8x and 6x.
  The wgmma kernel (attention_bwd_wgmma.cu, the default on sm_90; SAMBA_EXT_ATTN_BWD_WGMMA=0
  keeps the mma.sync one) rounds the same quantities at the same points, so the same bounds hold
  for it.
* float32: exact float32 arithmetic (no TF32); 1e-5 as on the CPU (tests/test_grad_attention.py,
  measured <= 5e-7 on short sequences).
* plus 4 * 2^-24 * sqrt(n) for every dtype: float32 rounding in a sum of n terms with random
  signs grows like sqrt(n) (at n = 131072, 8.6e-5).
Forward: out within cuda_util.RTOL (the forward rounds P to the dtype before P V, as
tests/test_cuda_attention.py explains); lse within 2e-5 absolute (float32 scores of exact products
of rounded inputs, ex2.approx with relative error 2^-22, log of a float32 sum).

Outputs are poisoned (NaN bytes) before the kernels run, so an unwritten element fails; NaN and
Inf never pass assert_close. dq, and dk / dv when the query heads of a group are split over
blocks, are summed with float32 atomics (order-dependent last bits), so GPU results are
compared with tolerances, never bit for bit, except with deterministic=True, whose repeated
calls must agree bit for bit.

Run: python3 -m pytest -q tests/test_cuda_grad_attention.py (or python3 this file); skipped
without a GPU / CUDA build.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import RTOL, cuda, dev, host, rdev, round_to
from ref_grad import attention_bwd_ref, attention_fwd_ref, attention_mask

from samba_ext import grad

DTYPES = ["float32", "float16", "bfloat16"]
HALF = ["bfloat16", "float16"]
BASE = {"float32": 1e-5, "float16": RTOL["float16"], "bfloat16": RTOL["bfloat16"]}


def tol(dtype: str, n: int) -> float:
    """Relative-norm tolerance of a gradient whose elements sum n terms (module docstring)."""
    return BASE[dtype] + 4 * 2.0 ** -24 * math.sqrt(max(n, 1))




def windows(causal: bool, window_size: tuple) -> tuple[int, int]:
    left, right = window_size
    return left, 0 if causal else right


def reduction_lengths(Lq: int, Lk: int, G: int, left: int, right: int) -> tuple[int, int]:
    """(longest sum of dq, longest sum of dk / dv)."""
    m = attention_mask(Lq, Lk, left, right)
    return int(m.sum(axis=1).max(initial=0)), G * int(m.sum(axis=0).max(initial=0))


def ref_chunked(q, k, v, do, scale, left, right, softcap=0.0, chunk=512):
    """attention_fwd_ref + attention_bwd_ref in float64, over query chunks and only the keys a
    chunk can see (the same math, O(L x window) work): dict out, lse, dq, dk, dv."""
    q, k, v, do = (np.asarray(a, dtype=np.float64) for a in (q, k, v, do))
    B, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G, off = H // Hkv, Lk - Lq
    out, dq = np.zeros_like(q), np.zeros_like(q)
    lse = np.full((B, H, Lq), -np.inf)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, :, h // G], v[b, :, h // G]
            for i0 in range(0, Lq, chunk):
                i1 = min(Lq, i0 + chunk)
                lo = 0 if left < 0 else max(0, i0 + off - left)
                hi = Lk if right < 0 else min(Lk, i1 - 1 + off + right + 1)
                if hi <= lo:
                    continue
                pos = np.arange(i0, i1)[:, None] + off
                j = np.arange(lo, hi)[None, :]
                m = np.ones((i1 - i0, hi - lo), dtype=bool)
                if left >= 0:
                    m &= j >= pos - left
                if right >= 0:
                    m &= j <= pos + right
                r = scale * q[b, i0:i1, h] @ kk[lo:hi].T
                t = np.tanh(r / softcap) if softcap > 0 else None
                s = np.where(m, softcap * t if softcap > 0 else r, -np.inf)
                seen = m.any(axis=1)
                mx = np.where(seen, s.max(axis=1), 0.0)[:, None]
                p = np.where(m, np.exp(s - mx), 0.0)
                den = p.sum(axis=1, keepdims=True)
                p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
                lse[b, h, i0:i1] = np.where(seen, mx[:, 0] + np.log(np.maximum(den[:, 0], 1e-300)),
                                            -np.inf)
                out[b, i0:i1, h] = p @ vv[lo:hi]
                go = do[b, i0:i1, h]
                dp = go @ vv[lo:hi].T
                ds = p * (dp - np.sum(p * dp, axis=1, keepdims=True))
                if softcap > 0:
                    ds = ds * (1.0 - t * t)
                dq[b, i0:i1, h] = scale * ds @ kk[lo:hi]
                dk[b, lo:hi, h // G] += scale * ds.T @ q[b, i0:i1, h]
                dv[b, lo:hi, h // G] += p.T @ go
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


def test_chunked_reference_matches_full(rng):
    # the reference used at real sizes is the plain one (no GPU needed)
    q, k, v, do = (rng.standard_normal(s) for s in
                   ((2, 37, 4, 8), (2, 45, 2, 8), (2, 45, 2, 8), (2, 37, 4, 8)))
    for left, right, cap in ((-1, 0, 0.0), (5, 3, 0.0), (-1, -1, 2.0), (0, 0, 0.0)):
        got = ref_chunked(q, k, v, do, 0.3, left, right, cap, chunk=8)
        out, lse = attention_fwd_ref(q, k, v, 0.3, left, right, cap)
        ref = attention_bwd_ref(q, k, v, do, 0.3, left, right, cap)
        np.testing.assert_allclose(got["out"], out, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.isneginf(got["lse"]), np.isneginf(lse))
        fin = np.isfinite(lse)
        np.testing.assert_allclose(got["lse"][fin], lse[fin], rtol=1e-12, atol=1e-12)
        for name in ("dq", "dk", "dv"):
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12)


def check_grads(got: tuple, ref: dict, dtype: str, n_q: int, n_kv: int, what: str = "") -> None:
    for name, g, n in zip(("dq", "dk", "dv"), got, (n_q, n_kv, n_kv)):
        g, r = host(g), ref[name]
        assert np.all(np.isfinite(g)), f"{what}{name}: non-finite values"
        if np.linalg.norm(r) < 1e-6 * np.sqrt(r.size):
            # all queries see one key (or none): dS = dP - Delta = 0 exactly, so the gradient
            # is rounding noise: bound it absolutely
            assert np.max(np.abs(g), initial=0.0) <= 1e-3, f"{what}{name}"
        else:
            assert_close(g, r, tol(dtype, n), f"{what}{name}")


def check_forward(out, lse, ref_out, ref_lse, dtype: str) -> None:
    assert_close(host(out), ref_out, RTOL[dtype], "out")
    lse = host(lse)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.all(np.isfinite(lse[fin]))
    assert np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0.0) <= 2e-5


# ------------------------------------------------------------------ small shapes ----------
CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap
    pytest.param(1, 37, 37, 4, 4, 64, True, (-1, -1), 0.0, id="odd-L-causal-mha"),
    pytest.param(2, 150, 150, 8, 2, 64, True, (63, 0), 0.0, id="b2-gqa4-L>W"),
    pytest.param(1, 100, 100, 8, 1, 128, True, (199, 0), 0.0, id="gqa8-W>L-hd128"),
    pytest.param(1, 129, 129, 4, 1, 96, False, (-1, -1), 0.0, id="noncausal-hd96"),
    pytest.param(1, 90, 90, 2, 1, 256, True, (40, 0), 0.0, id="hd256"),
    pytest.param(1, 77, 200, 4, 2, 64, True, (90, 0), 0.0, id="Lq<Lk-bottom-right"),
    pytest.param(1, 120, 80, 4, 2, 64, False, (-1, -1), 0.0, id="Lq>Lk-noncausal"),
    pytest.param(1, 100, 130, 4, 2, 64, False, (20, 35), 0.0, id="two-sided"),
    pytest.param(2, 131, 131, 6, 3, 128, True, (50, 0), 30.0, id="softcap-hd128"),
    pytest.param(1, 70, 70, 2, 1, 64, True, (-1, -1), 1.5, id="softcap-small"),
    pytest.param(1, 64, 64, 4, 4, 64, False, (0, 0), 0.0, id="window-1"),
    pytest.param(1, 70, 50, 2, 1, 64, False, (0, 0), 0.0, id="queries-without-keys"),
    pytest.param(1, 200, 200, 4, 1, 40, True, (60, 0), 0.0, id="hd40-padded"),
    pytest.param(1, 100, 100, 2, 1, 33, True, (-1, -1), 0.0, id="hd33-cuda-cores"),
    pytest.param(1, 300, 300, 16, 2, 64, True, (127, 0), 0.0, id="gqa8-two-kv-heads"),
    pytest.param(1, 1, 1, 2, 1, 64, True, (-1, -1), 0.0, id="one-token"),
    pytest.param(3, 65, 65, 4, 1, 128, True, (16, 0), 0.0, id="b3-gqa4-small-window"),
    # only the left side bounded: the backward's grid starts from the last key blocks
    # (ab_block_of in csrc/cuda/attention_bwd_impl.cuh)
    pytest.param(2, 300, 300, 16, 2, 64, False, (40, -1), 0.0, id="b2-gqa8-left-only"),
    pytest.param(2, 200, 260, 6, 3, 128, False, (30, -1), 0.0, id="b2-left-only-hd128-Lq<Lk"),
]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws,cap", CASES)
def test_against_reference(poison, rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap):
    # the default kernels: wgmma on sm_90 where it applies, else mma.sync / CUDA cores
    against_reference(rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap)


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws,cap", CASES)
def test_mma_against_reference(poison, rng, monkeypatch, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws,
                               cap):
    # the mma.sync backward (attention_bwd_mma.cu), which SAMBA_EXT_ATTN_BWD_WGMMA=0 keeps on sm_90
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "0")
    against_reference(rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap)


ORDER_CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap: a causal window, only the left side
    # bounded (heaviest-first starts from the last key blocks), two-sided, full non-causal
    pytest.param(2, 300, 300, 16, 2, 64, True, (100, 0), 0.0, id="b2-gqa8-causal-window"),
    pytest.param(2, 200, 260, 6, 3, 128, False, (30, -1), 0.0, id="b2-left-only-hd128-Lq<Lk"),
    pytest.param(3, 150, 170, 4, 2, 96, False, (20, 35), 0.0, id="b3-two-sided-hd96"),
    pytest.param(1, 130, 130, 4, 4, 64, False, (-1, -1), 0.0, id="noncausal"),
]


@cuda
@pytest.mark.parametrize("wgmma", ["1", "0"])
@pytest.mark.parametrize("order", ["keys", "heavy"])
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws,cap", ORDER_CASES)
def test_block_orders_against_reference(poison, rng, monkeypatch, wgmma, order, B, Lq, Lk, H, Hkv,
                                        hd, causal, ws, cap):
    # both block orders of the tensor-core backward grids (ab_block_of, attention_bwd_impl.cuh),
    # which the launch picks per shape (these small grids would all get keys-fastest), forced
    # with SAMBA_EXT_ATTN_BWD_ORDER; wgmma "1" is the default kernel on sm_90, "0" mma.sync
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", wgmma)
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_ORDER", order)
    against_reference(rng, "bfloat16", B, Lq, Lk, H, Hkv, hd, causal, ws, cap)


def against_reference(rng, dtype, B, Lq, Lk, H, Hkv, hd, causal, ws, cap) -> None:
    """Forward (out, lse) and backward of one case against the float64 references."""
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    scale = 1.0 / math.sqrt(hd)
    left, right = windows(causal, ws)
    out, lse = grad.attention_fwd(gq, gk, gv, None, causal, ws, cap)
    assert out.dtype == dtype and lse.dtype == "float32" and lse.shape == (B, H, Lq)
    rout, rlse = attention_fwd_ref(q, k, v, scale, left, right, cap)
    check_forward(out, lse, rout, rlse, dtype)
    got = grad.attention_bwd(gq, gk, gv, None, causal, ws, cap, dout=gdo, out=out, lse=lse)
    assert [g.dtype for g in got] == [dtype] * 3
    assert [g.shape for g in got] == [q.shape, k.shape, v.shape]
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, cap)
    check_grads(got, ref, dtype, *reduction_lengths(Lq, Lk, H // Hkv, left, right))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_cpu_backward(rng, dtype):
    # GPU == CPU: the C backward (float32) on the same rounded inputs
    B, L, H, Hkv, hd, ws = 2, 333, 8, 2, 64, (100, 0)
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    cpu = grad.attention_bwd(q, k, v, None, True, ws, dout=do)
    gpu = grad.attention_bwd(gq, gk, gv, None, True, ws, dout=gdo)
    n_q, n_kv = reduction_lengths(L, L, H // Hkv, 100, 0)
    check_grads(gpu, dict(zip(("dq", "dk", "dv"), cpu)), dtype, n_q, n_kv, "gpu vs cpu ")


@cuda
@pytest.mark.parametrize("dtype", HALF)
def test_recomputes_forward_and_swa(poison, rng, dtype):
    B, L, H, Hkv, hd, W = 1, 200, 4, 2, 64, 70
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    ref = attention_bwd_ref(q, k, v, do, 1 / 8, W - 1, 0)
    n = reduction_lengths(L, L, H // Hkv, W - 1, 0)
    check_grads(grad.attention_bwd(gq, gk, gv, None, True, (W - 1, 0), dout=gdo), ref, dtype, *n)
    check_grads(grad.swa_attention_bwd(gq, gk, gv, W, dout=gdo), ref, dtype, *n, "swa ")
    import samba_ext

    out, _ = grad.attention_fwd(gq, gk, gv, None, True, (W - 1, 0))
    assert_close(host(out), host(samba_ext.swa_attention(gq, gk, gv, W)), RTOL[dtype],
                 "attention_fwd vs swa_attention")


# flash-attn's test_flash_attn_deterministic shapes (Lq much shorter than Lk, bottom-right
# causal / windowed) and GQA groups that the default backward splits over blocks
DET_CASES = [
    pytest.param(2, 3, 799, 9, 9, 64, True, (-1, -1), id="3x799-causal"),
    pytest.param(2, 127, 512, 9, 9, 128, False, (100, 30), id="127x512-window-hd128"),
    pytest.param(1, 1, 239, 9, 9, 256, False, (-1, -1), id="1x239-hd256"),
    pytest.param(1, 600, 600, 32, 4, 64, True, (255, 0), id="gqa8-split-group"),
    pytest.param(2, 300, 300, 12, 2, 96, True, (-1, -1), id="gqa6-hd96"),
]


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws", DET_CASES)
def test_deterministic_is_bitwise_repeatable(poison, rng, dtype, B, Lq, Lk, H, Hkv, hd, causal,
                                             ws):
    # deterministic=True: three backward calls give identical bits (the default may not: its
    # dq sums key blocks with atomics), and the same gradients as the reference and as the
    # default path within the module's tolerances
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    left, right = windows(causal, ws)
    out, lse = grad.attention_fwd(gq, gk, gv, None, causal, ws)
    runs = [[host(g) for g in grad.attention_bwd(gq, gk, gv, None, causal, ws, dout=gdo,
                                                  out=out, lse=lse, deterministic=True)]
            for _ in range(3)]
    for r in runs[1:]:
        for name, a, b in zip(("dq", "dk", "dv"), runs[0], r):
            assert np.array_equal(a, b), f"{name} differs between calls"
    n = reduction_lengths(Lq, Lk, H // Hkv, left, right)
    ref = attention_bwd_ref(q, k, v, do, 1.0 / math.sqrt(hd), left, right, 0.0)
    check_grads(runs[0], ref, dtype, *n, "deterministic ")
    default = grad.attention_bwd(gq, gk, gv, None, causal, ws, dout=gdo, out=out, lse=lse)
    check_grads(runs[0], dict(zip(("dq", "dk", "dv"), (host(g) for g in default))), dtype, *n,
                "deterministic vs default ")


@cuda
def test_strided_and_unaligned_views(poison, rng):
    # (B, H, L, hd) memory seen as (B, L, H, hd) (tensor-core path in place), and a view one
    # element off a 16-byte boundary (the CUDA-core path): same gradients
    from cuda_util import CAIView, transposed_view

    dtype, B, L, H, Hkv, hd, ws = "bfloat16", 2, 140, 4, 2, 64, (49, 0)
    q, k, v, do = (round_to(rng.standard_normal(s), dtype) for s in
                   ((B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    ref = attention_bwd_ref(q, k, v, do, 1 / 8, 49, 0)
    n = reduction_lengths(L, L, H // Hkv, 49, 0)
    views = [transposed_view(a, dtype, (0, 2, 1, 3)) for a in (q, k, v, do)]
    check_grads(grad.attention_bwd(*views[:3], None, True, ws, dout=views[3]), ref, dtype, *n,
                "transposed ")
    off = []
    for a in (q, k, v, do):
        base = dev(np.concatenate([np.zeros(1), a.reshape(-1)]), dtype)
        off.append(CAIView(base, a.shape, tuple(int(s) // 8 for s in a.strides), offset=1))
    check_grads(grad.attention_bwd(*off[:3], None, True, ws, dout=off[3]), ref, dtype, *n,
                "unaligned ")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_dout(rng, dtype):
    # a NaN in one dout element reaches dq of that query only and dk of the keys it sees (as on
    # the CPU); dv gets NaN at least where the CPU has it (the tensor-core path multiplies
    # masked P = 0 by the NaN inside a tile, so keys of that tile may get NaN in dv too)
    B, L, H, Hkv, hd = 1, 150, 2, 1, 64
    (q, gq), (k, gk), (v, gv), (do, _) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    do[0, 100, 1, 3] = np.nan
    cpu = grad.attention_bwd(q, k, v, None, True, (29, 0), dout=do)
    gpu = [host(g) for g in grad.attention_bwd(gq, gk, gv, None, True, (29, 0),
                                               dout=dev(do, dtype))]
    np.testing.assert_array_equal(np.isnan(gpu[0]), np.isnan(cpu[0]))
    np.testing.assert_array_equal(np.isnan(gpu[1]), np.isnan(cpu[1]))
    assert np.all(np.isnan(gpu[2])[np.isnan(cpu[2])])
    if dtype == "float32":
        np.testing.assert_array_equal(np.isnan(gpu[2]), np.isnan(cpu[2]))


@cuda
def test_empty_sequences(rng):
    # no (query, key) pair: zero gradients (and out = 0, lse = -inf)
    q = dev(rng.standard_normal((1, 5, 2, 64)), "bfloat16")
    k0 = dev(np.zeros((1, 0, 1, 64)), "bfloat16")
    out, lse = grad.attention_fwd(q, k0, k0)
    assert np.all(host(out) == 0) and np.all(np.isneginf(host(lse)))
    dq, dk, dv = grad.attention_bwd(q, k0, k0, dout=q)
    assert np.all(host(dq) == 0) and dk.shape == (1, 0, 1, 64) and dv.shape == (1, 0, 1, 64)
    k = dev(rng.standard_normal((1, 6, 1, 64)), "bfloat16")
    q0 = dev(np.zeros((1, 0, 2, 64)), "bfloat16")
    dq, dk, dv = grad.attention_bwd(q0, k, k, dout=q0)
    assert dq.shape == (1, 0, 2, 64) and np.all(host(dk) == 0) and np.all(host(dv) == 0)


# ------------------------------------------------------------------ wgmma kernel ----------
# attention_bwd_wgmma.cu (sm_90a): SAMBA_EXT_ATTN_BWD_WGMMA=require makes a call fail rather than
# take another kernel, so these tests fail, not skip, where the kernel should run but does not. It
# runs wherever prefill v4 (the same sm_90a build and device) runs.
WGMMA_CASES = [c for c in CASES if c.values[5] % 8 == 0 and c.values[5] <= 128] + [
    pytest.param(1, 600, 600, 32, 4, 64, True, (255, 0), 0.0, id="gqa8-split-group"),
    pytest.param(2, 300, 300, 12, 2, 96, True, (-1, -1), 0.0, id="gqa6-hd96"),
    pytest.param(1, 3, 799, 4, 4, 64, True, (-1, -1), 0.0, id="3x799-causal"),
    pytest.param(1, 127, 512, 4, 2, 128, False, (100, 30), 0.0, id="127x512-window-hd128"),
    # a tile whose corner pair is one past the causal edge / one before the window's left edge
    # (the kernel's unmasked-tile test; tests/test_wgmma_bwd_layout.py)
    pytest.param(1, 100, 162, 2, 1, 64, True, (-1, -1), 0.0, id="corner-past-causal-edge"),
    pytest.param(1, 100, 132, 2, 1, 64, False, (30, -1), 0.0, id="corner-before-left-edge"),
]


def wgmma_unavailable() -> str | None:
    """None where the wgmma backward runs (where prefill v4 does), else why not."""
    from test_cuda_attention import v4_unavailable
    return v4_unavailable()


@cuda
@pytest.mark.parametrize("nwg", ["1", "2"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,causal,ws,cap", WGMMA_CASES)
def test_wgmma_against_reference(poison, rng, monkeypatch, nwg, dtype, B, Lq, Lk, H, Hkv, hd,
                                 causal, ws, cap):
    # with one warpgroup per block (64 keys) and with two (128 keys, SAMBA_EXT_ATTN_BWD_WGMMA_WG=2)
    if wgmma_unavailable():
        pytest.skip(f"wgmma backward: {wgmma_unavailable()}")
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA_WG", nwg)
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    left, right = windows(causal, ws)
    out, lse = grad.attention_fwd(gq, gk, gv, None, causal, ws, cap)
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "require")
    got = grad.attention_bwd(gq, gk, gv, None, causal, ws, cap, dout=gdo, out=out, lse=lse)
    ref = attention_bwd_ref(q, k, v, do, 1.0 / math.sqrt(hd), left, right, cap)
    n = reduction_lengths(Lq, Lk, H // Hkv, left, right)
    check_grads(got, ref, dtype, *n, "wgmma ")
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "0")
    other = grad.attention_bwd(gq, gk, gv, None, causal, ws, cap, dout=gdo, out=out, lse=lse)
    check_grads(got, dict(zip(("dq", "dk", "dv"), (host(g) for g in other))), dtype, *n,
                "wgmma vs mma ")


@cuda
def test_wgmma_require_refuses_what_it_cannot_run(rng, monkeypatch):
    # deterministic=True, float32 and head dim 256 are not the wgmma kernel's: with "require" the
    # call fails naming the setting; "1" takes the other kernels instead
    if wgmma_unavailable():
        pytest.skip(f"wgmma backward: {wgmma_unavailable()}")
    shapes = ((1, 70, 2, 64), (1, 70, 1, 64), (1, 70, 1, 64), (1, 70, 2, 64))
    half = [rdev(rng.standard_normal(s), "bfloat16")[1] for s in shapes]
    f32 = [rdev(rng.standard_normal(s), "float32")[1] for s in shapes]
    wide = [rdev(rng.standard_normal(s[:3] + (256,)), "bfloat16")[1] for s in shapes]
    for setting in ("require", "1"):
        monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", setting)
        for args, kw in ((half, {"deterministic": True}), (f32, {}), (wide, {})):
            if setting == "require":
                with pytest.raises(ValueError, match="SAMBA_EXT_ATTN_BWD_WGMMA=require"):
                    grad.attention_bwd(*args[:3], None, True, dout=args[3], **kw)
            else:
                got = grad.attention_bwd(*args[:3], None, True, dout=args[3], **kw)
                assert all(np.all(np.isfinite(host(g))) for g in got)


# ------------------------------------------------------------------ forward on prefill v4 -
# Causal windows without softcap or ALiBi, Lq <= Lk, head dims up to 128: where swa_attention runs
# its Hopper kernel (prefill v4), attention_fwd runs the same kernel, which then also writes the
# lse; the prefill variant v2 keeps the general mma.sync kernel. v4's out is bit for bit
# swa_attention's (the same kernel on the same inputs); both routes' out and lse are checked
# against the float64 reference, and the backward from v4's lse against the reference gradients.
V4_FWD_CASES = [
    # B, Lq, Lk, H, Hkv, hd, window_size
    pytest.param(1, 37, 37, 4, 4, 64, (-1, -1), id="odd-L-full-causal"),
    pytest.param(2, 300, 300, 8, 2, 64, (127, 0), id="b2-gqa4-L>W"),
    pytest.param(1, 200, 200, 8, 1, 128, (399, 0), id="gqa8-W>L-hd128"),
    pytest.param(1, 77, 333, 4, 2, 64, (90, 0), id="Lq<Lk-bottom-right"),
    pytest.param(1, 130, 130, 4, 2, 96, (-1, -1), id="hd96-zero-filled"),
    pytest.param(1, 257, 257, 6, 3, 128, (0, 0), id="window-1"),
    pytest.param(3, 129, 129, 4, 1, 64, (63, 0), id="b3-gqa4-window-64"),
    pytest.param(1, 1, 1, 2, 1, 64, (-1, -1), id="one-token"),
    pytest.param(1, 5, 900, 4, 4, 128, (-1, -1), id="5x900-causal"),
    pytest.param(1, 600, 600, 32, 4, 64, (255, 0), id="gqa8-L600"),
    pytest.param(1, 150, 150, 2, 1, 112, (70, 0), id="hd112"),
    pytest.param(2, 64, 64, 2, 2, 64, (2000, 0), id="window-beyond-L"),
]


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,ws", V4_FWD_CASES)
def test_forward_takes_prefill_v4(poison, rng, dtype, B, Lq, Lk, H, Hkv, hd, ws):
    from test_cuda_attention import attn_variant, v4_unavailable

    import samba_ext

    if v4_unavailable():
        pytest.skip(f"prefill v4: {v4_unavailable()}")
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    left = ws[0]
    rout, rlse = attention_fwd_ref(q, k, v, 1.0 / math.sqrt(hd), left, 0)
    with attn_variant(prefill="v4"):
        out4, lse4 = grad.attention_fwd(gq, gk, gv, None, True, ws)
        swa = samba_ext.swa_attention(gq, gk, gv, None if left < 0 else left + 1)
    np.testing.assert_array_equal(host(out4), host(swa), "attention_fwd on v4 vs swa_attention")
    check_forward(out4, lse4, rout, rlse, dtype)
    with attn_variant(prefill="v2"):
        out2, lse2 = grad.attention_fwd(gq, gk, gv, None, True, ws)
    check_forward(out2, lse2, rout, rlse, dtype)
    got = grad.attention_bwd(gq, gk, gv, None, True, ws, dout=gdo, out=out4, lse=lse4)
    ref = attention_bwd_ref(q, k, v, do, 1.0 / math.sqrt(hd), left, 0)
    check_grads(got, ref, dtype, *reduction_lengths(Lq, Lk, H // Hkv, left, 0), "from v4's lse ")


# ------------------------------------------------------------------ real sizes ------------
LARGE = [
    # dtype, B, L, H, Hkv, hd, causal, window_size
    pytest.param("bfloat16", 1, 4096, 32, 4, 64, True, (2047, 0), id="bf16-L4K-W2048-32q4kv"),
    pytest.param("bfloat16", 1, 8192, 32, 4, 64, True, (2047, 0), id="bf16-L8K-W2048-32q4kv"),
    pytest.param("float16", 1, 4096, 32, 4, 64, True, (-1, -1), id="fp16-L4K-causal-32q4kv"),
    pytest.param("float32", 1, 4096, 32, 4, 64, True, (2047, 0), id="fp32-L4K-W2048-32q4kv"),
    pytest.param("bfloat16", 2, 3001, 8, 1, 128, False, (700, 300), id="bf16-b2-L3001-two-sided"),
]


@cuda
@pytest.mark.slow
@pytest.mark.parametrize("dtype,B,L,H,Hkv,hd,causal,ws", LARGE)
def test_real_sizes(poison, rng, monkeypatch, dtype, B, L, H, Hkv, hd, causal, ws):
    (q, gq), (k, gk), (v, gv), (do, gdo) = (rdev(rng.standard_normal(s), dtype) for s in (
        (B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd), (B, L, H, hd)))
    left, right = windows(causal, ws)
    ref = ref_chunked(q, k, v, do, 1.0 / math.sqrt(hd), left, right)
    out, lse = grad.attention_fwd(gq, gk, gv, None, causal, ws)
    check_forward(out, lse, ref["out"], ref["lse"], dtype)
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "0")  # mma.sync here, wgmma below
    got = grad.attention_bwd(gq, gk, gv, None, causal, ws, dout=gdo, out=out, lse=lse)
    w = L if left < 0 else min(L, left + 1 + max(right, 0))
    check_grads(got, ref, dtype, w, (H // Hkv) * w)
    if dtype != "float32" and not wgmma_unavailable():
        monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "require")
        for nwg in ("1", "2"):
            monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA_WG", nwg)
            got = grad.attention_bwd(gq, gk, gv, None, causal, ws, dout=gdo, out=out, lse=lse)
            check_grads(got, ref, dtype, w, (H // Hkv) * w, f"wgmma x{nwg} ")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
