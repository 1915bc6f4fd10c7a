"""Index math of the Hopper attention backward (csrc/cuda/attention_bwd_wgmma.cu) checked on the
host, without a GPU, against the documented wgmma layouts of tests/test_wgmma_layout.py (its
hardware side: descriptor decoding, the K-major / MN-major 128-byte-swizzle reads and the
accumulator / A fragment, reused from there):
  * every operand of the five products reads what the kernel wrote there: K, V, Q and dO from
    load_tile_sw, dS from the kernel's own store after movmatrix;
  * with two warpgroups each one multiplies the block's dS (both warpgroups' tiles, 128 keys) by
    its half of K's head dims, so that the block adds each dQ element once (the register
    positions the kernel assumes for S^T / dP^T, the P^T / dS^T A operands and the dQ / dK / dV
    stores are the formulas of prefill v4, checked in tests/test_wgmma_layout.py: kernel_s_pos,
    kernel_pa, kernel_o_pos);
  * the shared-memory layout: K, V, two Q / dO buffers, dS (two buffers where the dQ product is
    deferred: two warpgroups), lse / Delta, inside the block's allocation;
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
def desc_add(d: int, nbytes: int) -> int:
    """wgmma_ptx.cuh desc_add: the low 32-bit word moved by nbytes / 16, the high word kept."""
    return (d & 0xFFFFFFFF00000000) | ((d + (nbytes >> 4)) & 0xFFFFFFFF)


def desc_kmajor(s: int, rows: int, ks: int) -> int:
    """wgmma_tile.cuh desc_kmajor<ROWS>(s, ks)."""
    return desc_add(desc_sw128(s, 16, 1024), (ks >> 2) * rows * 128 + (ks & 3) * 32)


def desc_mnmajor(s: int, rows: int, kk: int) -> int:
    """wgmma_tile.cuh desc_mnmajor<ROWS>(s, kk)."""
    return desc_add(desc_sw128(s, rows * 128, 1024), kk * 16 * 128)


DS_BYTES = BM * 64 * 2  # one warpgroup's dS


def ds_buffers(D: int, nwg: int) -> int:
    """WBCfg::NDS: dS is double-buffered where the dQ product runs on into the next tile (DEFER:
    two warpgroups)."""
    return 2 if nwg == 2 else 1


def smem_bytes(D: int, nwg: int) -> int:
    """WBCfg::SMEM: 1024 bytes of alignment slack, K, V, Q [2], dO [2], dS [NDS][NWG], lse and
    Delta [2] each."""
    return 1024 + 2 * (64 * nwg * D * 2) + 4 * (BM * D * 2) + ds_buffers(D, nwg) * nwg * DS_BYTES \
        + 2 * 2 * BM * 4


def layout(D: int, nwg: int = 1, buf: int = 1) -> dict:
    """The kernel's shared offsets (sK .. sD); q_s / o_s are buffer 1 of Q and dO, sS is dS
    buffer `buf` (sSb; buffer 0 where there is one)."""
    kv, qo = 64 * nwg * D * 2, BM * D * 2
    sK = BASE
    sV = sK + kv
    sQ = sV + kv
    sO = sQ + 2 * qo
    sS = sO + 2 * qo
    sL = sS + ds_buffers(D, nwg) * nwg * DS_BYTES
    sSb = sS + (buf if ds_buffers(D, nwg) == 2 else 0) * nwg * DS_BYTES
    return {"sK": sK, "sV": sV, "q_s": sQ + qo, "o_s": sO + qo, "sS": sSb, "sS0": sS, "sL": sL,
            "sD": sL + 2 * BM * 4}


def warpgroup_bases(lay: dict, wg: int) -> dict:
    """sKw, sVw, sSw of warpgroup wg."""
    return {"sK": lay["sK"] + wg * 64 * 128, "sV": lay["sV"] + wg * 64 * 128,
            "sS": lay["sS"] + wg * DS_BYTES}


def kernel_ds_store(sSw: int, lane: int, warp: int, kk: int, i: int, half: int) -> int:
    """Byte address the kernel stores half `half` of movmatrix_trans(da[kk][i]) to."""
    g, tq = lane >> 2, lane & 3
    qrow = 16 * kk + 8 * (i >> 1) + g
    chunk = 2 * warp + (i & 1)
    return sSw + qrow * 128 + ((chunk ^ g) << 4) + 4 * tq + 2 * half


def kernel_dq_ksteps(nwg: int) -> int:
    """The k-steps of the kernel's dQ = dS K loop: one warpgroup over its 64 keys, two over the
    block's BN = 128 (both warpgroups' dS tiles)."""
    return 64 * nwg // 16


def kernel_dq_descs(lay: dict, D: int, nwg: int, wg: int, kk: int) -> tuple[int, int]:
    """(A, B) descriptors of k-step kk of warpgroup wg's dQ product: dS K-major from sSb (two
    warpgroups) or sSw (one), K MN-major from its rows (one warpgroup) or from dq_col_off, the
    warpgroup's half of the head dims (two)."""
    BN = 64 * nwg
    if nwg == 2:
        dq_col_off = (D // 2 * wg // 64) * BN * 128 + (D // 2 * wg % 64) * 2
        return desc_kmajor(lay["sS"], BM, kk), desc_mnmajor(lay["sK"] + dq_col_off, BN, kk)
    w = warpgroup_bases(lay, wg)
    return desc_kmajor(w["sS"], BM, kk), desc_mnmajor(w["sK"], BN, kk)


def kernel_dq_columns(D: int, nwg: int, wg: int) -> tuple[int, int]:
    """(N of the warpgroup's dQ product, first head dim it adds): jlo = wg * JH column tiles."""
    JH = D // 16 if nwg == 2 else D // 8
    return 8 * JH, 8 * wg * JH


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


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_shared_layout_fits_the_allocation(D, nwg):
    # every region lies after the previous one and inside SMEM (less the alignment slack); the
    # dS buffers do not overlap each other or lse / Delta
    lay0, lay1 = layout(D, nwg, 0), layout(D, nwg, 1)
    ds = ds_buffers(D, nwg) * nwg * DS_BYTES
    assert lay0["sS0"] + ds == lay0["sL"]
    assert lay0["sD"] + 2 * BM * 4 == BASE + smem_bytes(D, nwg) - 1024
    if ds_buffers(D, nwg) == 2:
        assert lay1["sS"] - lay0["sS"] == nwg * DS_BYTES
    else:
        assert lay1["sS"] == lay0["sS"]
    # the KB the kernel's comments give (alignment slack and lse / Delta included)
    assert smem_bytes(D, nwg) == 1024 * {(64, 1): 58, (128, 1): 106, (64, 2): 98,
                                         (128, 2): 162}[(D, nwg)]


@pytest.mark.parametrize("D,nwg", [(64, 1), (64, 2), (128, 2)])
def test_ds_store_is_what_the_dq_product_reads(D, nwg):
    # dS^T sits in the dP^T accumulator (keys x queries); da[kk][i] packs it as the A fragment
    # of dK += dS^T Q; movmatrix transposes each 8 x 8 block and the kernel stores the result
    # into the warpgroup's dS (of this tile's buffer). The dQ product then reads dS (queries x
    # keys) K-major at k-step kk2 = key // 16 (the block's keys with two warpgroups): every
    # element must come back from where the kernel put it, and tile t + 1's buffer must not
    # overlap tile t's, which a deferred dQ product may still read
    per_buf = []
    for buf in range(ds_buffers(D, nwg)):
        lay = layout(D, nwg, buf)
        stored = {}  # byte address -> (key of the block, query) of the dS^T value stored there
        for wg in range(nwg):
            sS = warpgroup_bases(lay, wg)["sS"]
            mine = {}
            for t in range(128):
                lane, warp = t % 32, t // 32
                for kk, i, half in itertools.product(range(4), range(4), range(2)):
                    src_lane, src_half = movmatrix_trans_source(lane, half)
                    src_t = warp * 32 + src_lane
                    key, query = frag(src_t, kernel_pa(kk, i, src_half))
                    addr = kernel_ds_store(sS, lane, warp, kk, i, half)
                    assert addr not in mine, "two values stored to one address"
                    mine[addr] = (64 * wg + key, query)
            assert set(mine) == set(range(sS, sS + DS_BYTES, 2))  # the whole tile, once
            assert not set(stored) & set(mine), "the warpgroups' dS overlap"
            stored |= mine
        assert set(stored) == set(range(lay["sS"], lay["sS"] + nwg * DS_BYTES, 2))
        for wg in range(nwg):
            for kk2 in range(kernel_dq_ksteps(nwg)):
                a_desc, _ = kernel_dq_descs(lay, D, nwg, wg, kk2)
                for m, k in itertools.product(range(BM), range(16)):
                    if nwg == 1:  # its own keys only
                        want = (16 * kk2 + k, m)
                        got = stored[read_kmajor(a_desc, m, k)]
                        assert got[0] - 64 * wg == want[0] and got[1] == m, (wg, kk2, m, k)
                    else:
                        assert stored[read_kmajor(a_desc, m, k)] == (16 * kk2 + k, m), \
                            (buf, wg, kk2, m, k)
        per_buf.append(set(stored))
    if len(per_buf) == 2:
        assert not per_buf[0] & per_buf[1]


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_dq_product_reads_its_keys_and_head_dims(D, nwg):
    # B of dQ = dS K: K's rows of the keys the A side covers (the warpgroup's 64, or the block's
    # 128 with two warpgroups), columns n of the product = head dim n0 + n of K, where n0 is the
    # first head dim the warpgroup adds
    lay, BN = layout(D, nwg), 64 * nwg
    for wg in range(nwg):
        N, n0 = kernel_dq_columns(D, nwg, wg)
        key0 = 0 if nwg == 2 else 64 * wg
        for kk in range(kernel_dq_ksteps(nwg)):
            _, b_desc = kernel_dq_descs(lay, D, nwg, wg, kk)
            for k, n in itertools.product(range(16), range(N)):
                assert read_mnmajor(b_desc, k, n) == \
                    write_addr(lay["sK"], BN, key0 + 16 * kk + k, n0 + n), (wg, kk, k, n)


@pytest.mark.parametrize("D,nwg", [(64, 1), (128, 1), (64, 2), (128, 2)])
def test_dq_adds_each_element_once(D, nwg):
    # each warpgroup adds dq[4 jj + 2 r + c], jj < JH, to column 8 (jlo + jj) + 2 tq + c of row
    # 16 warp + g + 8 r: that must be the element of its N-wide accumulator at (row, column - its
    # first head dim), and the warpgroups together must add every element of the 64 x D tile once
    # (one warpgroup: its own keys' part, summed over the block's warpgroups by the atomics)
    for wg in range(nwg):
        N, n0 = kernel_dq_columns(D, nwg, wg)
        added = []
        for t in range(128):
            lane, warp = t % 32, t // 32
            for jj, r, c in itertools.product(range(N // 8), range(2), range(2)):
                row, col = kernel_o_pos(lane, warp, n0 // 8 + jj, r, c)
                assert frag(t, 4 * jj + 2 * r + c) == (row, col - n0), (wg, t, jj, r, c)
                added.append((row, col))
        assert len(added) == len(set(added)) == BM * N
        if nwg == 1:
            assert set(added) == set(itertools.product(range(BM), range(D)))
        else:
            assert {c for _, c in added} == set(range(n0, n0 + N))
    if nwg == 2:
        assert sorted(kernel_dq_columns(D, nwg, wg)[1] for wg in range(2)) == [0, D // 2]


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
    accumulation (split by head dims with two warpgroups, a tile's sums added at the next tile
    where the product is deferred), mirrored with float64 products (no rounding): dict dq, dk,
    dv."""
    Bsz, Lq, H, hd = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G, off, BN = H // Hkv, Lk - Lq, 64 * nwg
    hpb = G // gsplit
    delta = np.einsum("blhd,blhd->bhl", do, out)          # preprocessing kernel
    lse2 = np.where(np.isneginf(lse), np.inf, lse * LOG2E)
    sl, cap_in, cap2 = scale * LOG2E, (scale / softcap if softcap else 0.0), softcap * LOG2E
    L = -1 if left < 0 else min(left, 1 << 30)
    R = -1 if right < 0 else min(right, 1 << 30)
    D = 64 if hd <= 64 else 128  # the template's head dim
    defer = ds_buffers(D, nwg) == 2
    dq_acc = np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)

    def add_dq(bz, part, m0, h):
        rows = min(64, Lq - m0)
        dq_acc[bz, m0:m0 + rows, h] += part[:rows]

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
        pending = None  # the deferred tile: (dq sums, m0, h)
        for it in range(n_mt * hpb):
            h = h_first + it // n_mt
            m0 = qlo + (it % n_mt) * 64
            qt, ot = pad(q[bz, m0:m0 + 64, h], 64), pad(do[bz, m0:m0 + 64, h], 64)
            lt, dt = pad(lse2[bz, h, m0:m0 + 64], 64), pad(delta[bz, h, m0:m0 + 64], 64)
            ds_blk = np.zeros((BN, 64))  # the block's dS^T (keys x queries)
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
                ds_blk[ks] = ds
            dq_part = np.zeros((64, hd))
            for wg in range(nwg):
                N, n0 = kernel_dq_columns(D, nwg, wg)
                cols = slice(n0, min(n0 + N, hd))  # head dims past hd are not added
                keys = slice(0, BN) if nwg == 2 else slice(64 * wg, 64 * wg + 64)
                dq_part[:, cols] += ds_blk[keys].T @ kt[keys, cols]
            if defer:
                if pending is not None:
                    add_dq(bz, *pending)
                pending = (dq_part, m0, h)
            else:
                add_dq(bz, dq_part, m0, h)
        if pending is not None:
            add_dq(bz, *pending)
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


@pytest.mark.parametrize("rows", [64, 128])
def test_moved_descriptors_are_those_of_the_moved_addresses(rows):
    # desc_kmajor / desc_mnmajor move the tile's descriptor by the step's offset instead of
    # encoding the step's address: the same 64 bits for every 16-byte aligned tile address whose
    # steps stay inside the 256 KB shared window (the 14-bit address field cannot carry)
    kmax, mmax = (rows // 64 - 1) * rows * 128 + 3 * 32 + 4 * rows * 128, 15 * 16 * 128
    for s in range(0, (1 << 18) - max(kmax, mmax), 16):
        for ks in range(16):
            assert desc_kmajor(s, rows, ks) == \
                desc_sw128(s + (ks >> 2) * rows * 128 + (ks & 3) * 32, 16, 1024)
        for kk in range(16):
            assert desc_mnmajor(s, rows, kk) == desc_sw128(s + kk * 16 * 128, rows * 128, 1024)


def test_mirrored_formulas_are_the_kernels():
    # the expressions mirrored above, as they stand in the kernel's source (whitespace aside):
    # a change there must come with the same change here
    import pathlib
    src = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda" /
           "attention_bwd_wgmma.cu").read_text()
    src = " ".join(src.split())
    for expr in (
        "static constexpr bool DEFER = NWG == 2;",
        "static constexpr int NDS = DEFER ? 2 : 1;",
        "1024 + 2 * KV_BYTES + 4 * QO_BYTES + NDS * NWG * DS_BYTES + LD_BYTES;",
        "static constexpr uint32_t DS_BYTES = BM * 64 * 2;",
        "sS + C::NDS * C::NWG * C::DS_BYTES",
        "sS + (DEFER ? buf : 0) * C::NWG * C::DS_BYTES;",
        "const uint32_t sSw = sSb + wg * C::DS_BYTES;",
        "(uint32_t)((C::D / 2 * wg / 64) * C::BN * 128 + (C::D / 2 * wg % 64) * 2);",
        "Wgmma<T, C::D / 2>::ss_t(dq, desc_kmajor<C::BM>(sSb, kk), "
        "desc_mnmajor<C::BN>(sK + dq_col_off, kk));",
        "Wgmma<T, C::D>::ss_t(dq, desc_kmajor<C::BM>(sSw, kk), desc_mnmajor<C::BN>(sKw, kk));",
        "for (int kk = 0; kk < C::BN / 16; ++kk)",
        "constexpr int JH = C::NWG == 2 ? C::D / 16 : C::D / 8;",
        "const int col = 8 * (jlo + jj) + 2 * tq;",
    ):
        assert expr in src, expr
