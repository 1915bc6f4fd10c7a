"""The attention forward-with-LSE (attention.c's kernel) and the tiled backward (attention_bwd.c,
attention_bwd_tile.h) on shapes that cross their tile boundaries, at every instruction-set level.

The kernels cut queries and keys into tiles of 64 (query tiles aligned to the key tiles in key
positions, so Lq != Lk shifts them), use plain register-blocked products on tiles every row
sees whole and per-row ranges on the others (causal diagonal, window edges, sequence ends), pick
an instruction set whose vector width divides headdim (AVX-512 16, AVX2 8, portable 4, scalar
any), and split the key tiles of a (batch, kv head) into chunks when there are fewer such pairs
than threads, adding the chunks' dq terms at the end. These tests hit each of those paths:
lengths that are not multiples of 64 or of the vector width, windows shorter and longer than a
tile, two-sided windows, GQA 1/2/4/8, head dims 8..256, softcap, thread counts 1..5, and NaN
inputs that must stay in the rows that see them.

Tolerance: as tests/test_grad_attention.py (relative norm 1e-5 against the float64 reference;
measured errors <= ~1e-6 here: float32 dot products over headdim and sums over up to a few
hundred keys or queries).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from ref_grad import attention_bwd_ref, attention_fwd_ref, r32
from samba_ext import grad, threads

RTOL = 1e-5
LEVELS = ["avx512", "avx2", "vec", "scalar"]


@pytest.fixture(params=LEVELS)
def isa(request, monkeypatch) -> str:
    monkeypatch.setenv("SAMBA_EXT_ISA", request.param)
    return request.param


def make(rng, B, Lq, Lk, H, Hkv, hd):
    q = r32(rng.standard_normal((B, Lq, H, hd)))
    k = r32(rng.standard_normal((B, Lk, Hkv, hd)))
    v = r32(rng.standard_normal((B, Lk, Hkv, hd)))
    do = r32(rng.standard_normal((B, Lq, H, hd)))
    return q, k, v, do


def check(q, k, v, do, causal, ws, cap, what=""):
    """attention_fwd and attention_bwd against the float64 references."""
    hd = q.shape[3]
    scale = 1.0 / np.sqrt(hd)
    left, right = ws[0], 0 if causal else ws[1]
    out, lse = grad.attention_fwd(q, k, v, None, causal, ws, cap)
    rout, rlse = attention_fwd_ref(q, k, v, scale, left, right, cap)
    assert_close(out, rout, RTOL, f"{what} out")
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rlse))
    fin = np.isfinite(rlse)
    assert np.max(np.abs(lse[fin] - rlse[fin]), initial=0.0) <= 1e-5, f"{what} lse"
    dq, dk, dv = grad.attention_bwd(q, k, v, None, causal, ws, cap, dout=do, out=out, lse=lse)
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, cap)
    for name, got in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert_close(got, ref[name], RTOL, f"{what} {name}")


CASES = [
    # B, Lq, Lk, H, Hkv, hd, causal, window_size, softcap
    (1, 200, 200, 2, 1, 64, True, (-1, -1), 0.0),     # 4 tiles, the last partial
    (2, 130, 130, 4, 2, 32, True, (99, 0), 0.0),      # window 100 > a tile
    (1, 150, 150, 8, 1, 16, True, (5, 0), 0.0),       # window 6 < a tile, GQA 8
    (1, 70, 150, 4, 4, 96, True, (-1, -1), 0.0),      # Lq < Lk: tiles shifted by 80
    (1, 150, 97, 2, 1, 128, False, (-1, -1), 0.0),    # Lq > Lk, non-causal
    (1, 129, 140, 4, 1, 40, False, (30, 70), 0.0),    # two-sided, hd 40 (AVX2 on AVX-512)
    (1, 100, 100, 2, 2, 256, True, (-1, -1), 20.0),   # softcap, hd 256
    (1, 90, 90, 4, 2, 12, False, (70, 3), 5.0),       # hd 12 (portable or scalar)
    (1, 67, 67, 2, 1, 8, True, (64, 0), 0.0),         # window 65: one key past a tile
    (1, 150, 97, 4, 2, 64, True, (-1, -1), 0.0),      # Lq > Lk causal: 53 rows see no key
    (2, 77, 77, 4, 4, 64, False, (5, 9), 3.0),        # two-sided narrow window + softcap
    (1, 130, 90, 6, 2, 48, False, (-1, 10), 0.0),     # only a right edge, GQA 3
    (1, 100, 200, 4, 1, 64, True, (10, 0), 0.0),      # Lq < Lk with a window inside a tile
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_tiles_against_reference(rng, isa, case):
    B, Lq, Lk, H, Hkv, hd, causal, ws, cap = case
    check(*make(rng, B, Lq, Lk, H, Hkv, hd), causal, ws, cap, f"{isa} {case}")


@pytest.mark.parametrize("nthreads", [1, 2, 3, 5])
@pytest.mark.parametrize("B,Hkv,ws", [(1, 1, (-1, -1)), (3, 1, (40, 0)), (1, 2, (-1, -1))])
def test_key_chunks(rng, nthreads, B, Hkv, ws):
    """Fewer (batch, kv head) pairs than threads: the key tiles are split into chunks whose dq
    terms go to buffers added at the end (and not split with one thread)."""
    old = threads.get_num_threads()
    threads.set_num_threads(nthreads)
    try:
        check(*make(rng, B, 260, 260, 2 * Hkv, Hkv, 32), True, ws, 0.0, f"{nthreads} threads")
    finally:
        threads.set_num_threads(old)


@pytest.mark.parametrize("window", [None, 20])
def test_nan_stays_in_its_rows(rng, isa, window):
    """A NaN key row reaches only the queries that see it, across tile boundaries: causal,
    queries before it stay finite; with a window of 20, so do the queries past its end and
    the keys whose queries never see it."""
    L, j = 150, 100
    q, k, v, do = make(rng, 1, L, L, 2, 1, 16)
    k[0, j, 0, 3] = np.nan
    ws = (-1 if window is None else window - 1, 0)
    out, lse = grad.attention_fwd(q, k, v, None, True, ws)
    dq, dk, dv = grad.attention_bwd(q, k, v, None, True, ws, dout=do, out=out, lse=lse)
    sees = np.zeros(L, bool)
    sees[j:] = True
    if window is not None:
        sees[j + window:] = False
    for name, x in (("out", out), ("dq", dq)):
        assert np.isnan(x[0, sees]).all() and np.isfinite(x[0, ~sees]).all(), f"{isa} {name}"
    if window is not None:
        # key i is seen by queries [i, i + 20); those never see key j when i + 19 < j
        clean = np.arange(L) < j - window + 1
        assert np.isfinite(dk[0, clean]).all() and np.isfinite(dv[0, clean]).all(), isa
        assert np.isnan(dk[0, j]).all() and np.isnan(dv[0, j]).all(), isa


@pytest.mark.parametrize("kernel", ["attention_fwd", "attention_bwd"])
def test_interrupt(rng, kernel):
    """Ctrl-C stops a long call from the kernel's own stop polls (between rounds of tiles);
    the kernels are correct afterwards. No clock: see tests/interrupt_util.py."""
    from interrupt_util import interrupt_inside
    from samba_ext import _core

    q = rng.standard_normal((1, 8000, 4, 64)).astype(np.float32)  # ~1 s each on 2 cores
    if kernel == "attention_fwd":
        interrupt_inside(_core.attention_fwd, q, q, q, 0.125, -1, -1, 0.0)
    else:  # out, lse only need the right shapes here
        lse = np.zeros((1, 4, 8000), np.float32)
        interrupt_inside(_core.attention_bwd, q, q, q, q, lse, q, 0.125, -1, 0, 0.0)
    check(*make(rng, 1, 70, 70, 2, 1, 16), True, (-1, -1), 0.0, "after an interrupt")
