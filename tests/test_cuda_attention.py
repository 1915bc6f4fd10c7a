"""CUDA attention at real sizes: the tensor-core prefill (bfloat16 / float16) and the split-KV
decode, against float64 references computed from the same rounded inputs.

Tolerances (relative Frobenius norm, cuda_util.RTOL): float16 2e-3, bfloat16 1e-2. Besides
the final rounding of the output (norm error ~0.6 unit roundoff: 2.8e-4 for float16, 2.3e-3
for bfloat16), the tensor-core prefill rounds the softmax probabilities to the input dtype
before the P V product. That adds a relative error per term of at most one unit roundoff with
independent signs, so again ~0.6 u in norm: about 4e-4 (float16) and 3.3e-3 (bfloat16)
combined, which leaves a 3x (bfloat16) to 5x (float16) margin under RTOL. Scores and
accumulators are float32 (~1e-6). The split-KV decode runs on the tensor cores the same way
(probabilities rounded to the dtype), so the same bound applies.

Every tensor-core variant is tested: prefill v1 (attention_mma.cu), v2 and v3
(attention_mma_v2.cu), v4 (attention_wgmma.cu, Hopper wgmma: skipped, with the launcher's
reason, where the device or the build has no sm_90a code), decode v1 (attention_decode.cu) and
v2 (attention_decode_v2.cu), chosen
through the private selector samba_ext._cuda._attn_variant (what SAMBA_EXT_ATTN_PREFILL /
SAMBA_EXT_ATTN_DECODE set at start-up). They compute the same function with the same
roundings (probabilities rounded to the dtype before P V, float32 elsewhere) in a different
order, so the same tolerances apply.

Outputs are poisoned (NaN bytes) before each kernel runs, so an unwritten element fails the
finiteness check of assert_close. At sizes where the full float64 reference is too costly
(L up to 32K), every row is compared against the exact float32 CUDA path run on the same
values, and a random sample of rows (plus the first, the last and those around tile and
window edges) against float64. Skipped cleanly without a GPU / CUDA build.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from conftest import assert_close
from conftest import CUDA_SKIP
from cuda_util import RTOL, cuda, dev, host, rdev, round_to
from ref_attention import ref_swa_attention, ref_swa_decode

import samba_ext

HALF = ["bfloat16", "float16"]
PREFILL_VARIANTS = ["v1", "v2", "v3", "v4"]
DECODE_VARIANTS = ["v1", "v2"]
_V4_REASON: list[str | None] = []  # cached v4_unavailable()




@contextlib.contextmanager
def attn_variant(prefill: str | None = None, decode: str | None = None):
    """Runs the block with the given tensor-core variants ("v1", "v2", ...), then restores
    the previous settings."""
    from samba_ext.cuda import runtime

    cu = runtime.require()
    old = (cu._attn_variant(0, -1), cu._attn_variant(1, -1))
    try:
        if prefill:
            cu._attn_variant(0, int(prefill[1:]))
        if decode:
            cu._attn_variant(1, int(decode[1:]))
        yield
    finally:
        cu._attn_variant(0, old[0])
        cu._attn_variant(1, old[1])


def v4_unavailable() -> str | None:
    """None when prefill v4 (sm_90a wgmma) runs here, else the launcher's reason (a
    compute capability 9.0 GPU and a build with 90 in SAMBA_EXT_CUDA_ARCHS are needed): one
    tiny call, whose refusal is a ValueError naming v4."""
    if not _V4_REASON and os.environ.get("SAMBA_EXT_TEST_NO_V4") == "1":
        _V4_REASON.append("left out by SAMBA_EXT_TEST_NO_V4=1")
    if not _V4_REASON:
        q = rdev(np.zeros((1, 8, 1, 64)), "bfloat16")[1]
        try:
            with attn_variant(prefill="v4"):
                samba_ext.swa_attention(q, q, q, None)
            _V4_REASON.append(None)
        except ValueError as e:
            if "v4" not in str(e):
                raise
            _V4_REASON.append(str(e))
    return _V4_REASON[0]


def prefill_variants_here() -> list[str]:
    """PREFILL_VARIANTS less v4 where it cannot run."""
    return [v for v in PREFILL_VARIANTS if v != "v4" or v4_unavailable() is None]


@pytest.fixture(params=PREFILL_VARIANTS)
def prefill_variant(request):
    """Each prefill variant in turn (skipped without CUDA; v4 skipped off sm_90a)."""
    if CUDA_SKIP:
        pytest.skip(str(CUDA_SKIP))
    if request.param == "v4" and v4_unavailable():
        pytest.skip(f"prefill v4: {v4_unavailable()}")
    with attn_variant(prefill=request.param):
        yield request.param


@pytest.fixture(params=DECODE_VARIANTS)
def decode_variant(request):
    """Each decode variant in turn (skipped without CUDA)."""
    if CUDA_SKIP:
        pytest.skip(str(CUDA_SKIP))
    with attn_variant(decode=request.param):
        yield request.param


@cuda
def test_variant_selector():
    from samba_ext.cuda import runtime

    cu = runtime.require()
    with attn_variant():
        for which, values in ((0, (0, 1, 2, 3, 4)), (1, (0, 1, 2))):
            for v in values:
                assert cu._attn_variant(which, v) == v
                assert cu._attn_variant(which, -1) == v
        for which, v in ((0, 5), (1, 3), (2, 1), (0, -2)):
            with pytest.raises(ValueError, match="_attn_variant"):
                cu._attn_variant(which, v)


def ref_rows(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray,
             window: int | None, scale: float | None = None) -> np.ndarray:
    """float64 attention for the query rows `rows` only: q (Lq, H, hd), k, v (Lk, Hkv, hd)
    (batch 1) -> (len(rows), H, hd). Same definition as ref_swa_attention, one row at a time
    over its visible keys pos - window < j <= pos."""
    Lq, H, hd = q.shape
    Lk, Hkv = k.shape[0], k.shape[1]
    G = H // Hkv
    scale = 1.0 / np.sqrt(hd) if scale is None else scale
    out = np.zeros((len(rows), H, hd))
    for n, i in enumerate(rows):
        pos = int(i) + Lk - Lq
        lo = 0 if window is None else max(0, pos - window + 1)
        for kvh in range(Hkv):
            kk = k[lo:pos + 1, kvh]                       # (n_keys, hd)
            vv = v[lo:pos + 1, kvh]
            qq = q[i, kvh * G:(kvh + 1) * G]              # (G, hd)
            s = scale * (qq @ kk.T)                       # (G, n_keys)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[n, kvh * G:(kvh + 1) * G] = (p / p.sum(axis=1, keepdims=True)) @ vv
    return out


def test_ref_rows_matches_full_reference(rng):
    # the row-wise reference used at large sizes is the plain one
    q, k, v = (rng.standard_normal(s) for s in ((1, 50, 4, 16), (1, 70, 2, 16), (1, 70, 2, 16)))
    full = ref_swa_attention(q, k, v, 13)
    rows = np.array([0, 7, 31, 49])
    np.testing.assert_allclose(ref_rows(q[0], k[0], v[0], rows, 13), full[0, rows], rtol=1e-12,
                               atol=1e-12)


# ------------------------------------------------------------------ prefill, full reference --
PREFILL = [
    pytest.param(1, 200, 200, 4, 4, 64, 64, id="hd64-w64"),
    pytest.param(2, 300, 300, 8, 1, 128, 100, id="gqa8:1-hd128"),
    pytest.param(1, 257, 257, 4, 2, 96, None, id="hd96-full-odd"),
    pytest.param(1, 190, 190, 2, 1, 256, 50, id="hd256"),
    pytest.param(1, 129, 129, 3, 3, 256, None, id="hd256-full-odd"),
    pytest.param(1, 65, 65, 2, 1, 64, 1000, id="window-longer-than-L"),
    pytest.param(1, 1, 1, 2, 1, 64, None, id="one-token"),
    pytest.param(1, 77, 333, 4, 2, 128, 90, id="past-keys-odd"),
    pytest.param(1, 3, 300, 4, 4, 64, None, id="few-queries-many-keys"),
    pytest.param(2, 130, 130, 4, 2, 40, 33, id="hd40-padded"),
    pytest.param(1, 100, 100, 4, 4, 200, 17, id="hd200-padded"),
    pytest.param(1, 150, 150, 2, 2, 64, 2, id="window2"),
    # windows and lengths that cut 128-row blocks and 16-row warps at odd places
    pytest.param(1, 1000, 1000, 8, 2, 64, 130, id="hd64-w130-gqa4"),
    pytest.param(1, 513, 513, 4, 4, 128, None, id="hd128-full-513"),
    pytest.param(1, 300, 300, 4, 1, 96, 48, id="hd96-w48-gqa4"),
    pytest.param(2, 200, 700, 4, 2, 64, 333, id="past-keys-w333"),
]


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,window", PREFILL)
def test_prefill_tensor_cores(poison, rng, prefill_variant, dtype, B, Lq, Lk, H, Hkv, hd,
                              window):
    (q, dq), (k, dk), (v, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                 ((B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd)))
    out = samba_ext.swa_attention(dq, dk, dv, window)
    assert out.dtype == dtype and out.shape == (B, Lq, H, hd)
    assert_close(host(out), ref_swa_attention(q, k, v, window), RTOL[dtype])


V4_TILES = [
    pytest.param(1, 200, 200, 4, 4, 64, 64, id="hd64-w64"),
    pytest.param(2, 300, 300, 8, 1, 128, 100, id="gqa8:1-hd128"),
    pytest.param(1, 513, 513, 4, 4, 128, None, id="hd128-full-513"),
    pytest.param(1, 1000, 1000, 8, 2, 64, 130, id="hd64-w130-gqa4"),
    pytest.param(2, 200, 700, 4, 2, 64, 333, id="past-keys-w333"),
    pytest.param(1, 77, 333, 4, 2, 96, 90, id="past-keys-hd96-padded"),
]


@cuda
@pytest.mark.parametrize("bk,stages,skew,tma", [
    ("64", "2", "0", "0"), ("128", "2", "0", "0"), ("64", "3", "0", "0"), ("128", "3", "0", "0"),
    ("64", "4", "0", "0"), ("64", "3", "1", "0"), ("128", "3", "1", "0"), ("64", "4", "1", "0"),
    ("64", "3", "2", "0"), ("64", "4", "2", "0"), ("128", "3", "2", "0"), ("64", "3", "2", "1"),
    ("64", "4", "2", "1"), ("128", "3", "2", "1")])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,window", V4_TILES)
def test_prefill_v4_key_tiles(poison, rng, monkeypatch, bk, stages, skew, tma, dtype, B, Lq, Lk,
                              H, Hkv, hd, window):
    # prefill v4 with each key-tile size, ring depth and schedule that SAMBA_EXT_ATTN_V4_BK /
    # _STAGES / _SKEW (0 in step, 1 skewed, 2 alternating) select, the alternating one also
    # with tensor-memory loads (_TMA=1) (read on every call; the
    # default is 64 keys at head dim 64 and 128
    # above, alternating, 4 stages at head dim 64 and 3 above; 4 stages exist at head dim 64 with 64
    # keys only, elsewhere 4 runs 3)
    if CUDA_SKIP:
        pytest.skip(str(CUDA_SKIP))
    if v4_unavailable():
        pytest.skip(f"prefill v4: {v4_unavailable()}")
    monkeypatch.setenv("SAMBA_EXT_ATTN_V4_BK", bk)
    monkeypatch.setenv("SAMBA_EXT_ATTN_V4_STAGES", stages)
    monkeypatch.setenv("SAMBA_EXT_ATTN_V4_SKEW", skew)
    monkeypatch.setenv("SAMBA_EXT_ATTN_V4_TMA", tma)
    (q, dq), (k, dk), (v, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                 ((B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd)))
    with attn_variant(prefill="v4"):
        out = samba_ext.swa_attention(dq, dk, dv, window)
    assert_close(host(out), ref_swa_attention(q, k, v, window), RTOL[dtype])


@cuda
@pytest.mark.parametrize("dtype", HALF)
def test_prefill_scale_and_large_scores(poison, rng, prefill_variant, dtype):
    # a large softmax scale (peaked softmax, scores ~ +-40) and a negative one (v2 / v3 fold a
    # positive scale into the exponent; other scales take v1)
    B, L, H, Hkv, hd, W = 1, 150, 4, 2, 64, 70
    (q, dq), (k, dk), (v, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                 ((B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd)))
    for scale in (5.0, -0.3):
        out = samba_ext.swa_attention(dq, dk, dv, W, scale)
        assert_close(host(out), ref_swa_attention(q, k, v, W, scale), RTOL[dtype])


@cuda
def test_prefill_strided_heads_major(poison, rng, prefill_variant):
    # (B, H, L, hd) memory viewed as (B, L, H, hd): strides are multiples of 8 elements, so the
    # tensor-core path reads the views in place
    from cuda_util import transposed_view

    B, L, H, Hkv, hd, W = 2, 140, 4, 2, 64, 50
    q, k, v = (round_to(rng.standard_normal(s), "bfloat16") for s in
               ((B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd)))
    views = [transposed_view(a, "bfloat16", (0, 2, 1, 3)) for a in (q, k, v)]
    out = samba_ext.swa_attention(*views, window=W)
    assert_close(host(out), ref_swa_attention(q, k, v, W), RTOL["bfloat16"])


@cuda
@pytest.mark.parametrize("hd,W", [(64, 50), (128, None), (96, 70)])
def test_prefill_v4_tma_strided_views(poison, rng, monkeypatch, hd, W):
    # the tensor-memory loads (SAMBA_EXT_ATTN_V4_TMA=1) read (B, H, L, hd) memory viewed as
    # (B, L, H, hd) through their tensor maps' strides
    if CUDA_SKIP:
        pytest.skip(str(CUDA_SKIP))
    if v4_unavailable():
        pytest.skip(f"prefill v4: {v4_unavailable()}")
    from cuda_util import transposed_view

    monkeypatch.setenv("SAMBA_EXT_ATTN_V4_TMA", "1")
    B, L, H, Hkv = 2, 333, 4, 2
    q, k, v = (round_to(rng.standard_normal(s), "bfloat16") for s in
               ((B, L, H, hd), (B, L, Hkv, hd), (B, L, Hkv, hd)))
    views = [transposed_view(a, "bfloat16", (0, 2, 1, 3)) for a in (q, k, v)]
    with attn_variant(prefill="v4"):
        out = samba_ext.swa_attention(*views, window=W)
    assert_close(host(out), ref_swa_attention(q, k, v, W), RTOL["bfloat16"])


# ------------------------------------------------------------------ prefill, real sizes -----
def _edge_rows(rng, L: int, window: int | None, n_random: int) -> np.ndarray:
    rows = {0, 1, L - 1, L - 2}
    for t in (63, 64, 65, 127, 128, 129):           # query tile edges (64 / 128 rows)
        rows.update(x for x in (t, L // 2 + t) if x < L)
    if window is not None:
        rows.update(x for x in (window - 1, window, window + 1, window + 64) if x < L)
    rows.update(rng.integers(0, L, n_random).tolist())
    return np.array(sorted(rows))


LARGE = [
    pytest.param(32768, 32, 4, 64, 2048, id="L32K-w2048-32q4kv-hd64"),
    pytest.param(32768, 8, 1, 128, 4096, id="L32K-w4096-gqa8:1-hd128"),
    pytest.param(16384, 4, 4, 128, None, id="L16K-full-hd128"),
    pytest.param(8191, 4, 2, 256, 3000, id="L8191-w3000-hd256"),
    pytest.param(12345, 6, 2, 96, 20000, id="L12345-window-longer-hd96"),
]


@cuda
@pytest.mark.parametrize("L,H,Hkv,hd,window", LARGE)
def test_prefill_real_sizes(poison, rng, L, H, Hkv, hd, window):
    # every prefill variant against the same references (computed once)
    dtype = "bfloat16"
    q, k, v = (round_to(rng.standard_normal(s), dtype) for s in
               ((1, L, H, hd), (1, L, Hkv, hd), (1, L, Hkv, hd)))
    # every row against the exact float32 CUDA kernel on the same values (its error is ~1e-6,
    # so the bfloat16 tolerance applies unchanged)
    exact = host(samba_ext.swa_attention(dev(q), dev(k), dev(v), window))
    rows = _edge_rows(rng, L, window, 48)
    ref = ref_rows(q[0], k[0], v[0], rows, window)
    dq, dk, dv = dev(q, dtype), dev(k, dtype), dev(v, dtype)
    for variant in prefill_variants_here():
        with attn_variant(prefill=variant):
            out = host(samba_ext.swa_attention(dq, dk, dv, window))
        assert np.all(np.isfinite(out)), f"{variant}: unwritten or non-finite output"
        assert_close(out, exact, RTOL[dtype], f"{variant} vs float32 path")
        assert_close(out[0, rows], ref, RTOL[dtype], f"{variant} vs float64 rows")


# ------------------------------------------------------------------ decode ------------------
DECODE = [
    pytest.param(1, 32, 4, 64, 131072, [131072 + 500], [131072], id="b1-128K-full-wrapped"),
    pytest.param(1, 32, 4, 64, 4096, [4095], [4096], id="b1-4K"),
    pytest.param(16, 32, 4, 64, 4096, None, None, id="b16-4K-mixed-nvalid"),
    pytest.param(2, 12, 12, 128, 32768, [40000, 7], [32768, 8], id="b2-32K-hd128-mha"),
    pytest.param(3, 24, 2, 256, 5000, [4999, 12000, 3], [5000, 4321, 4], id="hd256-gqa12"),
    pytest.param(2, 6, 2, 96, 777, [776, 1000], [777, 1], id="hd96-gqa3-odd"),
    pytest.param(1, 2, 1, 64, 10, [3], [2], id="tiny"),
    pytest.param(2, 4, 2, 40, 300, [299, 5], [300, 6], id="hd40-padded"),
    pytest.param(1, 16, 1, 128, 2000, [1999], [1999], id="gqa16-two-head-groups"),
    # many rows: v2's blocks take several rows each, rows split over two or three blocks
    pytest.param(50, 8, 2, 64, 300, None, None, id="b50-rows-split-over-blocks"),
    pytest.param(300, 4, 2, 64, 100, None, None, id="b300-one-tile-rows"),
]


def decode_inputs(rng, dtype, B, H, Hkv, hd, C, pos, nvalid):
    """A DECODE case's positions (random ones, with 1 and C valid slots among them, where the
    case gives none) and its query and caches, each on the host and on the device."""
    if pos is None:
        pos = rng.integers(0, 3 * C, B)
        nvalid = rng.integers(1, C + 1, B)
        nvalid[0], nvalid[1] = 1, C
    pos, nvalid = np.array(pos), np.array(nvalid)
    (q, dq), (kc, dk), (vc, dv) = (rdev(rng.standard_normal(s), dtype) for s in
                                   ((B, H, hd), (B, C, Hkv, hd), (B, C, Hkv, hd)))
    return pos, nvalid, q, dq, kc, dk, vc, dv


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,H,Hkv,hd,C,pos,nvalid", DECODE)
def test_decode_split(poison, rng, decode_variant, dtype, B, H, Hkv, hd, C, pos, nvalid):
    pos, nvalid, q, dq, kc, dk, vc, dv = decode_inputs(rng, dtype, B, H, Hkv, hd, C, pos, nvalid)
    ref = ref_swa_decode(q, kc, vc, pos, nvalid)
    out = samba_ext.swa_decode(dq, dk, dv, pos, nvalid)
    assert out.dtype == dtype
    assert_close(host(out), ref, RTOL[dtype])
    from samba_ext import cuda as _gpu  # positions on the device (what a captured graph reads)

    out2 = samba_ext.swa_decode(dq, dk, dv, _gpu.to_device(pos, "int32"),
                                _gpu.to_device(nvalid, "int64"))
    assert_close(host(out2), ref, RTOL[dtype])


@cuda
@pytest.mark.parametrize("align", ["0", "1"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("B,H,Hkv,hd,C,pos,nvalid", DECODE)
def test_decode_v2_block_split(poison, rng, monkeypatch, align, dtype, B, H, Hkv, hd, C, pos,
                               nvalid):
    # decode v2 with each split of the key tiles over the blocks: SAMBA_EXT_ATTN_DECODE_ALIGN=1
    # (the default) a block count with no block crossing a row (or no row split), 0 the even
    # stream-K split; same results
    if CUDA_SKIP:
        pytest.skip(str(CUDA_SKIP))
    monkeypatch.setenv("SAMBA_EXT_ATTN_DECODE_ALIGN", align)
    pos, nvalid, q, dq, kc, dk, vc, dv = decode_inputs(rng, dtype, B, H, Hkv, hd, C, pos, nvalid)
    with attn_variant(decode="v2"):
        out = samba_ext.swa_decode(dq, dk, dv, pos, nvalid)
    assert_close(host(out), ref_swa_decode(q, kc, vc, pos, nvalid), RTOL[dtype])


@cuda
@pytest.mark.parametrize("dtype", HALF)
def test_decode_ignores_invalid_slots(poison, rng, decode_variant, dtype):
    # slots outside the valid range hold NaN (an unwritten cache): they must not be read
    B, H, Hkv, hd, C = 2, 8, 2, 64, 3000
    pos, nvalid = np.array([2100, 50]), np.array([1500, 40])
    kc = rng.standard_normal((B, C, Hkv, hd))
    vc = rng.standard_normal((B, C, Hkv, hd))
    for b in range(B):
        valid = {(int(pos[b]) - t) % C for t in range(int(nvalid[b]))}
        bad = np.array(sorted(set(range(C)) - valid))
        kc[b, bad] = np.nan
        vc[b, bad] = np.nan
    (q, dq), (kc, dk), (vc, dv) = (rdev(a, dtype) for a in
                                   (rng.standard_normal((B, H, hd)), kc, vc))
    out = samba_ext.swa_decode(dq, dk, dv, pos, nvalid)
    assert_close(host(out), ref_swa_decode(q, kc, vc, pos, nvalid), RTOL[dtype])


@cuda
def test_decode_matches_prefill_last_row(poison, rng, decode_variant):
    # bfloat16 at a real size: the decode of the last token equals the last prefill row
    dtype, L, H, Hkv, hd, W = "bfloat16", 9000, 32, 4, 64, 2048
    q, k, v = (round_to(rng.standard_normal(s), dtype) for s in
               ((1, L, H, hd), (1, L, Hkv, hd), (1, L, Hkv, hd)))
    pre = host(samba_ext.swa_attention(dev(q, dtype), dev(k, dtype), dev(v, dtype), W))
    kc, vc = np.zeros((1, W, Hkv, hd)), np.zeros((1, W, Hkv, hd))
    for t in range(L - W, L):
        kc[:, t % W], vc[:, t % W] = k[:, t], v[:, t]
    out = samba_ext.swa_decode(dev(q[:, -1], dtype), dev(kc, dtype), dev(vc, dtype),
                               np.array([L - 1]), np.array([W]))
    ref = ref_rows(q[0], k[0], v[0], np.array([L - 1]), W)
    assert_close(host(out), ref, RTOL[dtype])
    assert_close(host(out), pre[:, -1], 2 * RTOL[dtype], "decode vs prefill")


@cuda
@pytest.mark.parametrize("warm", [True, False], ids=["warm-stream", "fresh-stream"])
def test_decode_graph_replays(rng, decode_variant, warm):
    # A decode call captured into a CUDA graph and replayed with new positions written into
    # the same device arrays. warm: the stream ran the call before the capture, so v2 has its
    # workspace and the graph holds the one-launch kernel, whose arrival counters must be back
    # at zero for every replay. fresh: a larger call than the stream has seen, so under capture
    # v2 declines (no allocation while capturing) and the graph holds v1's two kernels.
    from samba_ext import cuda as _gpu
    from samba_ext.cuda import runtime

    cu = runtime.require()
    dtype = "bfloat16"
    B, H, Hkv, hd, C = (2, 16, 2, 64, 5000) if warm else (6, 16, 2, 128, 7000)
    st = cu.stream_create()
    try:
        (q, dq), (kc, dk), (vc, dv) = (
            (r, _gpu.to_device(r.astype(np.float32), dtype, stream=st)) for r in
            (round_to(rng.standard_normal(s), dtype) for s in
             ((B, H, hd), (B, C, Hkv, hd), (B, C, Hkv, hd))))
        pos0, nv0 = np.full(B, C + 17), np.full(B, C)
        dpos = _gpu.to_device(pos0.astype(np.int32), "int32", stream=st)
        dnv = _gpu.to_device(nv0, "int64", stream=st)
        out = _gpu.empty((B, H, hd), dtype, stream=st)
        if warm:
            samba_ext.swa_decode(dq, dk, dv, dpos, dnv, out=out, stream=st)
        cu.stream_sync(st)
        cu.graph_begin(st)
        try:
            samba_ext.swa_decode(dq, dk, dv, dpos, dnv, out=out, stream=st)
        finally:
            g = cu.graph_end(st)
        try:
            for step in range(3):
                pos = rng.integers(0, 3 * C, B)
                nv = rng.integers(1, C + 1, B)
                nv[0] = C if step == 0 else nv[0]
                cu.memcpy_h2d(dpos.ptr, pos.astype(np.int32).view(np.uint8), st)
                cu.memcpy_h2d(dnv.ptr, nv.astype(np.int64).view(np.uint8), st)
                cu.graph_launch(g, st)
                cu.stream_sync(st)
                assert_close(host(out), ref_swa_decode(q, kc, vc, pos, nv), RTOL[dtype],
                             f"replay {step}")
        finally:
            cu.graph_free(g)
        del dq, dk, dv, dpos, dnv, out
    finally:
        cu.stream_sync(st)
        cu.stream_destroy(st)
