"""Index math of the Hopper attention backward (csrc/cuda/attention_bwd_wgmma.cu) checked on the
host, without a GPU, against the documented wgmma layouts of tests/test_wgmma_layout.py (its
hardware side: descriptor decoding, the K-major / MN-major 128-byte-swizzle reads and the
accumulator / A fragment, reused from there):
  * every operand of the five products reads what the kernel wrote there: K, V, Q and dO from
    load_tile_sw, dS from the kernel's own store after movmatrix;
  * the dQ exchange of two warpgroups adds each element once (the register positions the kernel
    assumes for S^T / dP^T, the P^T / dS^T A operands and the dQ / dK / dV stores are the
    formulas of prefill v4, checked in tests/test_wgmma_layout.py: kernel_s_pos, kernel_pa,
    kernel_o_pos);
  * movmatrix.trans is modelled from the PTX ISA ("movmatrix": lane l holds row l / 4, columns
    2 (l % 4), + 1 of an 8 x 8 matrix of 16-bit values, and afterwards those positions of its
    transpose).
The kernel's formulas are mirrored here line by line (keep them in step with the .cu file and
wgmma_tile.cuh). Every index check is exact, so there is no tolerance. Last, the kernel's control
flow (blocks, tiles, masks, head loop, group split, dQ sums) is mirrored with float64 products and
compared with the float64 reference (tests/ref_grad.py) to 1e-9: the two differ only in the
order of float64 sums.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_wgmma_layout import (desc_sw128, frag, kernel_o_pos, kernel_pa, read_kmajor, read_mnmajor,
                               write_addr)

BM = 64  # queries per tile; a block has 64 keys per warpgroup (NWG = 1 or 2)
BASE = 1024 * 5  # any 1024-aligned shared address (the kernel rounds sK up to 1024)


# ---------------------------------------------------------------- the kernel, mirrored -------
def desc_kmajor(s: int, rows: int, ks: int) -> int:
    """wgmma_tile.cuh desc_kmajor<ROWS>(s, ks)."""
    return desc_sw128(s + (ks >> 2) * rows * 128 + (ks & 3) * 32, 16, 1024)


def desc_mnmajor(s: int, rows: int, kk: int) -> int:
    """wgmma_tile.cuh desc_mnmajor<ROWS>(s, kk)."""
    return desc_sw128(s + kk * 16 * 128, rows * 128, 1024)


def layout(D: int, nwg: int = 1) -> dict:
    """The kernel's shared offsets (sK .. sS), buffer 1 of Q and dO."""
    kv, qo = 64 * nwg * D * 2, BM * D * 2
    sK = BASE
    sV = sK + kv
    sQ = sV + kv
    sO = sQ + 2 * qo
    sS = sO + 2 * qo
    return {"sK": sK, "sV": sV, "q_s": sQ + qo, "o_s": sO + qo, "sS": sS}


def warpgroup_bases(lay: dict, wg: int) -> dict:
    """sKw, sVw, sSw of warpgroup wg."""
    return {"sK": lay["sK"] + wg * 64 * 128, "sV": lay["sV"] + wg * 64 * 128,
            "sS": lay["sS"] + wg * BM * 64 * 2}


def kernel_ds_store(sSw: int, lane: int, warp: int, kk: int, i: int, half: int) -> int:
    """Byte address the kernel stores half `half` of movmatrix_trans(da[kk][i]) to."""
    g, tq = lane >> 2, lane & 3
    qrow = 16 * kk + 8 * (i >> 1) + g
    chunk = 2 * warp + (i & 1)
    return sSw + qrow * 128 + ((chunk ^ g) << 4) + 4 * tq + 2 * half


def kernel_dq_ksteps() -> int:
    """The k-steps of the kernel's dQ = dS K loop: kk < 64 / 16, the warpgroup's own keys (not
    the block's BN)."""
    return 64 // 16


