// attention_bwd_wgmma.cu - attention backward for bfloat16 / float16 on Hopper's warpgroup matrix
// instructions (wgmma, sm_90a code only): the main kernel of the tensor-core backward
// (attention_bwd_mma.cu) with every product on wgmma; the default where it applies
// (SAMBA_EXT_ATTN_BWD_WGMMA, below).
//
// Same function, masks, softcap, GQA, scratch (attn_bwd_ws) and roundings as attention_bwd_mma.cu:
// P and dS are rounded to the input dtype before their products, dq is summed in the float32
// accumulator with atomics and scaled by the store kernel, dk (times the scale) and dv are
// written at the end (or added to their accumulators when the group is split over blocks).
//
// A warpgroup (4 warps, 128 threads) owns 64 keys of one kv head, warp w the keys 16 w .. 16 w + 15
// (the rows of every M = 64 product below); a block is two warpgroups (BN = 128 keys) or, with
// SAMBA_EXT_ATTN_BWD_WGMMA_WG=1, one (BN = 64). K and V of the block stay in shared memory; the
// block walks over the query tiles of BM = 64 rows that see one of its keys, for the query heads
// of its group (or 1 / split of them). Per tile and warpgroup:
//   S^T  = K Q^T,  dP^T = V dO^T   wgmma m64n64k16, SS: K, V, Q, dO all K-major (head dims = K)
//   P^T  = exp2(S^T scale log2e - lse log2e)   (softcap: cap tanh(s scale / cap) first)
//   dS^T = P^T (dP^T - Delta)      (x (1 - tanh^2) with softcap); masked pairs exactly 0
//   dV  += P^T dO, dK += dS^T Q     wgmma m64nDk16, RS: P^T / dS^T rounded to T in registers
//                                  (the accumulator fragment is the A fragment, as P in the
//                                  forward), dO / Q as the MN-major B operand (queries = K)
//   dS   -> shared memory           movmatrix transposes each 8 x 8 block of dS^T in registers,
//                                  so a lane stores 2 keys of one query (32-bit, no bank
//                                  conflicts): dS (queries x keys) K-major
//   dQ   = dS K                     wgmma SS with the MN-major B operand (K's rows are the keys
//                                  = K), added to the float32 accumulator with
//                                  red.global.add.v2.f32: one warpgroup m64nDk16 over its 64
//                                  keys; two warpgroups each m64n(D/2)k16 over the block's 128
//                                  keys (the two dS tiles side by side are one K-major tile) for
//                                  its half of the head dims, K's columns D/2 wg .. (at D = 64,
//                                  64 bytes into the swizzled rows), so that the block adds each
//                                  dQ element once without exchanging partial sums (3.7-5.4%
//                                  off the kernel's time on an H100 against an exchange through
//                                  shared memory, gpu_backward_attention.md); with two
//                                  warpgroups (DEFER) a tile's dQ product runs on across the
//                                  next tile's barrier, and its sums are added after it: at D = 64
//                                  during that tile's S / dP products, the atomics beside the
//                                  tensor cores (7-9% off the kernel's time on an H100, in two
//                                  steps), at D = 128 before them
// Q, dO, lse and Delta tiles are double-buffered with cp.async (tile t + 1 in flight while t is
// computed); two barriers per tile (the tile landed; dS stored). One-warpgroup blocks are
// small (58 KB of shared memory at D = 64, 106 KB at D = 128; 2 per multiprocessor) so that the
// products of one overlap the softmax of the other; two-warpgroup blocks halve the Q / dO loads
// and the dQ atomics per key instead.
//
// Configurations: D = 64 (head dims up to 64) and D = 128 (72..128, extra columns zero-filled);
// the deterministic mode, other head dims, dtypes and devices run attention_bwd_mma.cu.
// Shared layouts and descriptors: wgmma_tile.cuh.
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "attention_bwd_impl.cuh"
#include "prefill_common.cuh"
#include "wgmma_tile.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_prefill;
using namespace samba_wgmma;

