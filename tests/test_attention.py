"""Tests of the CPU attention kernels (csrc/attention.c, csrc/attention_decode.c).

Every result is compared with the float64 references in ref_attention.py.

Tolerance: the kernels take float32 inputs and accumulate in float32: the q.k dot products
(hd <= 256 terms), the online-softmax sums and the P V sums over at most Lk keys, plus the
exp2 polynomial (relative error ~1e-7).  Rounding errors of n float32 terms grow like
sqrt(n) * 6e-8 for random data, i.e. ~1e-6 here (measured 1e-7 .. 5e-7), so RTOL = 1e-5
keeps a 20x margin while any indexing or masking mistake (errors of order 1) fails.
The reference sees the same float32-rounded inputs, so input rounding is not counted.

The reference-comparison tests also run on CUDA (NumPy inputs with device="cuda"), which
computes in float32 with float32 accumulation but a different summation order and exp2f,
so there every tolerance is max(CPU tolerance, 1e-5), the issue's float32 bound
(cuda_util.RTOL["float32"]).
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import RTOL as CUDA_RTOL
from ref_attention import ref_swa_attention, ref_swa_decode

import samba_ext
from samba_ext import _core

RTOL = 1e-5


def _tol(backend: str, cpu_rtol: float = RTOL) -> float:
    """The CPU tolerance, or at least the float32 bound on CUDA (see the module docstring)."""
    return cpu_rtol if backend == "cpu" else max(cpu_rtol, CUDA_RTOL["float32"])


def _qkv(rng: np.random.Generator, B: int, Lq: int, Lk: int, H: int, Hkv: int, hd: int,
         dtype=np.float32):
    q = rng.standard_normal((B, Lq, H, hd)).astype(dtype)
    k = rng.standard_normal((B, Lk, Hkv, hd)).astype(dtype)
    v = rng.standard_normal((B, Lk, Hkv, hd)).astype(dtype)
    return q, k, v


# (B, Lq, Lk, H, Hkv, hd, window, softmax_scale)
PREFILL_CASES = [
    pytest.param(1, 1, 1, 2, 1, 64, None, None, id="seqlen1"),
    pytest.param(1, 1, 1, 2, 2, 64, 1, None, id="seqlen1-window1"),
    pytest.param(1, 37, 37, 4, 4, 64, 8, None, id="odd-seqlen"),
    pytest.param(1, 20, 20, 2, 2, 64, 64, None, id="shorter-than-window"),
    pytest.param(1, 300, 300, 2, 1, 64, 100, None, id="longer-than-window"),
    pytest.param(2, 33, 33, 4, 2, 64, 1, None, id="window1"),
    pytest.param(1, 130, 130, 2, 2, 128, None, None, id="full-causal"),
    pytest.param(1, 90, 90, 2, 2, 64, 90, None, id="window-eq-seqlen"),
    pytest.param(1, 40, 200, 4, 4, 64, 70, None, id="past-keys"),
    pytest.param(1, 1, 150, 4, 2, 64, 100, None, id="past-keys-one-query"),
    pytest.param(1, 70, 260, 2, 1, 64, None, None, id="past-keys-full"),
    pytest.param(3, 50, 50, 4, 2, 96, 20, None, id="batch3"),
    pytest.param(1, 70, 70, 8, 1, 128, 40, None, id="gqa8:1"),
    pytest.param(2, 45, 60, 4, 2, 64, 30, None, id="gqa4:2"),
    pytest.param(1, 40, 40, 12, 1, 64, 16, None, id="gqa12:1-padded-tile"),
    pytest.param(1, 50, 50, 9, 3, 64, 7, None, id="gqa9:3"),
    pytest.param(1, 80, 80, 3, 3, 64, 33, None, id="mha-hd64"),
    pytest.param(1, 80, 80, 2, 2, 96, 33, None, id="hd96"),
    pytest.param(1, 80, 80, 2, 2, 128, 33, None, id="hd128"),
    pytest.param(1, 80, 80, 2, 1, 256, 33, None, id="hd256"),
    pytest.param(1, 70, 70, 2, 2, 64, 25, 0.3, id="scale0.3"),
    pytest.param(1, 70, 70, 2, 1, 32, None, 2.0, id="scale2"),
    # head dims that are not multiples of 16 take the portable C path
    pytest.param(1, 150, 150, 2, 2, 40, 70, None, id="portable-hd40"),
    pytest.param(2, 60, 90, 6, 2, 17, 25, None, id="portable-hd17-gqa"),
    pytest.param(1, 33, 33, 1, 1, 1, None, 0.5, id="portable-hd1"),
    pytest.param(1, 100, 100, 8, 1, 8, 1, None, id="portable-window1-gqa8"),
]


@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,window,scale", PREFILL_CASES)
def test_prefill_matches_reference(rng, backend, B, Lq, Lk, H, Hkv, hd, window, scale):
    q, k, v = _qkv(rng, B, Lq, Lk, H, Hkv, hd)
    out = samba_ext.swa_attention(q, k, v, window, scale, device=backend)
    assert out.dtype == np.float32 and out.shape == (B, Lq, H, hd)
    assert_close(out, ref_swa_attention(q, k, v, window, scale), _tol(backend))


@pytest.mark.parametrize("isa", ["avx2", "vec", "scalar"])
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,window", [
    (1, 150, 170, 4, 2, 64, 70), (2, 40, 40, 12, 1, 32, None), (1, 90, 90, 3, 3, 24, 1),
])
def test_lower_isa_paths(rng, monkeypatch, isa, B, Lq, Lk, H, Hkv, hd, window):
    """SAMBA_EXT_ISA caps the instruction set, so the AVX2, portable-vector and scalar
    tile kernels are tested on any machine (a cap above what the CPU has changes nothing)."""
    monkeypatch.setenv("SAMBA_EXT_ISA", isa)
    q, k, v = _qkv(rng, B, Lq, Lk, H, Hkv, hd)
    out = _core.swa_attention(q, k, v, window, None)
    assert_close(out, ref_swa_attention(q, k, v, window), RTOL)


def test_public_api_and_keywords(rng):
    q, k, v = _qkv(rng, 1, 50, 60, 4, 2, 64)
    ref = ref_swa_attention(q, k, v, 16, 0.2)
    assert_close(samba_ext.swa_attention(q, k, v, window=16, softmax_scale=0.2), ref, RTOL)
    assert_close(_core.swa_attention(q=q, k=k, v=v, window=16, softmax_scale=0.2), ref, RTOL)
    out = np.full((1, 50, 4, 64), np.nan, dtype=np.float32)
    samba_ext.swa_attention(q, k, v, window=16, softmax_scale=0.2, out=out)
    assert_close(out, ref, RTOL)


def test_window_larger_than_keys_is_full_causal(rng, backend):
    q, k, v = _qkv(rng, 1, 77, 77, 2, 2, 64)
    full = samba_ext.swa_attention(q, k, v, None, None, device=backend)
    big = samba_ext.swa_attention(q, k, v, 10**12, None, device=backend)
    np.testing.assert_array_equal(big, full)


def test_masked_keys_do_not_leak(rng, backend):
    """A NaN key/value outside every window of the later queries must not reach them."""
    L, W = 200, 50
    q, k, v = _qkv(rng, 1, L, L, 2, 1, 64)
    k[0, 10] = np.nan
    v[0, 10] = np.nan
    out = samba_ext.swa_attention(q, k, v, W, None, device=backend)
    # queries 10 .. 59 see key 10: NaN must propagate there (never silently dropped)
    assert np.all(np.isnan(out[0, 10:60]))
    # queries 0 .. 9 (before it, causal) and 60 .. (after the window) must not see it
    k0, v0 = k.copy(), v.copy()
    k0[0, 10] = 0.0
    v0[0, 10] = 0.0
    ref = ref_swa_attention(q, k0, v0, W)
    assert_close(out[0, :10], ref[0, :10], _tol(backend), "before the NaN key")
    assert_close(out[0, 60:], ref[0, 60:], _tol(backend), "after the window")


def test_nan_query_propagates(rng, backend):
    q, k, v = _qkv(rng, 1, 80, 80, 2, 2, 64)
    q[0, 70, 1, 5] = np.nan
    out = samba_ext.swa_attention(q, k, v, 20, None, device=backend)
    assert np.all(np.isnan(out[0, 70, 1]))
    assert np.all(np.isfinite(np.delete(out[0], 70, axis=0)))
    assert np.all(np.isfinite(out[0, 70, 0]))


def test_large_logits_are_stable(rng, backend):
    """Scores of +-1e3 (scale 30): the online max keeps exp finite."""
    q, k, v = _qkv(rng, 1, 150, 150, 2, 2, 64)
    out = samba_ext.swa_attention(q, k, v, 100, 30.0, device=backend)
    assert_close(out, ref_swa_attention(q, k, v, 100, 30.0), _tol(backend))


def test_dtypes_and_noncontiguous(rng, backend):
    q, k, v = _qkv(rng, 2, 45, 45, 4, 2, 64, dtype=np.float64)
    # q: a non-contiguous view (transposed storage); k: float64; v: float16
    q_nc = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not q_nc.flags.c_contiguous
    v16 = v.astype(np.float16)
    k_neg = k[:, ::-1][:, ::-1]  # negative strides, same values
    out = samba_ext.swa_attention(q_nc, k_neg, v16, 12, None, device=backend)
    ref = ref_swa_attention(q.astype(np.float32), k.astype(np.float32),
                            v16.astype(np.float32), 12)
    assert out.dtype == np.float32
    assert_close(out, ref, _tol(backend))
    # every other query of a longer array
    qs, ks, vs = _qkv(rng, 1, 80, 80, 2, 2, 64)
    out = samba_ext.swa_attention(qs[:, ::2], ks[:, ::2], vs[:, ::2], 10, None,
                                  device=backend)
    assert_close(out, ref_swa_attention(qs[:, ::2], ks[:, ::2], vs[:, ::2], 10),
                 _tol(backend))


@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd", [
    (0, 5, 5, 2, 1, 64), (2, 0, 0, 2, 1, 64), (2, 0, 7, 2, 1, 64), (1, 3, 3, 2, 2, 0),
])
def test_prefill_empty(backend, B, Lq, Lk, H, Hkv, hd):
    if backend == "cuda" and hd == 0:
        pytest.skip("headdim 0 is CPU-only: the CUDA kernels take headdim 1..256")
    q = np.zeros((B, Lq, H, hd), np.float32)
    k = np.zeros((B, Lk, Hkv, hd), np.float32)
    out = samba_ext.swa_attention(q, k, k, 4, None, device=backend)
    assert out.shape == (B, Lq, H, hd) and out.dtype == np.float32


# ------------------------------------------------------------------------------- decode


def _fill_ring(k_seq: np.ndarray, C: int, t: int) -> np.ndarray:
    """Cache after writing keys 0..t of k_seq (B, L, Hkv, hd) at slot index % C."""
    B, _, Hkv, hd = k_seq.shape
    cache = np.full((B, C, Hkv, hd), np.nan, dtype=np.float32)  # poison: never-written slots
    for i in range(t + 1):
        cache[:, i % C] = k_seq[:, i]
    return cache


@pytest.mark.parametrize("H,Hkv,hd,W", [(4, 2, 64, 16), (2, 2, 128, 9), (8, 1, 40, 12)])
def test_decode_ring_equals_prefill(rng, backend, H, Hkv, hd, W):
    """Step-by-step decode over a ring of capacity W equals windowed prefill attention."""
    B, L = 2, 3 * W + 5
    q, k, v = _qkv(rng, B, L, L, H, Hkv, hd)
    full = samba_ext.swa_attention(q, k, v, W, None, device=backend)
    steps = [0, 1, W - 2, W - 1, W, W + 1, 2 * W - 1, 2 * W + 3, L - 1]
    for t in steps:
        kc, vc = _fill_ring(k, W, t), _fill_ring(v, W, t)
        pos = np.full(B, t, dtype=np.int64)
        n_valid = np.full(B, min(t + 1, W), dtype=np.int64)
        out = samba_ext.swa_decode(q[:, t], kc, vc, pos, n_valid, None, device=backend)
        assert out.shape == (B, H, hd) and out.dtype == np.float32
        assert_close(out, full[:, t], _tol(backend), f"decode step {t}")


def test_decode_per_batch_positions_and_long_cache(rng, backend):
    """Different pos / n_valid per batch, a cache longer than one split-K chunk, GQA 4:1."""
    B, H, Hkv, hd, C = 3, 8, 2, 64, 700
    q = rng.standard_normal((B, H, hd)).astype(np.float32)
    kc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    vc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    pos = np.array([5, 1000, 699])
    n_valid = np.array([6, 700, 300])
    out = samba_ext.swa_decode(q, kc, vc, pos, n_valid, None, device=backend)
    assert_close(out, ref_swa_decode(q, kc, vc, pos, n_valid), _tol(backend))
    out = samba_ext.swa_decode(q, kc, vc, pos.astype(np.int32), n_valid.tolist(),
                               softmax_scale=0.7, device=backend)
    assert_close(out, ref_swa_decode(q, kc, vc, pos, n_valid, 0.7), _tol(backend))


def test_decode_ignores_invalid_slots(rng, backend):
    """Slots outside the n_valid newest ones may hold anything (here NaN)."""
    B, H, hd, C = 1, 2, 64, 10
    q = rng.standard_normal((B, H, hd)).astype(np.float32)
    kc = rng.standard_normal((B, C, 1, hd)).astype(np.float32)
    vc = rng.standard_normal((B, C, 1, hd)).astype(np.float32)
    pos, n_valid = np.array([12]), np.array([4])   # valid slots 9, 0, 1, 2
    ref = ref_swa_decode(q, kc, vc, pos, n_valid)
    for s in (3, 4, 5, 6, 7, 8):
        kc[0, s] = np.nan
        vc[0, s] = np.nan
    out = samba_ext.swa_decode(q, kc, vc, pos, n_valid, None, device=backend)
    assert_close(out, ref, _tol(backend))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("H,Hkv,hd", [(8, 1, 64), (12, 2, 48), (3, 1, 256), (16, 1, 16),
                                      (7, 7, 32), (2, 1, 96)])
def test_decode_head_blocks_and_tails(rng, monkeypatch, isa, H, Hkv, hd):
    """The CPU decode kernels: query heads per KV head above one register block (8, 16),
    head dims that leave a partial block of vectors (48, 96) or take several (256), chunks of
    keys that end inside a group of 16 and rings that wrap inside one."""
    monkeypatch.setenv("SAMBA_EXT_ISA", isa)
    B, C = 3, 300
    q = rng.standard_normal((B, H, hd)).astype(np.float32)
    kc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    vc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    pos = np.array([299, 310, 1000])          # wraps after 11 keys; after 101
    n_valid = np.array([300, 283, 17])
    out = samba_ext.swa_decode(q, kc, vc, pos, n_valid, None)
    assert_close(out, ref_swa_decode(q, kc, vc, pos, n_valid), RTOL)


@pytest.mark.parametrize("isa", ["avx512", "scalar"])
def test_decode_nan_stays_in_its_kv_head(rng, monkeypatch, isa):
    """A NaN in a valid key of KV head 1 makes that head's query heads NaN; a NaN in a value
    only the same dimension of their outputs."""
    monkeypatch.setenv("SAMBA_EXT_ISA", isa)
    B, C, H, Hkv, hd = 1, 64, 4, 2, 32
    q = rng.standard_normal((B, H, hd)).astype(np.float32)
    kc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    vc = rng.standard_normal((B, C, Hkv, hd)).astype(np.float32)
    pos, n_valid = np.array([63]), np.array([40])
    for cache in (kc, vc):
        c = cache.copy()
        c[0, 50, 1, 3] = np.nan
        args = (q, c, vc, pos, n_valid) if cache is kc else (q, kc, c, pos, n_valid)
        out = samba_ext.swa_decode(*args, None)
        want = np.zeros((H, hd), bool)
        if cache is kc:
            want[2:] = True
        else:
            want[2:, 3] = True
        np.testing.assert_array_equal(np.isnan(out[0]), want)


def test_decode_empty(backend):
    out = samba_ext.swa_decode(np.zeros((0, 4, 64), np.float32),
                               np.zeros((0, 8, 2, 64), np.float32),
                               np.zeros((0, 8, 2, 64), np.float32), np.zeros(0, np.int64),
                               np.zeros(0, np.int64), None, device=backend)
    assert out.shape == (0, 4, 64)


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).


# ------------------------------------------------------------------------- threads


def test_concurrent_calls_equal_serial(rng):
    inputs = [_qkv(rng, 1, 200 + 17 * i, 230 + 17 * i, 4, 2, 64) for i in range(4)]
    windows: list[Optional[int]] = [50, None, 7, 128]
    serial = [_core.swa_attention(q, k, v, w, None) for (q, k, v), w in zip(inputs, windows)]
    results: list = [None] * 4
    errors: list = []

    def work(i: int) -> None:
        try:
            q, k, v = inputs[i]
            for _ in range(3):
                r = _core.swa_attention(q, k, v, windows[i], None)
                if results[i] is not None and not np.array_equal(results[i], r):
                    raise AssertionError("repeated calls differ")
                results[i] = r
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        np.testing.assert_array_equal(results[i], serial[i])


def test_ctrl_c_interrupts_a_long_call(rng):
    """SIGINT during a long call raises KeyboardInterrupt from inside the kernel, which polls
    between rounds. The call is ~4.4 TFLOP of full causal attention; the handler must run in
    the kernel's own polls (tests/interrupt_util.py), so no clock is involved."""
    from interrupt_util import interrupt_inside

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    q = rng.standard_normal((1, 65536, 8, 64), dtype=np.float32)
    k = rng.standard_normal((1, 65536, 1, 64), dtype=np.float32)
    v = rng.standard_normal((1, 65536, 1, 64), dtype=np.float32)
    interrupt_inside(_core.swa_attention, q, k, v, None, None)
