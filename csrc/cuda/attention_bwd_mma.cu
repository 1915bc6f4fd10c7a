// attention_bwd_mma.cu - attention backward for bfloat16 / float16 on the tensor cores,
// FlashAttention-2 style (the probabilities are recomputed from the forward's log-sum-exp).
//
// One block owns BN = 16 * NW keys of one kv head (warp w owns keys w*16 .. w*16+15) and
// keeps their K and V rows in shared memory. It walks over the query tiles of BM rows that see
// any of its keys (only tiles inside the window), for the query heads of its group (all of
// them, or 1/split of them when the group is split over blocks for parallelism). Per tile:
//   S^T  = K_w Q^T,  dP^T = V_w dO^T     mma.sync m16n8k16 (16 keys x BM queries per warp),
//                                        K/V fragments (A) and Q/dO fragments (B) by ldmatrix
//   P^T  = exp2(S^T scale log2e - lse log2e)   (softcap: cap tanh(s scale / cap) first;
//                                        ALiBi: minus slope |i - j| log2e)
//   dS^T = P^T (dP^T - Delta)  (x (1 - tanh^2) with softcap); masked pairs exactly 0
//   dV_w += P^T dO,  dK_w += dS^T Q      P^T / dS^T stay in registers as the A operand
//                                        (rounded to the input dtype), dO / Q via ldmatrix.trans
//   dQ   += dS K                         dS^T goes through shared memory (dtype), the warps
//                                        split the BM x D product and add it to a float32
//                                        accumulator with atomics (red.global.add.v2.f32 on sm_90)
// Q, dO, lse and Delta tiles are double-buffered with cp.async (tile t+1 in flight while t is
// computed); two barriers per tile. dK (times scale) and dV are written once at the end, or
// added to float32 accumulators with atomics when the group is split. Masks are evaluated only
// on tiles that cross a window edge or the end of the keys / queries.
//
// Deterministic mode (samba_cu_attn_ext_args.deterministic): the group is never split, and the
// grid has S blocks along the keys instead of one per key tile; block x walks the key tiles
// x, x + S, ... (one pass of the above each) and adds dS K into its own float32 copy (slice) x
// of the dq accumulator, with the same atomics, but each dq element then gets exactly one
// addition per pass and the passes are ordered by a barrier, so every slice sums in a fixed
// order; attn_bwd_store_kernel adds the slices in slice order. The mode is a template flag
// (DET): the default instantiation has no loop (one key tile per block) and compiles to the
// same SASS as before the mode existed (nvcc 13.0, sm_90).
//
// Head dims: templates for D = 64, 96 and 128 (a multiple of 8 runs in the next larger one with
// zero-filled columns); D = 256 keeps its dK/dV accumulators for half of the head dims per block
// (two blocks per key tile, each recomputing S and dP), so they fit in registers.
// Registers / spills (nvcc 13.0, sm_90, -Xptxas -v): see docs/backward.md.
#include "attention_bwd_impl.cuh"
#include "mma_ptx.cuh"

#include <stdlib.h>