template <int D_, int NWG_, int MINB_> struct WBCfg {
    static constexpr int D = D_;          // head dim of the template (>= the real hd)
    static constexpr int NWG = NWG_;      // warpgroups per block, 64 keys each
    static constexpr int MINB = MINB_;    // blocks per SM the registers must allow
    static constexpr int BN = 64 * NWG;   // keys per block
    static constexpr int BM = 64;         // queries per tile
    static constexpr int THREADS = 128 * NWG;
    static constexpr int KS = D / 16;     // k-steps of S^T and dP^T
    static constexpr int NQ = BM / 2;     // S^T / dP^T accumulator registers per thread
    static constexpr int ND = D / 2;      // dK / dV / dQ accumulator registers per thread
    static constexpr uint32_t KV_BYTES = BN * D * 2;   // K (or V)
    static constexpr uint32_t QO_BYTES = BM * D * 2;   // one buffer of Q (or dO)
    static constexpr uint32_t DS_BYTES = BM * 64 * 2;  // one warpgroup's dS
    static constexpr uint32_t LD_BYTES = 2 * 2 * BM * 4;  // lse and Delta, two buffers each
    // DEFER (two warpgroups): a tile's dQ product is left running across the next tile's first
    // barrier, so dS is double-buffered (one warpgroup stores tile t + 1's dS while the other's
    // product of tile t may still read both warpgroups' dS of tile t)
    static constexpr bool DEFER = NWG == 2;
    static constexpr int NDS = DEFER ? 2 : 1;          // dS buffers
    // ADD_DURING (D = 64): the deferred sums are added during the next tile's S / dP products;
    // at D = 128 the registers hold no second dQ beside the S / dP accumulators, so they are added
    // right after the wait, before those products. Either way the atomics are issued after the
    // barrier: issued before it, they were still in flight at the proxy fence ahead of it, whose
    // memory barrier waited for them (Nsight Compute: that fence took about 9% of the stall
    // samples at D = 128, the one before the dQ product under 1%)
    static constexpr bool ADD_DURING = DEFER && D == 64;
    // LOAD_LATE (two warpgroups): the next tile's Q / dO / lse / Delta copies are issued after
    // this tile's S / dP products, so that their address arithmetic runs beside the tensor
    // cores (one warpgroup at D = 128 would spill)
    static constexpr bool LOAD_LATE = NWG == 2;
    static constexpr size_t SMEM =
        1024 + 2 * KV_BYTES + 4 * QO_BYTES + NDS * NWG * DS_BYTES + LD_BYTES;
    static_assert(D == 64 || D == 128, "wgmma N of dK / dV / dQ is written out for 64 and 128");
    static_assert(NWG == 1 || NWG == 2, "one or two warpgroups");
};
// Registers (ptxas, sm_90a, nvcc 13.0), one / two warpgroups: 221 / 223 at D = 64, 255 with 64
// bytes of spills / 254 at D = 128, so 2 blocks of one warpgroup per SM either way (a cap of 168
// for 3 blocks at D = 64 spills: the scores, dP^T, dK and dV take 128 registers and the tile's
// lse / Delta loads come on top), or 1 block of two.
using WB64 = WBCfg<64, 1, 2>;     // 58 KB
using WB128 = WBCfg<128, 1, 2>;   // 106 KB
using WB64x2 = WBCfg<64, 2, 1>;   // 98 KB (dS double-buffered)
using WB128x2 = WBCfg<128, 2, 1>; // 162 KB (dS double-buffered)