def kernel_xc_index(D: int, wg: int, i: int, tid: int) -> int:
    """Float index into the dQ exchange that thread tid of warpgroup wg writes x[i * 128] to."""
    return wg * (D // 4) * 128 + tid + i * 128


def kernel_dq_kept(D: int, nwg: int, wg: int, i: int) -> list[tuple[int, int]]:
    """(warpgroup, accumulator index) of the dq values summed into dq[i] (i < D / 4 with two
    warpgroups) by the exchange: the own value and what the other warpgroup sent."""
    if nwg == 1:
        return [(0, i)]
    own = (wg, D // 4 + i if wg else i)
    sent = (1 - wg, i if 1 - wg else D // 4 + i)  # the other one's x[i]: wg ? dq[i] : dq[D/4+i]
    return [own, sent]


# ---------------------------------------------------------------- the hardware ---------------
def movmatrix_trans_source(lane: int, half: int) -> tuple[int, int]:
    """(source lane, source half) of half `half` of lane's result of movmatrix.trans."""
    g, tq = lane >> 2, lane & 3
    row, col = 2 * tq + half, g  # the lane holds (g, 2 tq + half) of the transpose
    return 4 * row + col // 2, col % 2


# ---------------------------------------------------------------- checks ---------------------
@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_score_products_read_k_v_q_do_as_loaded(D, nwg):
    # S^T = K Q^T and dP^T = V dO^T: A = the warpgroup's 64 rows of K / V (keys x head dims), B =
    # Q / dO (queries x head dims), both K-major
    lay, BN = layout(D, nwg), 64 * nwg
    for wg, ks in itertools.product(range(nwg), range(D // 16)):
        w = warpgroup_bases(lay, wg)
        for m, k in itertools.product(range(64), range(16)):
            for a in ("sK", "sV"):
                assert read_kmajor(desc_kmajor(w[a], BN, ks), m, k) == \
                    write_addr(lay[a], BN, 64 * wg + m, ks * 16 + k), (a, wg, ks, m, k)
        for n, k in itertools.product(range(BM), range(16)):
            for b in ("q_s", "o_s"):
                assert read_kmajor(desc_kmajor(lay[b], BM, ks), n, k) == \
                    write_addr(lay[b], BM, n, ks * 16 + k), (b, ks, n, k)


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_gradient_products_read_q_do_k_as_loaded(D, nwg):
    # dV += P^T dO, dK += dS^T Q: B = dO / Q MN-major (queries = K); dQ = dS K: B = the
    # warpgroup's rows of K, MN-major (keys = K); N = D in all three
    lay, BN = layout(D, nwg), 64 * nwg
    for kk in range(4):
        for k, n in itertools.product(range(16), range(D)):
            for b in ("q_s", "o_s"):
                assert read_mnmajor(desc_mnmajor(lay[b], BM, kk), k, n) == \
                    write_addr(lay[b], BM, kk * 16 + k, n), (b, kk, k, n)
            for wg in range(nwg):
                w = warpgroup_bases(lay, wg)
                assert read_mnmajor(desc_mnmajor(w["sK"], BN, kk), k, n) == \
                    write_addr(lay["sK"], BN, 64 * wg + kk * 16 + k, n), (wg, kk, k, n)


@pytest.mark.parametrize("nwg", [1, 2])
def test_ds_store_is_what_the_dq_product_reads(nwg):
    # dS^T sits in the dP^T accumulator (keys x queries); da[kk][i] packs it as the A fragment
    # of dK += dS^T Q; movmatrix transposes each 8 x 8 block and the kernel stores the result
    # into the warpgroup's dS. The dQ product then reads dS (queries x keys) K-major at k-step
    # kk2 = key // 16: every element must come back from where the kernel put it
    lay = layout(64, nwg)
    every = set()
    for wg in range(nwg):
        sS = warpgroup_bases(lay, wg)["sS"]
        stored = {}  # byte address -> (key, query) of the dS^T value stored there
        for t in range(128):
            lane, warp = t % 32, t // 32
            for kk, i, half in itertools.product(range(4), range(4), range(2)):
                src_lane, src_half = movmatrix_trans_source(lane, half)
                src_t = warp * 32 + src_lane
                key, query = frag(src_t, kernel_pa(kk, i, src_half))
                addr = kernel_ds_store(sS, lane, warp, kk, i, half)
                assert addr not in stored, "two values stored to one address"
                stored[addr] = (key, query)
        assert set(stored) == set(range(sS, sS + BM * 64 * 2, 2))  # the whole tile, once
        assert not every & set(stored), "the warpgroups' dS overlap"
        every |= set(stored)
        for kk2 in range(4):
            for m, k in itertools.product(range(BM), range(16)):
                addr = read_kmajor(desc_kmajor(sS, BM, kk2), m, k)
                assert stored[addr] == (16 * kk2 + k, m), (wg, kk2, m, k)
    assert every == set(range(lay["sS"], lay["sS"] + nwg * BM * 64 * 2, 2))  # inside dS [NWG]


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_dq_exchange_sums_both_warpgroups_once(D, nwg):
    # after the exchange each warpgroup adds dq[4 jj + 2 r + c], jj < JH, to column
    # 8 (jlo + jj) + 2 tq + c: that must be the sum of the element (row, column) of every
    # warpgroup's accumulator, and every column of the tile must be added by one warpgroup
    JH = D // 16 if nwg == 2 else D // 8
    for t in range(128):
        lane, warp = t % 32, t // 32
        added = []
        for wg in range(nwg):
            jlo = wg * JH
            for jj, r, c in itertools.product(range(JH), range(2), range(2)):
                row, col = kernel_o_pos(lane, warp, jlo + jj, r, c)
                parts = kernel_dq_kept(D, nwg, wg, 4 * jj + 2 * r + c)
                assert sorted(w for w, _ in parts) == list(range(nwg))
                for _, idx in parts:
                    assert frag(t, idx) == (row, col), (wg, jj, r, c, idx)
                added.append((row, col))
        assert sorted(added) == sorted(frag(t, v) for v in range(D // 2))


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_dq_product_reads_only_its_warpgroups_ds_and_keys(D, nwg):
    # dQ = dS K runs over the warpgroup's 64 keys: its k-steps cover them exactly, the A reads
    # stay inside the warpgroup's dS (queries x its 64 keys) and the B reads are K rows of its
    # own keys (with two warpgroups a loop over the block's 128 keys would read the other one's
    # dS, and K rows past the tile)
    lay, BN = layout(D, nwg), 64 * nwg
    assert kernel_dq_ksteps() * 16 == 64
    for wg in range(nwg):
        w = warpgroup_bases(lay, wg)
        own_ds = range(w["sS"], w["sS"] + BM * 64 * 2)
        for kk in range(kernel_dq_ksteps()):
            for m, k in itertools.product(range(BM), range(16)):
                assert read_kmajor(desc_kmajor(w["sS"], BM, kk), m, k) in own_ds, (wg, kk, m, k)
            for k, n in itertools.product(range(16), range(D)):
                key = 16 * kk + k
                assert key < 64
                assert read_mnmajor(desc_mnmajor(w["sK"], BN, kk), k, n) == \
                    write_addr(lay["sK"], BN, 64 * wg + key, n), (wg, kk, k, n)


@pytest.mark.parametrize("D", [64, 128])
def test_dq_exchange_slots(D):
    # every (warpgroup, thread, value) has its own float of the exchange (2 x D / 4 x 128
    # floats), the other warpgroup's thread tid reads it back at the same index, and a warp's 32
    # lanes write 32 consecutive floats (no bank conflicts)
    slots = {kernel_xc_index(D, wg, i, tid) for wg in range(2) for i in range(D // 4)
             for tid in range(128)}
    assert slots == set(range(2 * (D // 4) * 128))
    for wg, i, warp in itertools.product(range(2), range(D // 4), range(4)):
        idx = [kernel_xc_index(D, wg, i, 32 * warp + lane) for lane in range(32)]
        assert idx == list(range(idx[0], idx[0] + 32))


def test_ds_stores_are_free_of_bank_conflicts():
    # one 32-bit store per lane per (kk, i): the 32 lanes of a warp hit 32 different banks
    for warp, kk, i in itertools.product(range(4), range(4), range(4)):
        banks = {(kernel_ds_store(BASE, lane, warp, kk, i, 0) // 4) % 32 for lane in range(32)}
        assert len(banks) == 32


def test_movmatrix_model_is_a_transpose():
    # the model above: applying it twice gives every value back where it started
    for lane, half in itertools.product(range(32), range(2)):
        src = movmatrix_trans_source(*movmatrix_trans_source(lane, half))
        assert src == (lane, half)


# ---------------------------------------------------------------- the kernel's control flow --
def emulate_bwd(q, k, v, do, out, lse, scale, left, right, softcap, nwg, gsplit):
    """attention_bwd_wgmma.cu's blocks, key / query tiles, masks, head loop, group split and dQ
    accumulation, mirrored with float64 products (no rounding): dict dq, dk, dv."""
    Bsz, Lq, H, hd = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G, off, BN = H // Hkv, Lk - Lq, 64 * nwg
    hpb = G // gsplit
    delta = np.einsum("blhd,blhd->bhl", do, out)          # preprocessing kernel
    lse2 = np.where(np.isneginf(lse), np.inf, lse * LOG2E)
    sl, cap_in, cap2 = scale * LOG2E, (scale / softcap if softcap else 0.0), softcap * LOG2E
    L = -1 if left < 0 else min(left, 1 << 30)
    R = -1 if right < 0 else min(right, 1 << 30)
    dq_acc = np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for bz, by, bx in itertools.product(range(Bsz), range(Hkv * gsplit), range(-(-Lk // BN))):
        hs, hk = by % gsplit, by // gsplit
        h_first = hk * G + hs * hpb
        k0 = bx * BN
        kend = min(k0 + BN, Lk)
        qlo = max(0, 0 if R < 0 else k0 - off - R)
        qhi = min(Lq - 1, Lq - 1 if L < 0 else kend - 1 - off + L)
        n_mt = (qhi - qlo + 64) // 64 if qhi >= qlo else 0
        pad = lambda x, n: np.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
        kt = pad(k[bz, k0:kend, hk], BN)
        vt = pad(v[bz, k0:kend, hk], BN)
        dkw, dvw = np.zeros((BN, hd)), np.zeros((BN, hd))
        for it in range(n_mt * hpb):
            h = h_first + it // n_mt
            m0 = qlo + (it % n_mt) * 64
            qt, ot = pad(q[bz, m0:m0 + 64, h], 64), pad(do[bz, m0:m0 + 64, h], 64)
            lt, dt = pad(lse2[bz, h, m0:m0 + 64], 64), pad(delta[bz, h, m0:m0 + 64], 64)
            dq_part = np.zeros((64, hd))
            for wg in range(nwg):
                kw0 = k0 + 64 * wg
                ks = slice(64 * wg, 64 * wg + 64)
                st, dpt = kt[ks] @ qt.T, vt[ks] @ ot.T               # keys x queries
                if softcap:
                    t = np.tanh(st * cap_in)
                    x = cap2 * t
                else:
                    x = st * sl
                pr = np.exp2(x - lt[None, :])
                ds = pr * (dpt - dt[None, :])
                if softcap:
                    ds *= 1.0 - t * t
                full = kw0 + 64 <= Lk and m0 + 64 <= Lq and \
                    (R < 0 or kw0 + 63 - m0 - off <= R) and (L < 0 or kw0 - (m0 + 63) - off >= -L)
                if not full:
                    rel0 = kw0 - m0 - off
                    kr, qc = np.arange(64)[:, None], np.arange(64)[None, :]
                    rel = rel0 + kr - qc
                    outm = (kw0 + kr >= Lk) | (m0 + qc >= Lq) | ((R >= 0) & (rel > R)) | \
                        ((L >= 0) & (rel < -L))
                    pr, ds = np.where(outm, 0.0, pr), np.where(outm, 0.0, ds)
                dvw[ks] += pr @ ot
                dkw[ks] += ds @ qt
                dq_part += ds.T @ kt[ks]           # each warpgroup's part, summed (exchange)
            rows = min(64, Lq - m0)
            dq_acc[bz, m0:m0 + rows, h] += dq_part[:rows]
        rows = kend - k0
        dk[bz, k0:kend, hk] += scale * dkw[:rows]
        dv[bz, k0:kend, hk] += dvw[:rows]
    return {"dq": scale * dq_acc, "dk": dk, "dv": dv}


LOG2E = 1.4426950408889634


@pytest.mark.parametrize("nwg,gsplit", [(1, 1), (2, 1), (1, 2), (2, 4)])
@pytest.mark.parametrize("B,Lq,Lk,H,Hkv,hd,left,right,cap", [
    (1, 37, 37, 4, 4, 64, -1, 0, 0.0),          # odd length, causal
    (2, 150, 150, 8, 2, 64, 63, 0, 0.0),        # window shorter than L, GQA 4
    (1, 77, 200, 4, 2, 64, 90, 0, 0.0),         # Lq < Lk (bottom-right aligned)
    (1, 120, 80, 4, 2, 64, -1, -1, 0.0),        # Lq > Lk, not causal
    (1, 100, 130, 4, 2, 64, 20, 35, 0.0),       # two-sided window
    (1, 131, 131, 4, 1, 64, 50, 0, 30.0),       # softcap
    (1, 70, 50, 2, 1, 64, 0, 0, 0.0),           # queries without keys
    (1, 300, 300, 8, 1, 32, 127, 0, 0.0),       # several key blocks per window
    (1, 100, 162, 2, 1, 64, -1, 0, 0.0),        # a tile whose corner pair is one past the causal
    (1, 100, 132, 2, 1, 64, 30, -1, 0.0),       # edge / one before the window (tests `full`)
])
def test_kernel_control_flow_matches_the_reference(rng, nwg, gsplit, B, Lq, Lk, H, Hkv, hd,
                                                   left, right, cap):
    # every visible (query, key) pair of every head is visited once, masked pairs contribute 0,
    # and the group split / warpgroup exchange add each part once: the mirrored control flow with
    # exact products equals the float64 reference to rounding
    from ref_grad import attention_bwd_ref, attention_fwd_ref

    if (H // Hkv) % gsplit:
        pytest.skip("the split must divide the group")
    q, k, v, do = (rng.standard_normal(s) for s in
                   ((B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd), (B, Lq, H, hd)))
    scale = 1.0 / np.sqrt(hd)
    out, lse = attention_fwd_ref(q, k, v, scale, left, right, cap)
    got = emulate_bwd(q, k, v, do, out, lse, scale, left, right, cap, nwg, gsplit)
    ref = attention_bwd_ref(q, k, v, do, scale, left, right, cap)
    for name in ("dq", "dk", "dv"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-9, err_msg=name)