namespace {
using namespace samba_ptx;

template <int D_, int NW_, int BM_, int DO_> struct BCfg {
    static constexpr int D = D_;             // head dim of the template (>= the real hd)
    static constexpr int NW = NW_;           // warps
    static constexpr int BN = 16 * NW;       // keys per block
    static constexpr int BM = BM_;           // queries per tile
    static constexpr int DO = DO_;           // dK / dV / dQ columns per block (D or D / 2)
    static constexpr int NDS = D / DO;       // blocks per key tile along the head dim
    static constexpr int THREADS = 32 * NW;
    static constexpr int LD = D + 8;         // padded smem row of K, V, Q, dO (elements)
    static constexpr int LDS = BM + 8;       // padded smem row of dS^T
    static constexpr int KS = D / 16;        // k-steps of S^T and dP^T
    static constexpr int NQT = BM / 8;       // 8-query column tiles of S^T
    static constexpr int NDT = DO / 8;       // 8-dim column tiles of dK / dV
    static constexpr size_t SMEM =
        (size_t)(2 * BN * LD + 4 * BM * LD + BN * LDS) * 2 + (size_t)4 * BM * sizeof(float);
    static_assert(NQT % 2 == 0 && NDT % 2 == 0 && DO % 16 == 0 && D % DO == 0, "tile shape");
};

// rows [r0, r0 + ROWS) of a (rows, hd) matrix with row stride rs into a padded shared tile;
// rows >= rlimit and columns >= hd zero-filled.
template <class C, int ROWS, typename T>
__device__ __forceinline__ void load_rows(T *s, const T *g, int64_t rs, int64_t r0, int64_t rlimit,
                                          int hd) {
    constexpr int CH = C::D / 8;
    constexpr int ITERS = (ROWS * CH + C::THREADS - 1) / C::THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int i = it * C::THREADS + threadIdx.x;
        if (i >= ROWS * CH) break;
        const int r = i / CH, c = i % CH;
        const bool ok = r0 + r < rlimit && c * 8 < hd;
        cp_async16(s + r * C::LD + c * 8, ok ? g + (r0 + r) * rs + c * 8 : g, ok);
    }
}