template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS, C::MINB)
attn_bwd_wgmma_kernel(samba_cu_attn_ext_args p, attn_bwd_ws ws, int gsplit, int order) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // K, V, Q [2], dO [2], dS [NWG]: swizzled tiles (wgmma_tile.cuh), 1024-byte aligned; then
    // lse * log2 e [2][BM] and Delta [2][BM]
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t sK = (raw + 1023u) & ~1023u;
    unsigned char *const sm = smem_raw + (sK - raw);  // generic pointer to sK
    const uint32_t sV = sK + C::KV_BYTES;
    const uint32_t sQ = sV + C::KV_BYTES;
    const uint32_t sO = sQ + 2 * C::QO_BYTES;
    const uint32_t sS = sO + 2 * C::QO_BYTES;
    float *const sL = reinterpret_cast<float *>(sm + (sS + C::NDS * C::NWG * C::DS_BYTES - sK));
    float *const sD = sL + 2 * C::BM;

    const int64_t nkb = ((int64_t)p.seqlen_k + C::BN - 1) / C::BN;
    const AbBlock blk = ab_block_of(blockIdx.x, order, (int)(p.nheads_kv * gsplit), p.batch, nkb,
                                    p.window_left, p.window_right);
    const int hs = blk.y % gsplit;
    const int64_t hk = blk.y / gsplit;
    const int64_t b = blk.b;
    const int64_t H = p.nheads, G = H / p.nheads_kv, hpb = G / gsplit;
    const int64_t h_first = hk * G + hs * hpb;
    const int Lq = (int)p.seqlen_q, Lk = (int)p.seqlen_k, off = Lk - Lq;
    const int hd = (int)p.headdim;
    // warp-uniform as far as the compiler can tell (descriptors in uniform registers)
    const int wg = C::NWG == 1 ? 0 : __shfl_sync(0xffffffffu, (int)threadIdx.x >> 7, 0);
    const int warp = __shfl_sync(0xffffffffu, ((int)threadIdx.x >> 5) & 3, 0);  // in the warpgroup
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    // window sides in int32 (-1 = unbounded; sequences are shorter than 2^29, so key - query
    // position lies in (-2^30, 2^30) and a side clamped to 2^30 still reaches every position)
    const int left = p.window_left < 0 ? -1 : (int)(p.window_left < (1 << 30) ? p.window_left : (1 << 30));
    const int right = p.window_right < 0 ? -1 : (int)(p.window_right < (1 << 30) ? p.window_right : (1 << 30));

    const int k0 = (int)blk.kb * C::BN;
    const int kend = k0 + C::BN < Lk ? k0 + C::BN : Lk;  // exclusive
    const int kw0 = k0 + 64 * wg;                         // this warpgroup's first key
    const uint32_t sKw = sK + wg * 64 * 128, sVw = sV + wg * 64 * 128;  // its rows of K, V
    // two warpgroups: this one's dQ columns, head dims [D / 2 wg, D / 2 (wg + 1)) of K, in column
    // block D / 2 wg / 64 and 2 (D / 2 wg % 64) bytes into its rows
    const uint32_t dq_col_off =
        (uint32_t)((C::D / 2 * wg / 64) * C::BN * 128 + (C::D / 2 * wg % 64) * 2);
    // the queries that see a key of [k0, kend): [qlo, qhi] (int64 before the clamp)
    const int64_t qlo64 = right < 0 ? 0 : (int64_t)k0 - off - right;
    const int64_t qhi64 = left < 0 ? Lq - 1 : (int64_t)kend - 1 - off + left;
    const int qlo = (int)(qlo64 < 0 ? 0 : qlo64);
    const int qhi = (int)(qhi64 > Lq - 1 ? Lq - 1 : qhi64);
    const int n_mt = qhi >= qlo ? (qhi - qlo + C::BM) / C::BM : 0;
    const int n_it = n_mt * (int)hpb;

    const T *kg = (const T *)p.k.ptr + b * p.k_stride[0] + hk * p.k_stride[2];
    const T *vg = (const T *)p.v.ptr + b * p.v_stride[0] + hk * p.v_stride[2];
    // Q / dO / lse / Delta tile of iteration it into buffer buf
    auto load_q = [&](int it, int buf) {
        const int64_t h = h_first + it / n_mt;
        const int m0 = qlo + (it % n_mt) * C::BM;
        load_tile_sw<C::D, C::THREADS, C::BM>(
            sQ + buf * C::QO_BYTES, (const T *)p.q.ptr + b * p.q_stride[0] + h * p.q_stride[2],
            p.q_stride[1], m0, Lq, hd);
        load_tile_sw<C::D, C::THREADS, C::BM>(
            sO + buf * C::QO_BYTES, (const T *)p.dout.ptr + b * p.do_stride[0] + h * p.do_stride[2],
            p.do_stride[1], m0, Lq, hd);
        ab_load_lse_delta<C::BM, C::THREADS>(sL + buf * C::BM, sD + buf * C::BM, ws,
                                             (b * H + h) * Lq, m0, Lq);
    };

    load_tile_sw<C::D, C::THREADS, C::BN>(sK, kg, p.k_stride[1], k0, Lk, hd);
    load_tile_sw<C::D, C::THREADS, C::BN>(sV, vg, p.v_stride[1], k0, Lk, hd);
    if (n_it > 0) load_q(0, 0);
    cp_async_commit();

    const ab_exp ex = ab_exp_of(p);
    const bool capped = ex.capped;
    const float sl = ex.sl, cap_in = ex.cap_in, cap2 = ex.cap2;

    float dk[C::ND], dv[C::ND];
