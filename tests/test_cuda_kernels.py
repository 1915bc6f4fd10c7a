"""CUDA kernels against the float64 references, for float32, float16 and bfloat16.

Every new DeviceArray is filled with NaN bytes before the kernel runs (set_poison), so an
element the kernel fails to write fails the NaN check in assert_close. Tolerances: see
cuda_util.RTOL. Skipped cleanly without a GPU / CUDA build.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import DTYPES, RTOL, dev, host, needs_cuda, rdev, round_to, \
    transposed_view
from ref_attention import ref_swa_attention, ref_swa_decode
from ref_scan import selective_scan_ref, selective_state_update_ref
from ref_small import causal_conv1d as conv_ref
from ref_small import rms_norm as rms_ref
from ref_small import rotary as rotary_ref
from ref_small import swiglu as swiglu_ref

import samba_ext

pytestmark = needs_cuda


@pytest.fixture(autouse=True)
def poison():
    from samba_ext import cuda as samba_cuda

    samba_cuda.set_poison(True)
    yield
    samba_cuda.set_poison(False)


def _nan_out(shape, dtype):
    from samba_ext import cuda as samba_cuda

    return samba_cuda.empty(shape, dtype)  # poisoned (NaN bytes)


# ------------------------------------------------------------------------ selective scan --
def _scan_inputs(rng, batch, dim, L, N, G, dtype, softplus):
    u = rng.standard_normal((batch, dim, L))
    if softplus:
        delta = rng.uniform(-3.0, 1.0, (batch, dim, L))
    else:
        delta = rng.uniform(0.01, 0.6, (batch, dim, L))
    A = -np.exp(rng.uniform(-1.0, 1.0, (dim, N)))
    bc_shape = (batch, N, L) if G == 0 else (batch, G, N, L)
    Bm = rng.standard_normal(bc_shape)
    Cm = rng.standard_normal(bc_shape)
    D = rng.standard_normal(dim)
    z = rng.standard_normal((batch, dim, L))
    db = rng.uniform(-0.5, 0.5, dim)
    init = rng.standard_normal((batch, dim, N))
    r = {k: round_to(v, dtype) for k, v in dict(u=u, delta=delta, B=Bm, C=Cm, z=z).items()}
    r.update({k: round_to(v, "float32") for k, v in dict(A=A, D=D, delta_bias=db,
                                                           initial_state=init).items()})
    return r


# (batch, dim, L, N, G (0: 3-D B/C), D, z, delta_bias, softplus, initial_state)
SCAN_CASES = [
    pytest.param(2, 8, 37, 16, 0, True, True, True, True, True, id="all-options"),
    pytest.param(1, 16, 50, 16, 2, True, False, False, False, False, id="groups2"),
    pytest.param(2, 6, 20, 4, 0, False, False, False, False, False, id="n4-bare"),
    pytest.param(1, 5, 33, 40, 0, True, True, False, True, True, id="n40"),
    pytest.param(1, 3, 17, 100, 1, True, False, True, True, False, id="n100-local-mem"),
    pytest.param(3, 200, 9, 16, 0, True, True, True, True, True, id="dim200-two-blocks"),
    pytest.param(1, 4, 1, 16, 0, True, True, True, True, True, id="seqlen1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,dim,L,N,G,useD,usez,usedb,softplus,useinit", SCAN_CASES)
def test_selective_scan(rng, dtype, batch, dim, L, N, G, useD, usez, usedb, softplus, useinit):
    r = _scan_inputs(rng, batch, dim, L, N, G, dtype, softplus)
    kw = dict(D=r["D"] if useD else None, z=r["z"] if usez else None,
              delta_bias=r["delta_bias"] if usedb else None, delta_softplus=softplus,
              initial_state=r["initial_state"] if useinit else None)
    y_ref, h_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"],
                                      return_last_state=True, **kw)
    d = {k: (dev(v, dtype) if k in ("u", "delta", "B", "C", "z") else dev(v))
         for k, v in r.items()}
    dkw = dict(D=d["D"] if useD else None, z=d["z"] if usez else None,
               delta_bias=d["delta_bias"] if usedb else None, delta_softplus=softplus,
               initial_state=d["initial_state"] if useinit else None)
    y, h = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"],
                                    return_last_state=True, **dkw)
    assert isinstance(y, samba_ext.DeviceArray) and y.dtype == dtype and h.dtype == "float32"
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(h), h_ref, RTOL["float32"], "last_state")
    # out= into a NaN-filled buffer, no last state
    out = _nan_out((batch, dim, L), dtype)
    y2 = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], out=out, **dkw)
    assert y2 is out
    assert_close(host(out), y_ref, RTOL[dtype], "y (out=)")


def test_selective_scan_strided_token_major(rng):
    # u, delta, z, B, C laid out token-major (the model's layout), read through strides.
    batch, dim, L, N = 2, 12, 21, 16
    r = _scan_inputs(rng, batch, dim, L, N, 0, "float32", True)
    y_ref, h_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"],
                                      r["z"], r["delta_bias"], True, r["initial_state"], True)
    tv = {k: transposed_view(r[k], "float32", (0, 2, 1)) for k in ("u", "delta", "z", "B", "C")}
    y, h = samba_ext.selective_scan(tv["u"], tv["delta"], dev(r["A"]), tv["B"], tv["C"],
                                    dev(r["D"]), tv["z"], dev(r["delta_bias"]), True,
                                    dev(r["initial_state"]), True)
    assert_close(host(y), y_ref, 1e-5, "y")
    assert_close(host(h), h_ref, 1e-5, "last_state")


def test_selective_scan_empty(rng):
    init = rng.standard_normal((2, 3, 16)).astype(np.float32)
    A = -np.ones((3, 16), np.float32)
    u = dev(np.zeros((2, 3, 0), np.float32))
    bc = dev(np.zeros((2, 16, 0), np.float32))
    y, h = samba_ext.selective_scan(u, u, dev(A), bc, bc, initial_state=dev(init),
                                    return_last_state=True)
    assert y.shape == (2, 3, 0)
    np.testing.assert_array_equal(host(h), init)
    z = dev(np.zeros((0, 3, 5), np.float32))
    y = samba_ext.selective_scan(z, z, dev(A), dev(np.zeros((0, 16, 5), np.float32)),
                                 dev(np.zeros((0, 16, 5), np.float32)))
    assert y.shape == (0, 3, 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G", [0, 2])
def test_selective_state_update(rng, dtype, G):
    batch, dim, N = 3, 10, 16
    x, dt, z = (round_to(rng.standard_normal((batch, dim)), dtype) for _ in range(3))
    A = round_to(-np.exp(rng.uniform(-1, 1, (dim, N))), "float32")
    shape = (batch, N) if G == 0 else (batch, G, N)
    Bm, Cm = round_to(rng.standard_normal(shape), dtype), round_to(rng.standard_normal(shape),
                                                                   dtype)
    D, dtb = round_to(rng.standard_normal(dim), "float32"), round_to(rng.uniform(-1, 1, dim),
                                                                     "float32")
    state = rng.standard_normal((batch, dim, N)).astype(np.float32)
    y_ref, s_ref = selective_state_update_ref(state, x, dt, A, Bm, Cm, D, z, dtb, True)
    ds = dev(state)
    y = samba_ext.selective_state_update(ds, dev(x, dtype), dev(dt, dtype), dev(A),
                                         dev(Bm, dtype), dev(Cm, dtype), dev(D), dev(z, dtype),
                                         dev(dtb), True)
    assert y.dtype == dtype
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(ds), s_ref, 1e-5, "state (in place)")


@pytest.mark.parametrize("batch,dim,N,G", [(1, 4096, 16, 0), (2, 1536, 16, 3), (3, 7, 1, 0),
                                           (2, 9, 5, 0), (1, 33, 17, 0), (2, 6, 33, 2),
                                           (1, 5, 64, 0), (2, 3, 256, 0)])
def test_selective_state_update_dstate(rng, batch, dim, N, G):
    # The step kernel splits each channel's states over min(32, pow2 >= N) lanes: state
    # counts below, at and above a lane group, and Samba-1.7B's 4096 channels at batch 1.
    x, dt, z = (round_to(rng.standard_normal((batch, dim)), "bfloat16") for _ in range(3))
    A = round_to(-np.exp(rng.uniform(-1, 1, (dim, N))), "float32")
    shape = (batch, N) if G == 0 else (batch, G, N)
    Bm, Cm = (round_to(rng.standard_normal(shape), "bfloat16") for _ in range(2))
    D, dtb = round_to(rng.standard_normal(dim), "float32"), round_to(rng.uniform(-1, 1, dim),
                                                                     "float32")
    state = rng.standard_normal((batch, dim, N)).astype(np.float32)
    y_ref, s_ref = selective_state_update_ref(state, x, dt, A, Bm, Cm, D, z, dtb, True)
    ds = dev(state)
    y = samba_ext.selective_state_update(ds, dev(x, "bfloat16"), dev(dt, "bfloat16"), dev(A),
                                         dev(Bm, "bfloat16"), dev(Cm, "bfloat16"), dev(D),
                                         dev(z, "bfloat16"), dev(dtb), True)
    assert_close(host(y), y_ref, RTOL["bfloat16"], "y")
    assert_close(host(ds), s_ref, 1e-5, "state (in place)")


def test_step_by_step_equals_scan(rng):
    # The decode path (selective_state_update per token) reproduces the prefill scan.
    batch, dim, L, N = 2, 8, 12, 16
    r = _scan_inputs(rng, batch, dim, L, N, 0, "float32", True)
    d = {k: dev(v) for k, v in r.items()}
    y_scan, h_scan = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"],
                                              d["D"], d["z"], d["delta_bias"], True,
                                              d["initial_state"], True)
    state = dev(r["initial_state"])
    ys = []
    for t in range(L):
        ys.append(host(samba_ext.selective_state_update(
            state, dev(r["u"][:, :, t]), dev(r["delta"][:, :, t]), d["A"], dev(r["B"][..., t]),
            dev(r["C"][..., t]), d["D"], dev(r["z"][:, :, t]), d["delta_bias"], True)))
    assert_close(np.stack(ys, axis=-1), host(y_scan), 1e-5, "y")
    assert_close(host(state), host(h_scan), 1e-5, "state")


def test_chunked_scan_equals_full(rng):
    batch, dim, L, N = 1, 8, 40, 16
    r = _scan_inputs(rng, batch, dim, L, N, 0, "float32", True)
    full = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"], r["z"],
                              r["delta_bias"], True, r["initial_state"])
    state = dev(r["initial_state"])
    parts = []
    for a, b in ((0, 13), (13, 14), (14, 40)):
        y, state = samba_ext.selective_scan(*(dev(np.ascontiguousarray(r[k][..., a:b]))
                                              for k in ("u", "delta")), dev(r["A"]),
                                            *(dev(np.ascontiguousarray(r[k][..., a:b]))
                                              for k in ("B", "C")), dev(r["D"]),
                                            dev(np.ascontiguousarray(r["z"][..., a:b])),
                                            dev(r["delta_bias"]), True, state, True)
        parts.append(host(y))
    assert_close(np.concatenate(parts, axis=-1), full, 1e-5)


# ------------------------------------------------------------------------ causal conv1d ---
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,dim,L,W,bias,act,init", [
    (2, 8, 30, 4, True, "silu", True),
    (1, 5, 7, 3, False, None, False),
    (3, 4, 1, 2, True, "swish", True),
    (1, 6, 2, 4, True, None, True),   # L < W - 1: final states mix init and x
    (2, 300, 65, 4, True, "silu", False),
])
def test_causal_conv1d(rng, dtype, batch, dim, L, W, bias, act, init):
    x = round_to(rng.standard_normal((batch, dim, L)), dtype)
    w = round_to(rng.standard_normal((dim, W)), "float32")
    b = round_to(rng.standard_normal(dim), "float32") if bias else None
    s0 = round_to(rng.standard_normal((batch, dim, W - 1)), "float32") if init else None
    y_ref, f_ref = conv_ref(x, w, b, act, s0)
    y, f = samba_ext.causal_conv1d(dev(x, dtype), dev(w), None if b is None else dev(b), act,
                                   None if s0 is None else dev(s0), True)
    assert y.dtype == dtype and f.dtype == "float32"
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(f), f_ref, 1e-6, "final_states")  # copies of inputs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("W", [2, 3, 4])
def test_causal_conv1d_nan_stays_local(rng, dtype, W):
    """A NaN input reaches only the W outputs whose taps read it (as on the CPU): the
    vectorised kernel (aligned rows, several outputs per thread) must skip the taps past the
    width rather than multiply an earlier input by a zero weight."""
    x = round_to(rng.standard_normal((1, 16, 64)), dtype)
    x[0, :, 21] = np.nan
    w = round_to(rng.standard_normal((16, W)), "float32")
    y = host(samba_ext.causal_conv1d(dev(x, dtype), dev(w)))
    nan_t = np.flatnonzero(np.isnan(y[0]).any(axis=0))
    np.testing.assert_array_equal(nan_t, np.arange(21, 21 + W))


def test_causal_conv1d_token_major_and_update(rng):
    batch, dim, L, W = 2, 16, 9, 4
    x = round_to(rng.standard_normal((batch, dim, L)), "float32")
    w = round_to(rng.standard_normal((dim, W)), "float32")
    b = round_to(rng.standard_normal(dim), "float32")
    y_ref, f_ref = conv_ref(x, w, b, "silu", None)
    xv = transposed_view(x, "float32", (0, 2, 1))
    y, f = samba_ext.causal_conv1d(xv, dev(w), dev(b), "silu", None, True)
    assert_close(host(y), y_ref, 1e-5, "y (token-major x)")
    # decode: conv_state carries on, each step matches the prefill of the longer sequence
    x2 = round_to(rng.standard_normal((batch, dim, 3)), "float32")
    y_all, _ = conv_ref(np.concatenate([x, x2], axis=2), w, b, "silu", None)
    state = f
    for t in range(3):
        yt = samba_ext.causal_conv1d_update(dev(x2[:, :, t]), state, dev(w), dev(b), "silu")
        assert_close(host(yt), y_all[:, :, L + t], 1e-5, f"step {t}")
    _, f_all = conv_ref(np.concatenate([x, x2], axis=2), w, b, "silu", None)
    assert_close(host(state), f_all, 1e-6, "conv_state")


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_conv1d_update(rng, dtype):
    batch, dim, W = 3, 7, 4
    x = round_to(rng.standard_normal((batch, dim)), dtype)
    w = round_to(rng.standard_normal((dim, W)), "float32")
    b = round_to(rng.standard_normal(dim), "float32")
    s0 = rng.standard_normal((batch, dim, W - 1)).astype(np.float32)
    y_ref, f_ref = conv_ref(x[:, :, None], w, b, "silu", s0)
    st = dev(s0)
    y = samba_ext.causal_conv1d_update(dev(x, dtype), st, dev(w), dev(b), "silu")
    assert_close(host(y), y_ref[:, :, 0], RTOL[dtype], "y")
    assert_close(host(st), f_ref, 1e-6, "conv_state")


# ------------------------------------------------------------------------ attention -------
ATTN_CASES = [
    pytest.param(1, 1, 1, 2, 1, 64, None, None, id="seqlen1"),
    pytest.param(1, 37, 37, 4, 4, 64, 8, None, id="odd-seqlen"),
    pytest.param(1, 300, 300, 2, 1, 64, 100, None, id="longer-than-window"),
    pytest.param(2, 33, 33, 4, 2, 64, 1, None, id="window1"),
    pytest.param(1, 130, 130, 2, 2, 128, None, None, id="full-causal"),
    pytest.param(1, 40, 200, 4, 4, 64, 70, None, id="past-keys"),
    pytest.param(1, 1, 150, 4, 2, 64, 100, None, id="past-keys-one-query"),
    pytest.param(1, 70, 260, 2, 1, 64, None, None, id="past-keys-full"),
    pytest.param(3, 50, 50, 4, 2, 96, 20, None, id="batch3-hd96"),
    pytest.param(1, 70, 70, 8, 1, 128, 40, None, id="gqa8:1"),
    pytest.param(1, 50, 50, 9, 3, 64, 7, None, id="gqa9:3"),
    pytest.param(1, 80, 80, 2, 1, 256, 33, None, id="hd256"),
    pytest.param(1, 70, 70, 2, 1, 32, None, 2.0, id="scale2"),
    pytest.param(2, 60, 90, 6, 2, 17, 25, None, id="hd17-gqa"),
    pytest.param(1, 33, 33, 1, 1, 1, None, 0.5, id="hd1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,window,scale", ATTN_CASES)
def test_swa_attention(rng, dtype, B, Lq, Lk, H, Hkv, hd, window, scale):
    (q, dq), (k, dk), (v, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                 ((B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd)))
    ref = ref_swa_attention(q, k, v, window, scale)
    out = samba_ext.swa_attention(dq, dk, dv, window, scale)
    assert out.dtype == dtype and out.shape == (B, Lq, H, hd)
    assert_close(host(out), ref, RTOL[dtype])


def test_swa_attention_strided_qkv(rng):
    # q, k, v as head-major (B, H, L, hd) memory viewed as (B, L, H, hd).
    B, L, H, Hkv, hd = 2, 45, 4, 2, 64
    q = round_to(rng.standard_normal((B, L, H, hd)), "float32")
    k = round_to(rng.standard_normal((B, L, Hkv, hd)), "float32")
    v = round_to(rng.standard_normal((B, L, Hkv, hd)), "float32")
    views = [transposed_view(a, "float32", (0, 2, 1, 3)) for a in (q, k, v)]
    out = samba_ext.swa_attention(*views, window=16)
    assert_close(host(out), ref_swa_attention(q, k, v, 16), 1e-5)
    # last dim strided too: copied to C order internally
    qv = transposed_view(q, "float32", (3, 0, 1, 2))
    out = samba_ext.swa_attention(qv, dev(k), dev(v), window=16)
    assert_close(host(out), ref_swa_attention(q, k, v, 16), 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Hkv,hd,C,pos,nvalid", [
    (1, 4, 4, 64, 16, [5], [6]),
    (2, 4, 2, 64, 16, [20, 40], [16, 16]),       # wrapped ring
    (3, 8, 1, 128, 64, [100, 3, 63], [64, 4, 50]),
    (1, 2, 1, 256, 200, [1000], [200]),
    (2, 6, 3, 96, 33, [32, 70], [1, 33]),
])
def test_swa_decode(rng, dtype, B, H, Hkv, hd, C, pos, nvalid):
    (q, dq), (kc, dk), (vc, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                   ((B, H, hd), (B, C, Hkv, hd), (B, C, Hkv, hd)))
    pos, nvalid = np.array(pos), np.array(nvalid)
    ref = ref_swa_decode(q, kc, vc, pos, nvalid)
    out = samba_ext.swa_decode(dq, dk, dv, pos, nvalid)
    assert out.dtype == dtype
    assert_close(host(out), ref, RTOL[dtype])
    # positions held on the device as int32 (what a captured decode graph reads)
    from samba_ext import cuda as samba_cuda

    out2 = samba_ext.swa_decode(dq, dk, dv, samba_cuda.to_device(pos, "int32"),
                                samba_cuda.to_device(nvalid, "int32"), out=_nan_out(out.shape, dtype))
    assert_close(host(out2), ref, RTOL[dtype])


def test_swa_decode_matches_prefill_last_row(rng):
    B, L, H, Hkv, hd, W = 2, 50, 4, 2, 64, 20
    q = round_to(rng.standard_normal((B, L, H, hd)), "float32")
    k = round_to(rng.standard_normal((B, L, Hkv, hd)), "float32")
    v = round_to(rng.standard_normal((B, L, Hkv, hd)), "float32")
    pre = host(samba_ext.swa_attention(dev(q), dev(k), dev(v), W))
    cap = 32  # ring buffer larger than the window, written token by token
    kc = np.zeros((B, cap, Hkv, hd), np.float32)
    vc = np.zeros((B, cap, Hkv, hd), np.float32)
    for t in range(L):
        kc[:, t % cap], vc[:, t % cap] = k[:, t], v[:, t]
    out = samba_ext.swa_decode(dev(q[:, -1]), dev(kc), dev(vc), np.full(B, L - 1),
                               np.full(B, W))
    assert_close(host(out), pre[:, -1], 1e-5)


# ------------------------------------------------------------------------ small ops -------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 300), (1, 1), (4, 1000)])
def test_rms_norm(rng, dtype, shape):
    x = round_to(rng.standard_normal(shape), dtype)
    w = round_to(rng.standard_normal(shape[-1]), "float32")
    y = samba_ext.rms_norm(dev(x, dtype), dev(w), 1e-5)
    assert y.dtype == dtype
    assert_close(host(y), rms_ref(x, w, 1e-5)[0], RTOL[dtype])


@pytest.mark.parametrize("xdtype,rdtype", [("float32", "float32"), ("bfloat16", "float32"),
                                           ("float16", "float16"), ("bfloat16", "bfloat16")])
def test_rms_norm_residual(rng, xdtype, rdtype):
    x = round_to(rng.standard_normal((4, 3, 96)), xdtype)
    res = round_to(rng.standard_normal((4, 3, 96)), rdtype)
    w = round_to(rng.standard_normal(96), "float32")
    y_ref, s_ref = rms_ref(x, w, 1e-6, res)
    y, s = samba_ext.rms_norm(dev(x, xdtype), dev(w), 1e-6, residual=dev(res, rdtype))
    assert y.dtype == xdtype and s.dtype == rdtype
    tol = max(RTOL[xdtype], RTOL[rdtype])  # y normalises the sum as stored in rdtype
    assert_close(host(s), s_ref, RTOL[rdtype], "x + residual")
    assert_close(host(y), y_ref, tol, "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positions", ["offset0", "offset", "vector", "batched", "large"])
def test_apply_rotary(rng, dtype, positions):
    B, L, H, hd = 2, 13, 3, 64
    x = round_to(rng.standard_normal((B, L, H, hd)), dtype)
    if positions == "offset0":
        p, pref = 0, np.tile(np.arange(L), (B, 1))
    elif positions == "offset":
        p, pref = 1234, np.tile(np.arange(L) + 1234, (B, 1))
    elif positions == "vector":
        p = rng.integers(0, 5000, L)
        pref = np.tile(p, (B, 1))
    elif positions == "batched":
        p = rng.integers(0, 5000, (B, L))
        pref = p
    else:
        p = rng.integers(10**6, 10**7, (B, L))
        pref = p
    ref = rotary_ref(x, pref, 10000.0)
    y = samba_ext.apply_rotary(dev(x, dtype), p, 10000.0)
    assert y.dtype == dtype
    assert_close(host(y), ref, RTOL[dtype])


def test_apply_rotary_in_place_and_device_positions(rng):
    from samba_ext import cuda as samba_cuda

    B, L, H, hd = 1, 9, 2, 32
    x = round_to(rng.standard_normal((B, L, H, hd)), "float32")
    p = rng.integers(0, 100, (B, L))
    dx = dev(x)
    y = samba_ext.apply_rotary(dx, samba_cuda.to_device(p, "int32"), 500.0, out=dx)
    assert y is dx
    assert_close(host(dx), rotary_ref(x, p, 500.0), 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 300), (2, 3, 1025)])
def test_swiglu(rng, dtype, shape):
    g, dg = rdev(rng.standard_normal(shape) * 3, dtype)
    u, du = rdev(rng.standard_normal(shape), dtype)
    y = samba_ext.swiglu(dg, du)
    assert y.dtype == dtype and y.shape == shape
    assert_close(host(y), swiglu_ref(g, u), RTOL[dtype])
    out = _nan_out(shape, "float32")
    assert samba_ext.swiglu(dg, du, out=out) is out
    assert_close(host(out), swiglu_ref(g, u), 1e-5)  # float32 output of the same inputs


@pytest.mark.parametrize("dtype,out_dtype,tol", [
    ("float32", "float32", 1e-5),   # CUBLAS_COMPUTE_32F: no TF32
    ("bfloat16", "float32", 1e-5),  # exact bf16 products, float32 accumulation
    ("bfloat16", "bfloat16", 1e-2),
    ("float16", "float16", 2e-3),
])
def test_linear_cublas(rng, dtype, out_dtype, tol):
    from samba_ext import cuda as samba_cuda

    x, dx = rdev(rng.standard_normal((3, 5, 96)), dtype)
    w, dw = rdev(rng.standard_normal((72, 96)), dtype)
    y = samba_cuda.linear(dx, dw, out_dtype=out_dtype)
    assert y.shape == (3, 5, 72) and y.dtype == out_dtype
    assert_close(host(y), x @ w.T, tol)


# ------------------------------------------------------------------------ errors ----------
def test_errors_are_exceptions():
    from samba_ext import cuda as samba_cuda

    with pytest.raises(MemoryError, match="CUDA out of memory.*cudaMallocAsync"):
        samba_cuda.empty((1 << 46,), "float32")
    q = dev(np.zeros((1, 4, 1, 300), np.float32))
    with pytest.raises(ValueError, match="headdim must be in 1..256"):
        samba_ext.swa_attention(q, q, q)
    with pytest.raises(TypeError, match="u: expected a floating-point array"):
        i = samba_cuda.to_device(np.zeros((1, 2, 3), np.int64))
        samba_ext.selective_scan(i, i, dev(np.zeros((2, 4))), dev(np.zeros((1, 4, 3))),
                                 dev(np.zeros((1, 4, 3))))
    with pytest.raises(TypeError, match="state: is updated in place and must be float32"):
        samba_ext.selective_state_update(dev(np.zeros((1, 2, 4)), "bfloat16"),
                                         dev(np.zeros((1, 2))), dev(np.zeros((1, 2))),
                                         dev(np.zeros((2, 4))), dev(np.zeros((1, 4))),
                                         dev(np.zeros((1, 4))))
    with pytest.raises(ValueError, match="delta: expected shape"):
        samba_ext.selective_scan(dev(np.zeros((1, 2, 3))), dev(np.zeros((1, 2, 4))),
                                 dev(np.zeros((2, 4))), dev(np.zeros((1, 4, 3))),
                                 dev(np.zeros((1, 4, 3))))
    with pytest.raises(ValueError, match="n_valid"):
        z = dev(np.zeros((1, 2, 8)))
        samba_ext.swa_decode(z, dev(np.zeros((1, 4, 2, 8))), dev(np.zeros((1, 4, 2, 8))),
                             [3], [5])
    with pytest.raises(ValueError, match="out: expected shape"):
        samba_ext.swiglu(dev(np.ones(3)), dev(np.ones(3)), out=samba_cuda.empty((4,)))
    # the process is still healthy
    assert_close(host(samba_ext.swiglu(dev(np.ones(3)), dev(np.ones(3)))),
                 swiglu_ref(np.ones(3), np.ones(3)), 1e-6)


def test_kernel_fault_raises_naming_the_kernel_without_abort():
    """An illegal address inside a kernel becomes CudaError('swiglu: ...'), not an abort.
    Every later call raises too, and the message says the context is unusable (sticky).
    Runs in a subprocess: the fault poisons that process's CUDA context."""
    code = textwrap.dedent("""
        import numpy as np, samba_ext
        from samba_ext import cuda as samba_cuda
        from samba_ext.cuda import CudaError
        class Bad:  # a CUDA array interface pointing at unmapped device memory
            __cuda_array_interface__ = {"shape": (1 << 20,), "typestr": "<f4",
                                        "data": (0x10, False), "version": 3}
        good = samba_cuda.to_device(np.ones(1 << 20, np.float32))
        try:
            samba_ext.swiglu(Bad(), good)
            samba_cuda.synchronize()
        except CudaError as e:
            print("CAUGHT", e)
        # the context is now corrupt: a correct call must raise too (not crash, not return
        # garbage), and say so
        for i in range(2):
            try:
                y = samba_ext.swiglu(good, good)
                samba_cuda.synchronize()
                print("NO ERROR", float(y.to_numpy()[0]))
            except CudaError as e:
                print("LATER", e)
        """)
    import os

    env = dict(os.environ, SAMBA_EXT_CUDA_SYNC="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "CAUGHT swiglu: an illegal memory access" in r.stdout, r.stdout + r.stderr
    assert "restart the Python process" in r.stdout, r.stdout
    later = [ln for ln in r.stdout.splitlines() if ln.startswith(("LATER", "NO ERROR"))]
    assert len(later) == 2 and all(ln.startswith("LATER") for ln in later), r.stdout
    assert all("sticky" in ln for ln in later), r.stdout



# ------------------------------------------------------------------------ views, matmul ---
def test_device_array_views(rng):
    from samba_ext import cuda as samba_cuda

    a = rng.standard_normal((3, 5, 8)).astype(np.float32)
    d = samba_cuda.to_device(a)
    for key in [(slice(None), -1), (slice(None), slice(1, 4)), (1,), (Ellipsis, slice(2, 6)),
                (slice(None), slice(None, None, 2), 3), (None, 0), (slice(None), 2, slice(1, 2))]:
        np.testing.assert_array_equal(d[key].to_numpy(), a[key], err_msg=str(key))
    v = d[:, :, 2:6]
    np.testing.assert_array_equal(v.reshape(3, 5, 2, 2).to_numpy(), a[:, :, 2:6].reshape(3, 5, 2,
                                                                                         2))
    assert v.reshape(3, 5, 2, 2).ptr == v.ptr  # a last-axis slice split: still a view
    np.testing.assert_array_equal(v.reshape(15, 4).to_numpy(), a[:, :, 2:6].reshape(15, 4))
    np.testing.assert_array_equal(v.reshape(-1).to_numpy(), a[:, :, 2:6].reshape(-1))  # copy


@pytest.mark.parametrize("case", ["2d", "batched", "trans_a", "trans_b", "both", "weight_left",
                                  "strided_b", "bf16_weight", "broadcast_b"])
def test_matmul_layouts(rng, case):
    from samba_ext import cuda as samba_cuda

    B, M, K, N = 3, 7, 33, 12
    a = round_to(rng.standard_normal((B, M, K)), "float32")
    b = round_to(rng.standard_normal((B, K, N)), "float32")
    tol = 1e-5
    if case == "2d":
        x, y, ta, tb, ref = dev(a[0]), dev(b[0]), False, False, a[0] @ b[0]
    elif case == "batched":
        x, y, ta, tb, ref = dev(a), dev(b), False, False, a @ b
    elif case == "trans_a":
        at = np.ascontiguousarray(a.transpose(0, 2, 1))
        x, y, ta, tb, ref = dev(at), dev(b), True, False, a @ b
    elif case == "trans_b":
        bt = np.ascontiguousarray(b.transpose(0, 2, 1))
        x, y, ta, tb, ref = dev(a), dev(bt), False, True, a @ b
    elif case == "both":
        at = np.ascontiguousarray(a.transpose(0, 2, 1))
        bt = np.ascontiguousarray(b.transpose(0, 2, 1))
        x, y, ta, tb, ref = dev(at), dev(bt), True, True, a @ b
    elif case == "weight_left":  # (E, D) weight @ (B, L, D)^T -> (B, E, L), as in_proj
        w = round_to(rng.standard_normal((N, K)), "float32")
        x, y, ta, tb, ref = dev(w), dev(a), False, True, np.matmul(w, a.transpose(0, 2, 1))
    elif case == "strided_b":  # dbl[:, :R] style view
        big = round_to(rng.standard_normal((B, K + 9, N)), "float32")
        w = round_to(rng.standard_normal((M, K)), "float32")
        x, y, ta, tb, ref = dev(w), dev(big)[:, 4:4 + K], False, False, w @ big[:, 4:4 + K]
    elif case == "bf16_weight":  # float32 activation x bfloat16 weight^T
        w = round_to(rng.standard_normal((N, K)), "bfloat16")
        x, y, ta, tb = dev(a), dev(w, "bfloat16"), False, True
        ref = round_to(a, "bfloat16") @ w.T
        tol = 1e-5  # bf16 products are exact in float32; float32 accumulation
    else:  # broadcast a 2-D right operand over the batch
        w = round_to(rng.standard_normal((K, N)), "float32")
        x, y, ta, tb, ref = dev(a), dev(w), False, False, a @ w
    got = samba_cuda.matmul(x, y, ta, tb)
    assert got.dtype == "float32" and got.shape == ref.shape
    assert_close(host(got), ref, tol)