// DET: the deterministic mode (grid.x = ws.dq_slices, a loop over key tiles, dq into slice
// blockIdx.x); else one key tile per block (a linear grid, ab_block_of) and one shared dq
// accumulator
template <typename T, class C, bool DET>
__global__ void __launch_bounds__(C::THREADS)
attn_bwd_mma_kernel(samba_cu_attn_ext_args p, attn_bwd_ws ws, int gsplit, int order) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *sK = reinterpret_cast<T *>(smem_raw);  // [BN][LD]
    T *sV = sK + C::BN * C::LD;               // [BN][LD]
    T *sQ = sV + C::BN * C::LD;               // [2][BM][LD]
    T *sO = sQ + 2 * C::BM * C::LD;           // [2][BM][LD] dO
    T *sS = sO + 2 * C::BM * C::LD;           // [BN][LDS]   dS^T
    float *sL = reinterpret_cast<float *>(sS + C::BN * C::LDS);  // [2][BM] lse * log2 e
    float *sD = sL + 2 * C::BM;                                  // [2][BM] Delta

    // DET: (slice, head part, batch) from the grid's three axes; else one linear index in the
    // launch's order (ab_block_of)
    const int64_t nkb = (p.seqlen_k + C::BN - 1) / C::BN;
    const AbBlock blk =
        DET ? AbBlock{(int64_t)blockIdx.x, (int64_t)blockIdx.z, (int)blockIdx.y}
            : ab_block_of(blockIdx.x, order, (int)(p.nheads_kv * gsplit * C::NDS), p.batch, nkb,
                          p.window_left, p.window_right);
    int yb = blk.y;
    const int dsi = yb % C::NDS;
    yb /= C::NDS;
    const int hs = yb % gsplit;
    const int64_t hk = yb / gsplit;
    const int64_t b = blk.b;
    const int64_t H = p.nheads, G = H / p.nheads_kv, hpb = G / gsplit;
    const int64_t h_first = hk * G + hs * hpb;
    const int64_t Lq = p.seqlen_q, Lk = p.seqlen_k, off = Lk - Lq;
    const int hd = (int)p.headdim;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int dcol0 = dsi * C::DO;
    const int64_t left = p.window_left, right = p.window_right;

    // Key tiles: the block's one key tile (blk.kb), or in the
    // deterministic mode (grid.x = S slices <= the number of key tiles) kb = blockIdx.x, + S,
    // + 2S, ... in increasing order. Within a pass each dq element of the slice gets one
    // addition, from one thread; passes are separated by the barrier below, so a slice sums
    // its key tiles in a fixed order.
    for (int64_t kb = blk.kb; !DET || kb < nkb; kb += (int64_t)gridDim.x) {
        // the previous pass's dQ jobs have finished reading sK and sS (its cp.async were drained)
        if (DET) __syncthreads();
        const int64_t k0 = kb * C::BN;
        const int64_t kend = k0 + C::BN < Lk ? k0 + C::BN : Lk;  // exclusive

        // the queries that see a key of [k0, kend): [qlo, qhi]
        int64_t qlo = right < 0 ? 0 : k0 - off - right;
        int64_t qhi = left < 0 ? Lq - 1 : kend - 1 - off + left;
        qlo = qlo < 0 ? 0 : qlo;
        qhi = qhi > Lq - 1 ? Lq - 1 : qhi;
        const int64_t n_mt = qhi >= qlo ? (qhi - qlo + C::BM) / C::BM : 0;
        const int64_t n_it = n_mt * hpb;

        const T *kg = (const T *)p.k.ptr + b * p.k_stride[0] + hk * p.k_stride[2];
        const T *vg = (const T *)p.v.ptr + b * p.v_stride[0] + hk * p.v_stride[2];

        // Q / dO / lse / Delta tile of iteration it into buffer buf
        auto load_q = [&](int64_t it, int buf) {
            const int64_t h = h_first + it / n_mt;
            const int64_t m0 = qlo + (it % n_mt) * C::BM;
            load_rows<C, C::BM>(sQ + buf * C::BM * C::LD,
                                (const T *)p.q.ptr + b * p.q_stride[0] + h * p.q_stride[2],
                                p.q_stride[1], m0, Lq, hd);
            load_rows<C, C::BM>(sO + buf * C::BM * C::LD,
                                (const T *)p.dout.ptr + b * p.do_stride[0] + h * p.do_stride[2],
                                p.do_stride[1], m0, Lq, hd);
            ab_load_lse_delta<C::BM, C::THREADS>(sL + buf * C::BM, sD + buf * C::BM, ws,
                                                 (b * H + h) * Lq, m0, Lq);
        };

        load_rows<C, C::BN>(sK, kg, p.k_stride[1], k0, Lk, hd);
        load_rows<C, C::BN>(sV, vg, p.v_stride[1], k0, Lk, hd);
        if (n_it > 0) load_q(0, 0);
        cp_async_commit();

        const ab_exp ex = ab_exp_of(p);
        const bool capped = ex.capped;
        const float sl = ex.sl, cap_in = ex.cap_in, cap2 = ex.cap2;
        const bool alibi = p.alibi_slopes != nullptr;

        float dk[C::NDT][4], dv[C::NDT][4];
#pragma unroll
        for (int i = 0; i < C::NDT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.0f;

        // per-lane fragment offsets (elements)
        const int a_off = (warp * 16 + (lane & 15)) * C::LD + (lane >> 4) * 8;  // A, row-major
        const int b_off = ((lane & 7) + ((lane >> 4) << 3)) * C::LD + ((lane >> 3) & 1) * 8;  // B = M^T
        const int t_off = ((lane & 7) + (((lane >> 3) & 1) << 3)) * C::LD + (lane >> 4) * 8;  // B, .trans
        // A = dS, .trans
        const int s_off = ((lane & 7) + ((lane >> 4) << 3)) * C::LDS + ((lane >> 3) & 1) * 8;

        for (int64_t it = 0; it < n_it; ++it) {
            const int buf = (int)(it & 1);
            if (it + 1 < n_it) load_q(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const int64_t h = h_first + it / n_mt;
            const int64_t m0 = qlo + (it % n_mt) * C::BM;
            const T *q_s = sQ + buf * C::BM * C::LD;
            const T *o_s = sO + buf * C::BM * C::LD;
            const float *l_s = sL + buf * C::BM;
            const float *d_s = sD + buf * C::BM;
            const float slope2 = ab_slope2(p, b, h);  // ALiBi (0 without)

            // ---- S^T = K_w Q^T, dP^T = V_w dO^T (16 keys x BM queries per warp) ----
            float s[C::NQT][4], dp[C::NQT][4];
#pragma unroll
            for (int n = 0; n < C::NQT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < C::KS; ++ks) {
                uint32_t ak[4], av[4];
                ldsm_x4(ak, sK + a_off + ks * 16);
                ldsm_x4(av, sV + a_off + ks * 16);
#pragma unroll
                for (int n = 0; n < C::NQT; n += 2) {
                    uint32_t bq[4], bo[4];
                    ldsm_x4(bq, q_s + b_off + n * 8 * C::LD + ks * 16);
                    ldsm_x4(bo, o_s + b_off + n * 8 * C::LD + ks * 16);
                    Mma<T>::run(s[n], ak, bq[0], bq[1]);
                    Mma<T>::run(s[n + 1], ak, bq[2], bq[3]);
                    Mma<T>::run(dp[n], av, bo[0], bo[1]);
                    Mma<T>::run(dp[n + 1], av, bo[2], bo[3]);
                }
            }

            // ---- P^T and dS^T (in place of s and dp) ----
            const bool full = kend - k0 == C::BN && m0 + C::BM <= Lq &&
                              (right < 0 || k0 + C::BN - 1 - m0 - off <= right) &&
                              (left < 0 || k0 - (m0 + C::BM - 1) - off >= -left);
            // key - query position at e = 0, column 0
            const int64_t rel0 = k0 + warp * 16 + g - m0 - off;
#pragma unroll
            for (int n = 0; n < C::NQT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qc = n * 8 + 2 * tq + (e & 1);  // query in the tile
                    float x = s[n][e], t = 0.0f;
                    if (capped) {
                        t = tanhf(x * cap_in);
                        x = cap2 * t;
                    } else {
                        x *= sl;
                    }
                    if (alibi) x -= slope2 * fabsf((float)(rel0 + (e >> 1) * 8 - qc));
                    float pr = fast_exp2(x - l_s[qc]);
                    float ds = pr * (dp[n][e] - d_s[qc]);
                    if (capped) ds *= 1.0f - t * t;
                    if (!full) {
                        const int kr = warp * 16 + g + (e >> 1) * 8;  // key in the block
                        const int64_t rel = rel0 + (e >> 1) * 8 - qc;
                        if (k0 + kr >= Lk || m0 + qc >= Lq || (right >= 0 && rel > right) ||
                            (left >= 0 && rel < -left)) {
                            pr = 0.0f;
                            ds = 0.0f;
                        }
                    }
                    s[n][e] = pr;
                    dp[n][e] = ds;
                }
            }

            // ---- dV_w += P^T dO, dK_w += dS^T Q (16 keys x DO dims per warp) ----
#pragma unroll
            for (int kk = 0; kk < C::BM / 16; ++kk) {
                uint32_t ap[4], ad[4];
                ap[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
                ap[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
                ap[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                ap[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                ad[0] = Mma<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
                ad[1] = Mma<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
                ad[2] = Mma<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
                ad[3] = Mma<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
                for (int i = 0; i < C::NDT; i += 2) {
                    uint32_t bo[4], bq[4];
                    ldsm_x4_trans(bo, o_s + t_off + kk * 16 * C::LD + dcol0 + i * 8);
                    ldsm_x4_trans(bq, q_s + t_off + kk * 16 * C::LD + dcol0 + i * 8);
                    Mma<T>::run(dv[i], ap, bo[0], bo[1]);
                    Mma<T>::run(dv[i + 1], ap, bo[2], bo[3]);
                    Mma<T>::run(dk[i], ad, bq[0], bq[1]);
                    Mma<T>::run(dk[i + 1], ad, bq[2], bq[3]);
                }
            }

            // ---- dS^T to shared memory ----
#pragma unroll
            for (int n = 0; n < C::NQT; ++n)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    T *dst = sS + (warp * 16 + g + 8 * r) * C::LDS + n * 8 + 2 * tq;
                    const uint32_t pk = Mma<T>::pack(dp[n][2 * r], dp[n][2 * r + 1]);
                    *reinterpret_cast<uint32_t *>(dst) = pk;
                }
            __syncthreads();

            // ---- dQ (BM x DO) += dS K: jobs of 16 queries x 16 dims over the warps ----
            constexpr int NJ = (C::BM / 16) * (C::DO / 16);
            for (int job = warp; job < NJ; job += C::NW) {
                const int mt = job % (C::BM / 16), np = job / (C::BM / 16);
                float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                for (int kk = 0; kk < C::BN / 16; ++kk) {
                    uint32_t a[4], bk[4];
                    ldsm_x4_trans(a, sS + s_off + kk * 16 * C::LDS + mt * 16);
                    ldsm_x4_trans(bk, sK + t_off + kk * 16 * C::LD + dcol0 + np * 16);
                    Mma<T>::run(acc[0], a, bk[0], bk[1]);
                    Mma<T>::run(acc[1], a, bk[2], bk[3]);
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int64_t q = m0 + mt * 16 + g + 8 * r;
                    if (q >= Lq) continue;
                    // this block's slice in the deterministic mode, else the shared accumulator
                    float *row = ws.dq_acc + (DET ? (int64_t)blockIdx.x * ws.dq_slice_stride : 0) +
                                 ((b * Lq + q) * H + h) * hd;
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int col = dcol0 + np * 16 + j * 8 + 2 * tq;
                        if (col < hd) atomic_add2(row + col, acc[j][2 * r], acc[j][2 * r + 1]);
                    }
                }
            }
            // no barrier here: the next tile's loads go to the other buffer, and sS is rewritten
            // only after the next iteration's first barrier
        }
        cp_async_wait<0>();

        // ---- dK (times scale), dV ----
        const bool split = ws.dk_acc != nullptr;
        if (split && n_it == 0) {  // the accumulators are zero already
            if (!DET) return;
            continue;
        }
        const int64_t Hkv = p.nheads_kv;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int64_t key = k0 + warp * 16 + g + 8 * r;
            if (key >= Lk) continue;
            const int64_t rb = ((b * Lk + key) * Hkv + hk) * hd;
#pragma unroll
            for (int i = 0; i < C::NDT; ++i) {
                const int col = dcol0 + i * 8 + 2 * tq;
                if (col >= hd) continue;
                ab_store_dkdv2(p, ws, split, rb + col, dk[i][2 * r] * p.softmax_scale,
                               dk[i][2 * r + 1] * p.softmax_scale, dv[i][2 * r], dv[i][2 * r + 1]);
            }
        }
        if (!DET) break;
    }  // key tiles
}

template <typename T, class C, bool DET>
samba_status launch_det(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                        cudaStream_t st) {
    const int64_t nkb = cdiv(a->seqlen_k, C::BN);
    const int64_t ny = a->nheads_kv * split * C::NDS;
    // one block per dq slice (deterministic; a (slice, head part, batch) grid, each block looping
    // over its key tiles), or per key tile in one linear grid, in the order ab_pick_order takes
    // for this shape (ab_block_of)
    const int64_t nx = DET ? (ws->dq_slices < nkb ? ws->dq_slices : nkb) : nkb;
    if (DET ? nx > 0x7fffffffLL || ny > 65535 || a->batch > 65535
            : nkb * ny * a->batch > 0x7fffffffLL)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "attention_bwd: too many key blocks or heads");
    const auto kernel = attn_bwd_mma_kernel<T, C, DET>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)C::SMEM);
    if (e != cudaSuccess) return samba_cu_fail("attention_bwd (shared memory opt-in)", e);
    int order = AB_KEYS_FASTEST;
    if (!DET) {
        static int per_sm = 0;  // resident blocks per multiprocessor (only sizes the count)
        if (per_sm == 0 && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                                &per_sm, kernel, C::THREADS, C::SMEM) != cudaSuccess ||
                            per_sm < 1)) {
            cudaGetLastError();
            per_sm = 1;
        }
        order = ab_pick_order(a, C::BN, C::BM, ny, a->nheads / a->nheads_kv / split,
                              (int64_t)samba_sm_count() * per_sm);
    }
    const dim3 grid = DET ? dim3((unsigned)nx, (unsigned)ny, (unsigned)a->batch)
                          : dim3((unsigned)(nkb * ny * a->batch));
    kernel<<<grid, C::THREADS, C::SMEM, st>>>(*a, *ws, split, order);
    return samba_cu_check_launch("attention_bwd", st);
}