#pragma unroll
    for (int i = 0; i < C::ND; ++i) dk[i] = dv[i] = 0.0f;

    // dQ of a tile into the float32 accumulator: rows m0 + 16 warp + g (+ 8) of head h, column
    // tiles [jlo, jlo + JH) of 8 head dims (two warpgroups: warpgroup 0 the first half)
    constexpr int NDQ = C::NWG == 2 ? C::D / 4 : C::ND;
    constexpr int JH = C::NWG == 2 ? C::D / 16 : C::D / 8;
    const int jlo = wg * JH;
    // Each add is predicated on its own test (a row past Lq forms its pointer but adds nothing):
    // skipping a row's adds as a block made ptxas wrap them in divergent-branch bookkeeping
    // (BSSY / BSYNC, about 50 instructions a tile at head dim 128)
    auto add_dq = [&](const float (&v)[NDQ], int m0, int64_t h) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int q = m0 + warp * 16 + g + 8 * r;
            float *row = ws.dq_acc + (((int64_t)b * Lq + q) * H + h) * hd;
#pragma unroll
            for (int jj = 0; jj < JH; ++jj) {
                const int col = 8 * (jlo + jj) + 2 * tq;
                if (q < Lq && col < hd)
                    atomic_add2(row + col, v[4 * jj + 2 * r], v[4 * jj + 2 * r + 1]);
            }
        }
    };
    // the same without a branch (rows past Lq and columns past hd add zeros to the last valid
    // ones): the deferred sums of DEFER, at head dim 64 while wgmma runs, where a divergent path
    // would serialize the tensor cores, at 128 before the S / dP products (254 registers, no
    // spills; add_dq there made ptxas branch around each atomic: 1284 instead of 1054
    // instructions a tile, bwd_tile_sass.sh). add_dq stays for the one-warpgroup kernels and the
    // last tile: in place of its non-deferred calls at head dim 128 this one spilt 92 bytes.
    // The zeros: at head dim 128 a select (an inf outside the tile stays out), at 64 a product
    // with 0.0f, as before the select: the selects made that kernel 1% slower on an H100
    // (benchmarks/results/gpu_backward_attention.md, notes)
    auto add_dq_nb = [&](const float (&v)[NDQ], int m0, int64_t h) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int q = m0 + warp * 16 + g + 8 * r;
            float *row = ws.dq_acc + (((int64_t)b * Lq + min(q, Lq - 1)) * H + h) * hd;