template <typename T, class C>
samba_status launch(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                    cudaStream_t st) {
    if (ws->dq_slices > 0) return launch_det<T, C, true>(a, ws, split, st);
    return launch_det<T, C, false>(a, ws, split, st);
}

// Configurations: D, warps (keys per block / 16), queries per tile, output columns per block.
// d <= 64: 8 warps (128 keys: half the dQ atomics of 64-key blocks), 64-query tiles; or 4 warps
// (64 keys, two blocks per multiprocessor) with SAMBA_EXT_ATTN_BWD_WARPS=4 (read once; a tuning
// knob for benchmarks/gpu_backward_attention.py, results differ only in rounding order).
// d <= 128: 8 warps, 32-query tiles (the dK/dV accumulators take 2 x D / 2 registers).
// d <= 256: 4 warps, 32-query tiles, dK/dV for 128 of the head dims per block.
using Cfg64 = BCfg<64, 8, 64, 64>;
using Cfg64w4 = BCfg<64, 4, 64, 64>;
using Cfg96 = BCfg<96, 8, 32, 96>;
using Cfg128 = BCfg<128, 8, 32, 128>;
using Cfg256 = BCfg<256, 4, 32, 128>;

bool warps4_d64() {
    static int w = -1;
    if (w < 0) {
        const char *s = getenv("SAMBA_EXT_ATTN_BWD_WARPS");
        w = (s && s[0] == '4' && s[1] == '\0') ? 4 : 8;
    }
    return w == 4;
}

size_t cfg_smem(int64_t hd) {
    if (hd <= 64) return warps4_d64() ? Cfg64w4::SMEM : Cfg64::SMEM;
    if (hd <= 96) return Cfg96::SMEM;
    if (hd <= 128) return Cfg128::SMEM;
    return Cfg256::SMEM;
}

int cfg_bn(int64_t hd) {  // keys per block (key tile)
    return hd <= 64 ? (warps4_d64() ? Cfg64w4::BN : Cfg64::BN)
           : hd <= 96 ? Cfg96::BN : hd <= 128 ? Cfg128::BN : Cfg256::BN;
}

int cfg_nds(int64_t hd) {  // blocks per key tile along the head dim
    return hd <= 128 ? 1 : Cfg256::NDS;
}

// blocks per (kv head, group split); wgmma: of attention_bwd_wgmma.cu
int64_t cfg_blocks(const samba_cu_attn_ext_args *a, int wgmma) {
    if (wgmma) return cdiv(a->seqlen_k, attn_bwd_wgmma_bn()) * a->batch;
    return cdiv(a->seqlen_k, cfg_bn(a->headdim)) * cfg_nds(a->headdim) * a->batch;
}

template <typename T>
samba_status dispatch(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                      cudaStream_t st) {
    const int64_t hd = a->headdim;
    if (hd <= 64)
        return warps4_d64() ? launch<T, Cfg64w4>(a, ws, split, st) : launch<T, Cfg64>(a, ws, split, st);
    if (hd <= 96) return launch<T, Cfg96>(a, ws, split, st);
    if (hd <= 128) return launch<T, Cfg128>(a, ws, split, st);
    return launch<T, Cfg256>(a, ws, split, st);
}

}  // namespace