#pragma unroll
            for (int jj = 0; jj < JH; ++jj) {
                const int col = 8 * (jlo + jj) + 2 * tq;
                const bool in = q < Lq && col < hd;
                float x0 = v[4 * jj + 2 * r], x1 = v[4 * jj + 2 * r + 1];
                if constexpr (C::D == 64) {
                    const float k = in ? 1.0f : 0.0f;
                    x0 *= k;
                    x1 *= k;
                } else {
                    x0 = in ? x0 : 0.0f;
                    x1 = in ? x1 : 0.0f;
                }
                atomic_add2(row + min(col, hd - 2), x0, x1);
            }
        }
    };
    // DEFER (WBCfg): dq, m_prev, h_prev are the tile whose dQ product is running (zeros before
    // the first tile, added once, harmlessly)
    constexpr bool DEFER = C::DEFER;
    float dq[NDQ];
#pragma unroll
    for (int i = 0; i < NDQ; ++i) dq[i] = 0.0f;
    int m_prev = qlo;
    int64_t h_prev = h_first;

    for (int it = 0; it < n_it; ++it) {
        const int buf = (int)(it & 1);
        cp_async_wait<0>();        // tile it (and K, V) landed for this thread's copies
        fence_proxy_async_smem();  // ... visible to wgmma
        __syncthreads();           // ... for every thread; tile it - 1's buffers and dS are free
        if constexpr (!C::LOAD_LATE) {
            if (it + 1 < n_it) load_q(it + 1, buf ^ 1);
            cp_async_commit();
        }

        float dq_prev[NDQ];
        if constexpr (DEFER) {
            // the previous tile's dQ product ran across the barrier. ADD_DURING: its sums are
            // copied by an asm mov (with a plain copy the compiler keeps dq_prev in the dq
            // wgmma's registers and waits for the S / dP wgmma below before the deferred adds);
            // otherwise they are added here
            wg_wait<0>();
            fence_operands(dq);
            if constexpr (C::ADD_DURING) {
#pragma unroll
                for (int i = 0; i < NDQ; ++i)
                    asm volatile("mov.b32 %0, %1;" : "=f"(dq_prev[i]) : "f"(dq[i]));
            } else {
                add_dq_nb(dq, m_prev, h_prev);
            }
        }
        const int64_t h = h_first + it / n_mt;
        const int m0 = qlo + (it % n_mt) * C::BM;
        const uint32_t q_s = sQ + buf * C::QO_BYTES, o_s = sO + buf * C::QO_BYTES;
        const float *l_s = sL + buf * C::BM, *d_s = sD + buf * C::BM;
        const uint32_t sSb = sS + (DEFER ? buf : 0) * C::NWG * C::DS_BYTES;  // this tile's dS
        const uint32_t sSw = sSb + wg * C::DS_BYTES;                          // its warpgroup's

        // ---- S^T = K Q^T, dP^T = V dO^T (keys x queries), one batch ----
        float s[C::NQ], dp[C::NQ];
#pragma unroll
        for (int i = 0; i < C::NQ; ++i) s[i] = dp[i] = 0.0f;
        fence_operands(s);
        fence_operands(dp);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < C::KS; ++ks)
            Wgmma<T, 64>::ss(s, desc_kmajor<C::BN>(sKw, ks), desc_kmajor<C::BM>(q_s, ks));