int attn_bwd_mma_applicable(const samba_cu_attn_ext_args *a) {
    const int dt = a->q.dtype;
    if (dt != SAMBA_CU_BF16 && dt != SAMBA_CU_F16) return 0;
    if (a->k.dtype != dt || a->v.dtype != dt || a->out.dtype != dt || a->dout.dtype != dt) return 0;
    if (a->headdim % 8 != 0 || a->headdim > 256) return 0;
    if (!is_aligned16(a->q.ptr) || !is_aligned16(a->k.ptr) || !is_aligned16(a->v.ptr) ||
        !is_aligned16(a->dout.ptr))
        return 0;
    for (int i = 0; i < 3; ++i)
        if (a->q_stride[i] % 8 || a->k_stride[i] % 8 || a->v_stride[i] % 8 || a->do_stride[i] % 8)
            return 0;
    return attn_tensor_cores_ok() && cfg_smem(a->headdim) <= attn_smem_optin();
}

// SAMBA_EXT_ATTN_BWD_SPLIT=n (read once) forces the group split n when it divides H / Hkv: a
// tuning knob for benchmarks/gpu_backward_attention.py. The deterministic mode never splits
// (dk / dv would be summed with atomics).
int attn_bwd_mma_group_split(const samba_cu_attn_ext_args *a, int wgmma) {
    if (a->deterministic) return 1;
    static int forced = -1;
    if (forced < 0) {
        const char *s = getenv("SAMBA_EXT_ATTN_BWD_SPLIT");
        forced = s ? atoi(s) : 0;
        if (forced < 0) forced = 0;
    }
    const int64_t G = a->nheads / a->nheads_kv;
    if (forced > 0 && G % forced == 0) return forced;
    // the smallest divisor of G that gives ~3 blocks per multiprocessor
    const int64_t want = 3 * (int64_t)samba_sm_count();
    const int64_t base = cfg_blocks(a, wgmma) * a->nheads_kv;
    for (int64_t s = 1; s < G; ++s)
        if (G % s == 0 && base * s >= want) return (int)s;
    return (int)G;
}