#pragma unroll
        for (int ks = 0; ks < C::KS; ++ks)
            Wgmma<T, 64>::ss(dp, desc_kmajor<C::BN>(sVw, ks), desc_kmajor<C::BM>(o_s, ks));
        wg_commit();
        if constexpr (C::LOAD_LATE) {  // the next tile's loads while S^T and dP^T are computed
            if (it + 1 < n_it) load_q(it + 1, buf ^ 1);
            cp_async_commit();
        }
        if constexpr (C::ADD_DURING) {  // the previous tile's dQ sums while S^T and dP^T run
            add_dq_nb(dq_prev, m_prev, h_prev);
        }
        wg_wait<0>();
        fence_operands(s);
        fence_operands(dp);

        // ---- P^T and dS^T (in place of s and dp); element 4 j + e: key 16 warp + g + 8 (e / 2),
        //      query 8 j + 2 tq + (e % 2) of the tile. softmax_grad<CAP, MASK> is straight-line
        //      code: the softcap test and the tile's mask test are taken once per tile, not per
        //      element ----
        const bool full = kw0 + 64 <= Lk && m0 + C::BM <= Lq &&
                          (right < 0 || kw0 + 63 - m0 - off <= right) &&
                          (left < 0 || kw0 - (m0 + C::BM - 1) - off >= -left);
        const int rel0 = kw0 + warp * 16 + g - m0 - off;  // key - query position
        auto softmax_grad = [&](auto cap_c, auto mask_c) {
            constexpr bool CAP = decltype(cap_c)::value, MASK = decltype(mask_c)::value;
#pragma unroll
            for (int j = 0; j < C::BM / 8; ++j) {
                const float2 l2 = *reinterpret_cast<const float2 *>(l_s + 8 * j + 2 * tq);
                const float2 dl = *reinterpret_cast<const float2 *>(d_s + 8 * j + 2 * tq);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[4 * j + e], t = 0.0f;
                    if (CAP) {
                        t = tanhf(x * cap_in);
                        x = cap2 * t;
                    } else {
                        x *= sl;
                    }
                    float pr = fast_exp2(x - ((e & 1) ? l2.y : l2.x));
                    float ds = pr * (dp[4 * j + e] - ((e & 1) ? dl.y : dl.x));
                    if (CAP) ds *= 1.0f - t * t;
                    if (MASK) {  // masked pairs exactly 0 (a NaN there stays out)
                        const int qc = 8 * j + 2 * tq + (e & 1);      // query in the tile
                        const int kr = warp * 16 + g + (e >> 1) * 8;  // key in the warpgroup's 64
                        const int rel = rel0 + (e >> 1) * 8 - qc;
                        const bool out = kw0 + kr >= Lk || m0 + qc >= Lq ||
                                         (right >= 0 && rel > right) || (left >= 0 && rel < -left);
                        pr = out ? 0.0f : pr;
                        ds = out ? 0.0f : ds;
                    }
                    s[4 * j + e] = pr;
                    dp[4 * j + e] = ds;
                }
            }
        };
        if (capped) {
            if (full)
                softmax_grad(std::true_type{}, std::false_type{});
            else
                softmax_grad(std::true_type{}, std::true_type{});
        } else {
            if (full)
                softmax_grad(std::false_type{}, std::false_type{});
            else
                softmax_grad(std::false_type{}, std::true_type{});
        }

        // ---- dV += P^T dO, dK += dS^T Q (keys x head dims), one batch, left running ----
        uint32_t pa[C::BM / 16][4], da[C::BM / 16][4];
#pragma unroll
        for (int kk = 0; kk < C::BM / 16; ++kk) {
            pack_p<T>(pa[kk], reinterpret_cast<const float(&)[4]>(s[8 * kk]),
                      reinterpret_cast<const float(&)[4]>(s[8 * kk + 4]));
            pack_p<T>(da[kk], reinterpret_cast<const float(&)[4]>(dp[8 * kk]),
                      reinterpret_cast<const float(&)[4]>(dp[8 * kk + 4]));
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                fence_operand(pa[kk][i]);
                fence_operand(da[kk][i]);
            }
        }
        fence_operands(dv);
        fence_operands(dk);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < C::BM / 16; ++kk)
            Wgmma<T, C::D>::rs_t(dv, pa[kk], desc_mnmajor<C::BM>(o_s, kk));
#pragma unroll
        for (int kk = 0; kk < C::BM / 16; ++kk)
            Wgmma<T, C::D>::rs_t(dk, da[kk], desc_mnmajor<C::BM>(q_s, kk));
        wg_commit();

        // ---- dS into shared memory (queries x keys, K-major) while those run: da[kk][i] is the
        //      8 x 8 block of keys 16 warp + 8 (i % 2) .., queries 16 kk + 8 (i / 2) ..; after
        //      movmatrix the lane holds query 16 kk + 8 (i / 2) + g, keys .. + 2 tq, + 1 ----
#pragma unroll
        for (int kk = 0; kk < C::BM / 16; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int qrow = 16 * kk + 8 * (i >> 1) + g;  // qrow % 8 == g
                const int chunk = 2 * warp + (i & 1);         // 16-byte chunk of 8 keys
                const uint32_t at = (uint32_t)(qrow * 128 + ((chunk ^ g) << 4) + 4 * tq);
                *reinterpret_cast<uint32_t *>(sm + (sSw - sK) + at) = movmatrix_trans(da[kk][i]);
            }
        wg_wait<0>();  // dV, dK: P^T and dS^T leave the registers before dQ's accumulators come
        fence_operands(dv);
        fence_operands(dk);
        fence_proxy_async_smem();
        __syncthreads();  // every warp's dS stored (two warpgroups: both tiles are read below)

        // ---- dQ = dS K (queries x head dims) into the float32 accumulator: one warpgroup over
        //      its 64 keys (4 k-steps), all head dims; two over the block's 128 keys (8 k-steps:
        //      dS of warpgroup 0, then 1) for head dims [D / 2 wg, D / 2 (wg + 1)) ----
#pragma unroll
        for (int i = 0; i < NDQ; ++i) dq[i] = 0.0f;
        fence_operands(dq);
        wg_fence();
        if constexpr (C::NWG == 2) {
#pragma unroll
            for (int kk = 0; kk < C::BN / 16; ++kk)
                Wgmma<T, C::D / 2>::ss_t(dq, desc_kmajor<C::BM>(sSb, kk),
                                         desc_mnmajor<C::BN>(sK + dq_col_off, kk));
        } else {
#pragma unroll
            for (int kk = 0; kk < 64 / 16; ++kk)
                Wgmma<T, C::D>::ss_t(dq, desc_kmajor<C::BM>(sSw, kk), desc_mnmajor<C::BN>(sKw, kk));
        }
        wg_commit();
        if constexpr (DEFER) {  // left running: waited for after the next tile's barrier
            m_prev = m0;
            h_prev = h;
        } else {
            wg_wait<0>();
            fence_operands(dq);
            add_dq(dq, m0, h);
        }
    }
    if constexpr (DEFER) {
        wg_wait<0>();
        fence_operands(dq);
        if (n_it > 0) add_dq(dq, m_prev, h_prev);
    }
    cp_async_wait<0>();

    // ---- dK (times scale), dV: keys 16 warp + g (+8), head dims 8 j + 2 tq (+1) ----
    const bool split = ws.dk_acc != nullptr;
    if (split && n_it == 0) return;  // the accumulators are zero already
    const int64_t Hkv = p.nheads_kv;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = kw0 + warp * 16 + g + 8 * r;
        if (key >= Lk) continue;
        const int64_t rb = ((b * Lk + key) * Hkv + hk) * hd;
#pragma unroll
        for (int j = 0; j < C::D / 8; ++j) {
            const int col = 8 * j + 2 * tq;
            if (col >= hd) continue;
            ab_store_dkdv2(p, ws, split, rb + col, dk[4 * j + 2 * r] * p.softmax_scale,
                           dk[4 * j + 2 * r + 1] * p.softmax_scale, dv[4 * j + 2 * r],
                           dv[4 * j + 2 * r + 1]);
        }
    }
}