// Deterministic mode: S dq slices, S blocks along the keys per (batch, kv head, head-dim
// part), block x summing key tiles x, x + S, ... (the group is not split). S = the number of
// key tiles would be the most parallel (each slice then gets one tile) but costs one float32
// copy of dq per tile; ~2 blocks per multiprocessor are enough to fill the device (the tiles'
// 128-256 threads of ~250 registers allow 1-2 resident blocks), so
//   S = min(key tiles, ceil(2 SMs / (Hkv NDS batch))), at least 1,
// and S copies take at most max(one copy, 512 MiB) of scratch. Where that cap bites (a large
// dq: long sequences, many query heads) the grid has fewer blocks than the device holds, each
// looping over more key tiles: slower, not wrong.
int64_t attn_bwd_mma_dq_slices(const samba_cu_attn_ext_args *a) {
    const int64_t nkb = cdiv(a->seqlen_k, cfg_bn(a->headdim));
    const int64_t per = a->nheads_kv * cfg_nds(a->headdim) * a->batch;  // blocks per slice
    int64_t s = per > 0 ? cdiv(2 * (int64_t)samba_sm_count(), per) : 1;
    if (s > nkb) s = nkb;
    const int64_t slice = a->batch * a->seqlen_q * a->nheads * a->headdim * (int64_t)sizeof(float);
    const int64_t cap = slice > 0 ? ((int64_t)512 << 20) / slice : s;
    if (s > cap) s = cap;
    return s < 1 ? 1 : s;
}

samba_status attn_bwd_mma(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                          cudaStream_t st) {
    if (a->q.dtype == SAMBA_CU_BF16) return dispatch<__nv_bfloat16>(a, ws, split, st);
    return dispatch<__half>(a, ws, split, st);
}