template <typename T, class C>
samba_status launch(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                    cudaStream_t st) {
    const int64_t nkb = cdiv(a->seqlen_k, C::BN);
    const int64_t ny = a->nheads_kv * split;
    // one linear grid in the order ab_pick_order takes for this shape (ab_block_of)
    if (nkb * ny * a->batch > 0x7fffffffLL)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "attention_bwd: too many key blocks or heads");
    cudaError_t e = cudaFuncSetAttribute(attn_bwd_wgmma_kernel<T, C>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess) return samba_cu_fail("attention_bwd (shared memory opt-in)", e);
    const int order = ab_pick_order(a, C::BN, C::BM, ny, a->nheads / a->nheads_kv / split,
                                    (int64_t)samba_sm_count() * C::MINB);
    attn_bwd_wgmma_kernel<T, C><<<(unsigned)(nkb * ny * a->batch), C::THREADS, C::SMEM, st>>>(
        *a, *ws, split, order);
    return samba_cu_check_launch("attention_bwd (wgmma)", st);
}

}  // namespace

// SAMBA_EXT_ATTN_BWD_WGMMA_WG: warpgroups per block, "1" (64 keys; two independent blocks per
// SM) or anything else (and unset) 2 (128 keys; the Q / dO tiles loaded once for both, and
// each dQ element added once by the block: half the traffic of both, and 10-19% faster on an
// H100, benchmarks/results/gpu_backward_attention.md)
static int wgmma_nwg(void) {
    const char *e = getenv("SAMBA_EXT_ATTN_BWD_WGMMA_WG");
    return e && e[0] == '1' && e[1] == '\0' ? 1 : 2;
}

int attn_bwd_wgmma_bn(void) { return 64 * wgmma_nwg(); }

int attn_bwd_wgmma_setting(void) {
    const char *e = getenv("SAMBA_EXT_ATTN_BWD_WGMMA");
    if (e == NULL) return 1;
    if (!strcmp(e, "require")) return 2;
    return e[0] == '0' && e[1] == '\0' ? 0 : 1;
}

int attn_bwd_wgmma_applicable(const samba_cu_attn_ext_args *a) {
#if !defined(SAMBA_WGMMA_SM90A)
    (void)a;
    return 0;  // this build has no sm_90a code for the kernel
#else
    if (a->deterministic || a->alibi_slopes != NULL || a->headdim > 128 ||
        !attn_bwd_mma_applicable(a))
        return 0;
    if (a->seqlen_q >= ((int64_t)1 << 29) || a->seqlen_k >= ((int64_t)1 << 29)) return 0;
    // a block's iteration count (query tiles x query heads) is an int
    if ((a->seqlen_q / 64 + 1) * (a->nheads / a->nheads_kv) >= ((int64_t)1 << 31)) return 0;
    const bool two = wgmma_nwg() == 2;
    const size_t smem = a->headdim <= 64 ? (two ? WB64x2::SMEM : WB64::SMEM)
                                         : (two ? WB128x2::SMEM : WB128::SMEM);
    return attn_wgmma_device_ok() && smem <= attn_smem_optin();
#endif
}

samba_status attn_bwd_wgmma(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                            cudaStream_t st) {
    const bool bf = a->q.dtype == SAMBA_CU_BF16, two = wgmma_nwg() == 2;
    if (a->headdim <= 64) {
        if (two) return bf ? launch<__nv_bfloat16, WB64x2>(a, ws, split, st) : launch<__half, WB64x2>(a, ws, split, st);
        return bf ? launch<__nv_bfloat16, WB64>(a, ws, split, st) : launch<__half, WB64>(a, ws, split, st);
    }
    if (two) return bf ? launch<__nv_bfloat16, WB128x2>(a, ws, split, st) : launch<__half, WB128x2>(a, ws, split, st);
    return bf ? launch<__nv_bfloat16, WB128>(a, ws, split, st) : launch<__half, WB128>(a, ws, split, st);
}
