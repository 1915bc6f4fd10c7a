// attention_wgmma.cu - causal sliding-window attention (prefill) for bfloat16 / float16 on
// Hopper's warpgroup matrix instructions (wgmma, sm_90a only): prefill variant 4.
//
// Same function, masking, GQA, causal offset (query i sits at key position i + Lk - Lq),
// output layout and roundings as variants 2 / 3 (attention_mma_v2.cu): scores and softmax
// in float32, base 2 with the scale folded into the exponent, probabilities rounded to the
// input dtype before P V. What changes is the matrix unit:
//   * a block is 2 warpgroups (256 threads); warpgroup wg owns query rows [64 wg, 64 wg + 64)
//     of the block's 128 (BQ), and each of its 4 warps the 16 rows 16 w .. 16 w + 15;
//   * S = Q K^T is wgmma m64nBKk16 (SS form): Q (BQ x D) and K (BK x D) in shared memory,
//     both K-major in the 128-byte swizzle layout, one instruction per 16 head dims;
//   * O += P V is wgmma m64nDk16 (RS form): P from registers (the accumulator fragment of S
//     is, per warp, the m16n8k16 layout, so its bf16/fp16 pairs are the A fragment as in
//     v2), V (BK x D, rows = keys, head dim contiguous) in shared memory as the MN-major
//     operand (tnspB = 1), one instruction per 16 keys;
//   * K/V tiles of BK keys are loaded with cp.async (16-byte chunks, written in the swizzled
//     order) into a STAGES-deep ring, one barrier per tile as in v2; before the barrier each
//     thread makes its cp.async writes visible to the async proxy (fence.proxy.async);
//   * every wgmma batch is waited for (wait_group 0) before its results are used, so a ring
//     stage is free again once every warpgroup has passed the next barrier (skewed and
//     alternating: the one after).
// Schedules of the two warpgroups (SAMBA_EXT_ATTN_V4_SKEW: "0" in step, "1" skewed, else
// alternating, the default; skewed and alternating need 3 or more stages). In step, one
// barrier per tile makes the two warpgroups run their products and their softmax at the same
// moments, so inside a block the tensor cores wait while both run the softmax and the exp unit
// waits while both multiply. Skewed, warpgroup 1 runs the softmax and P V of tile j - 1 while
// warpgroup 0 runs S = Q K^T of tile j, and its S = Q K^T of tile j while warpgroup 0 runs the
// softmax (the P V products of the two then meet). Alternating (as FlashAttention-3's
// "ping-pong"), each warpgroup issues the P V of the previous tile and S = Q K^T of this one as
// one batch, then runs this tile's softmax; warpgroup 1 runs its softmax before the batch and
// warpgroup 0 after it, so the products of one meet the softmax of the other. In both, tile
// j - 1's V is read in iteration j, so loads run STAGES - 2 tiles ahead instead of STAGES - 1.
// Tiles a warpgroup's 64 rows do not see (outside the causal window) are skipped by the
// whole warpgroup (wgmma is warpgroup-collective); the mask is applied per warp on tiles
// crossing one of the warp's edges, exactly as in v2.
// Addressing: each thread copies the same chunk positions of every K/V tile (KvPart), so its
// shared offsets and global row offsets are fixed and only the tile's first row moves; the
// wgmma descriptors are built once per block and moved by 32-bit adds (desc_add), in uniform
// registers since the warpgroup index is broadcast from lane 0. Rescaling is conditional: a
// row's reference maximum moves only when its scores exceed it by more than 8 in the base-2
// exponent (softmax_pack).
// TMA (opt-in, SAMBA_EXT_ATTN_V4_TMA=1, alternating schedule only): thread 0 issues
// tensor-memory copies of each K/V tile (tma_ptx.cuh; tensor maps made per call on the host,
// out-of-range rows and head dims arriving as zeros) that complete on the stage's "full"
// mbarrier; every thread waits on it instead of cp.async.wait + a block-wide barrier, and
// arrives on the stage's "empty" mbarrier once its batch no longer reads the tile, which thread 0
// waits for before it refills the stage. Without the driver's cuTensorMapEncodeTiled, or with
// strides TMA cannot take, the cp.async kernel runs.
//
// Shared-memory layout (all bf16/fp16; the base rounded up to 1024 bytes): a tile of R rows
// and D head dims is stored as D/64 column blocks of R x 128 bytes; 16-byte chunk c (of 8)
// of row r of a block sits at r * 128 + ((c ^ (r % 8)) * 16) - the 128-byte swizzle that the
// descriptors declare (layout type 1). Descriptors (wgmma_ptx.cuh for the ISA sections):
//   Q, K (K-major): start = block (ks / 4) + rows offset + (ks % 4) * 32 bytes for the 16
//                   head dims of step ks, SBO = 1024 (8 rows x 128 bytes), LBO unused (16);
//   V (MN-major):   start = stage + kk * 16 * 128 bytes for the 16 keys of step kk,
//                   SBO = 1024 (8 keys), LBO = BK * 128 (next 64 head dims).
// Configurations: D = 64 and 128 (head dims up to 64 run in D = 64, 72..128 in D = 128 with
// the extra columns zero-filled; larger head dims run v3), by default alternating and
//   D = 64 : BK = 64, 4 stages: Q 16 KB + 4 x (K 8 KB + V 8 KB) = 80 KB (+1 KB alignment),
//            registers capped at 128 so that 2 blocks (4 warpgroups) share an SM;
//   D = 128: BK = 128, 3 stages: Q 32 KB + 3 x (K 32 KB + V 32 KB) = 224 KB (+1 KB), 1 block
//            per SM.
// (the list below has the alternatives that SAMBA_EXT_ATTN_V4_BK and _STAGES select).
// Positions are int32 (seqlen_k < 2^30; longer sequences run v1), as in v2.
#include <stdlib.h>

#include "prefill_common.cuh"
#include "tma_ptx.cuh"
#include "wgmma_ptx.cuh"
#include "wgmma_tile.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_prefill;
using namespace samba_wgmma;
using namespace samba_tma;

template <int D_, int BK_, int STAGES_, int MINB_> struct CfgW {
    static constexpr int D = D_;            // head dim of the template (>= the real hd)
    static constexpr int BK = BK_;          // keys per tile (the N of S = Q K^T)
    static constexpr int STAGES = STAGES_;  // K/V ring depth
    static constexpr int MINB = MINB_;      // blocks per SM the registers must allow
    static constexpr int BQ = 128;          // query rows per block: 2 warpgroups x 64
    static constexpr int THREADS = 256;
    static constexpr int KSTEPS = D / 16;   // wgmma k-steps of S = Q K^T
    static constexpr int NS = BK / 2;       // S accumulator registers per thread
    static constexpr int NO = D / 2;        // O accumulator registers per thread
    static constexpr uint32_t Q_BYTES = BQ * D * 2;
    static constexpr uint32_t KV_BYTES = BK * D * 2;  // one K (or V) stage
    static constexpr size_t SMEM = 1024 + Q_BYTES + 2 * STAGES * (size_t)KV_BYTES;
    static_assert(D % 64 == 0 && BK % 64 == 0 && STAGES >= 2, "tile shape");
    static_assert(BK == 64 || BK == 128, "wgmma N for S is written out for 64 and 128");
    static_assert(D == 64 || D == 128, "wgmma N for O is written out for 64 and 128");
};
// The configurations (registers from ptxas -v, sm_90a, nvcc 13.0, in step / skewed /
// alternating; no spills): SAMBA_EXT_ATTN_V4_BK=64 or 128 forces the key-tile size,
// SAMBA_EXT_ATTN_V4_STAGES the ring depth (tuning knobs for benchmarks/gpu_attention.py, read on
// every call); the defaults are W64_64_S4 and W128_128_S3, alternating.
using W64_64 = CfgW<64, 64, 2, 2>;     // 49 KB, 124 registers, 2 blocks (16 warps) per SM
using W64_128 = CfgW<64, 128, 2, 1>;   // 81 KB, 162 registers, 1 block per SM
using W128_128 = CfgW<128, 128, 2, 1>; // 161 KB, 198 registers, 1 block per SM
using W128_64 = CfgW<128, 64, 2, 1>;   // 97 KB, 154 registers, 1 block per SM
// Deeper K/V rings (SAMBA_EXT_ATTN_V4_STAGES=3 or 4): two or three tiles in flight while one is
// computed, instead of one (skewed / alternating: one or two); the shared memory grows:
using W64_64_S3 = CfgW<64, 64, 3, 2>;     // 65 KB, 2 blocks per SM; 120 / 117 / 124 registers
using W64_64_S4 = CfgW<64, 64, 4, 2>;     // 81 KB, 2 blocks per SM; 120 / 116 / 126 registers
using W64_128_S3 = CfgW<64, 128, 3, 1>;   // 113 KB; 158 / 167 / 188 registers
using W128_128_S3 = CfgW<128, 128, 3, 1>; // 225 KB (the opt-in limit of sm_90 is 227 KB); 192 / 200 / 230
using W128_64_S3 = CfgW<128, 64, 3, 1>;   // 129 KB; 150 / 156 / 168 registers

// One thread's part of loading a K or V tile (BK rows x D head dims, 16-byte chunks into the
// swizzled layout above): chunk column lc of rows lr + i * RPI, i < ITERS. RPI is a multiple of
// 8, so the swizzle (row % 8) is the same in every iteration and the shared offsets are fixed;
// per tile only the first row moves (load_tile_sw recomputes every address instead, which for
// the K/V tiles of the loop was about a fifth of the issued instructions at head dim 64).
template <class C> struct KvPart {
    static constexpr int CH = C::D / 8;             // 16-byte chunks per row
    static constexpr int RPI = C::THREADS / CH;     // rows per iteration
    static constexpr int ITERS = C::BK * CH / C::THREADS;
    static_assert(RPI % 8 == 0 && C::BK * CH % C::THREADS == 0, "whole iterations, fixed swizzle");
    int lr, lc;
    uint32_t dst0;  // shared offset of the first chunk in a tile
    __device__ __forceinline__ KvPart()
        : lr((int)threadIdx.x / CH), lc((int)threadIdx.x % CH),
          dst0((uint32_t)((lc >> 3) * C::BK * 128 + lr * 128 + (((lc & 7) ^ (lr & 7)) << 4))) {}
    // rows [k0, k0 + BK) of the (rows, hd) matrix at g with row stride rs into the tile at
    // shared address s; CHECKED: rows >= rlimit and columns >= hd are zero-filled, else every
    // copy is whole (the caller knows k0 + BK <= rlimit and hd == D)
    template <bool CHECKED, typename T>
    __device__ __forceinline__ void load(uint32_t s, const T *g, int64_t rs, int k0, int rlimit,
                                         int hd) const {
        const T *src = g + (int64_t)(k0 + lr) * rs + lc * 8;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const uint32_t dst = s + dst0 + i * RPI * 128;
            if (CHECKED) {
                const bool ok = k0 + lr + i * RPI < rlimit && lc * 8 < hd;
                cp_async16_s(dst, ok ? src + (int64_t)i * RPI * rs : g, ok);
            } else {
                cp_async16_s_full(dst, src + (int64_t)i * RPI * rs);
            }
        }
    }
};

// The tensor maps of K and V for the TMA kernels (as one __grid_constant__ parameter); empty
// for the others
template <bool TMA> struct KvMaps {};
template <> struct KvMaps<true> {
    CUtensorMap k, v;
};
// the map of K (which 0) or V (1); none without TMA
__device__ __forceinline__ const CUtensorMap *kv_map(const KvMaps<true> &m, int which) {
    return which == 0 ? &m.k : &m.v;
}
__device__ __forceinline__ const CUtensorMap *kv_map(const KvMaps<false> &, int) { return nullptr; }

// SCHED: 0 the warpgroups in step, 1 skewed, 2 alternating (header: "Schedules"). TMA
// (alternating only; SAMBA_EXT_ATTN_V4_TMA=1, not the default): the K/V tiles come by
// tensor-memory copies issued by thread 0, through the tensor maps in `maps`, each stage with a
// "full" barrier (the copies' bytes) and an "empty" one (every thread arrives once the stage's
// tile is no longer read); no block-wide barrier in the loop.
template <typename T, class C, int SCHED, bool TMA = false>
__global__ void __launch_bounds__(C::THREADS, C::MINB)
attn_wgmma_kernel(samba_cu_attn_args p, int n_qtiles, const __grid_constant__ KvMaps<TMA> maps,
                  float *lse) {
    static_assert(SCHED == 0 || C::STAGES >= 3, "skewed / alternating keep two tiles alive");
    static_assert(!TMA || SCHED == 2, "the TMA loads are written for the alternating schedule");
    constexpr int AHEAD = SCHED ? C::STAGES - 2 : C::STAGES - 1;  // tiles loaded ahead
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // Q [D/64][BQ][64], K and V [STAGES][D/64][BK][64], each block swizzled (header); with
    // TMA then the barriers full[STAGES], empty[STAGES] (8 bytes each)
    const uint32_t sQ = (smem_addr(smem_raw) + 1023u) & ~1023u;
    const uint32_t sK = sQ + C::Q_BYTES;
    const uint32_t sV = sK + C::STAGES * C::KV_BYTES;
    const uint32_t sFull = sV + C::STAGES * C::KV_BYTES, sEmpty = sFull + 8 * C::STAGES;

    const int h = blockIdx.x;
    const int qtile = n_qtiles - 1 - (int)blockIdx.y;  // longest rows first (causal)
    const int64_t b = blockIdx.z;
    const int64_t hkv = h / (p.nheads / p.nheads_kv);
    const int hd = (int)p.headdim;
    const int Lq = (int)p.seqlen_q, Lk = (int)p.seqlen_k, off = Lk - Lq;
    const int W = (p.window <= 0 || p.window > (int64_t)Lk + C::BQ) ? 0 : (int)p.window;
    // the warpgroup, broadcast from lane 0 so that the compiler knows it is warp-uniform (its
    // descriptors can then live in uniform registers)
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x >> 7, 0);
    const int warp = (threadIdx.x >> 5) & 3;      // warp within the warpgroup
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;

    const T *qg = (const T *)p.q.ptr + b * p.q_stride[0] + h * p.q_stride[2];
    const T *kg = (const T *)p.k.ptr + b * p.k_stride[0] + hkv * p.k_stride[2];
    const T *vg = (const T *)p.v.ptr + b * p.v_stride[0] + hkv * p.v_stride[2];

    // keys seen by the block: [kmin, kmax] (absolute positions; query q sits at q + off)
    const int q0 = qtile * C::BQ;
    const int q_last = (q0 + C::BQ < Lq ? q0 + C::BQ : Lq) - 1;
    const int kmax = q_last + off;
    const int kmin = (W > 0 && q0 + off - W + 1 > 0) ? q0 + off - W + 1 : 0;
    const int t_first = kmin / C::BK;
    const int ntiles = kmax / C::BK - t_first + 1;

    const KvPart<C> part;
    auto load_kv = [&](int tile, int stage) {
        const int k0 = (t_first + tile) * C::BK;
        const uint32_t sk = sK + stage * C::KV_BYTES, sv = sV + stage * C::KV_BYTES;
        if (hd == C::D && k0 + C::BK <= Lk) {
            part.template load<false>(sk, kg, p.k_stride[1], k0, Lk, hd);
            part.template load<false>(sv, vg, p.v_stride[1], k0, Lk, hd);
        } else {
            part.template load<true>(sk, kg, p.k_stride[1], k0, Lk, hd);
            part.template load<true>(sv, vg, p.v_stride[1], k0, Lk, hd);
        }
    };
    // TMA: tile t's K and V into stage t % STAGES, once every thread has released the tile
    // that held it before (thread 0 only)
    auto produce = [&](auto t) {  // generic: instantiated by the TMA kernels only
        const int st = t % C::STAGES;
        if (t >= C::STAGES) mbar_wait(sEmpty + 8 * st, ((t / C::STAGES) - 1) & 1);
        mbar_arrive_expect_tx(sFull + 8 * st, 2 * C::KV_BYTES);
        const int k0 = (t_first + t) * C::BK;
#pragma unroll
        for (int cb = 0; cb < C::D / 64; ++cb) {
            const uint32_t off = st * C::KV_BYTES + cb * C::BK * 128;
            tma_load_4d(sK + off, kv_map(maps, 0), sFull + 8 * st, cb * 64, k0, (int)hkv, (int)b);
            tma_load_4d(sV + off, kv_map(maps, 1), sFull + 8 * st, cb * 64, k0, (int)hkv, (int)b);
        }
    };
    if constexpr (TMA) {
        if (threadIdx.x == 0) {
            for (int st = 0; st < C::STAGES; ++st) {
                mbar_init(sFull + 8 * st, 1);
                mbar_init(sEmpty + 8 * st, C::THREADS);
            }
            mbar_init_fence();
        }
        __syncthreads();
    }
    load_tile_sw<C::D, C::THREADS, C::BQ>(sQ, qg, p.q_stride[1], q0, Lq, hd);
    if constexpr (TMA) {
        cp_async_commit();
        if (threadIdx.x == 0)
            for (int t = 0; t < AHEAD && t < ntiles; ++t) produce(t);
        cp_async_wait<0>();       // Q landed for this thread's copies
        fence_proxy_async_smem();  // ... and is visible to wgmma
        __syncthreads();           // ... for every thread
    } else {
#pragma unroll
        for (int st = 0; st < AHEAD; ++st) {
            if (st < ntiles) load_kv(st, st);
            cp_async_commit();  // (possibly empty) group st; group 0 also holds Q
        }
    }

    // this warpgroup's rows: absolute positions [qg0, qg1]; this warp's [qw0, qw1]; this
    // thread's rows qp0 and qp0 + 8
    const int qg0 = q0 + wg * 64 + off, qg1 = qg0 + 63;
    const int qw0 = qg0 + warp * 16, qw1 = qw0 + 15;
    const bool wg_live = q0 + wg * 64 < Lq;
    const int qp0 = qw0 + g;
    const float sl = p.softmax_scale * 1.4426950408889634f;  // > 0 (attn_wgmma_applicable)

    float o[C::NO];
#pragma unroll
    for (int i = 0; i < C::NO; ++i) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // m: max of the raw scores

    // descriptors of this warpgroup's 64 Q rows and of K and V stage 0; a k-step (column block
    // ks / 4, 32 bytes per step), a stage or a 16-key step of V only moves the start (desc_add)
    constexpr uint32_t SBO = 1024, LBO_K = 16, LBO_V = C::BK * 128;
    const uint64_t dq0 = desc_sw128(sQ + wg * 64 * 128, LBO_K, SBO);
    const uint64_t dk0 = desc_sw128(sK, LBO_K, SBO), dv0 = desc_sw128(sV, LBO_V, SBO);

    float s[C::NS];             // scores, then probabilities, of the tile in hand
    uint32_t pa[C::BK / 16][4];  // the probabilities rounded to T: the A operand of P V
    // issues S = Q K^T of the tile whose K sits at shared address k_s (not committed)
    auto s_issue = [&](uint32_t k_s) {
#pragma unroll
        for (int i = 0; i < C::NS; ++i) s[i] = 0.0f;
        fence_operands(s);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
            const uint32_t col = (ks & 3) * 32;  // 16 dims = 32 bytes into the row
            const uint64_t da = desc_add(dq0, (ks >> 2) * C::BQ * 128 + col);
            const uint64_t db = desc_add(dk0, k_s - sK + (ks >> 2) * C::BK * 128 + col);
            Wgmma<T, C::BK>::ss(s, da, db);
        }
    };
    // issues O += P V with P in pa and V at shared address v_s (not committed)
    auto pv_issue = [&](uint32_t v_s) {
        fence_operands(o);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < C::BK / 16; ++kk)
            Wgmma<T, C::D>::rs_t(o, pa[kk], desc_add(dv0, v_s - sV + kk * 16 * 128));
    };
    // S = Q K^T, waited for
    auto s_gemm = [&](uint32_t k_s) {
        s_issue(k_s);
        wg_commit();
        wg_wait<0>();
        fence_operands(s);
    };
    // mask and online softmax of the tile at key kbase (scores in s), O rescaled, P into pa
    auto softmax_pack = [&](int kbase) {
        // ---- mask (tiles crossing one of this warp's edges only) ----
        const bool edge = kbase + C::BK - 1 > qw0          // crosses the causal edge
                          || (W > 0 && kbase <= qw1 - W)   // crosses the window edge
                          || kbase + C::BK > Lk;           // runs past the keys
        if (edge) {
            const int dkq = kbase - qp0;  // key - qpos = dkq + kt - row offset
            const int kend = Lk - kbase < C::BK ? Lk - kbase : C::BK;
#pragma unroll
            for (int n = 0; n < C::BK / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int kt = n * 8 + 2 * tq + (e & 1);
                    const int rel = dkq + kt - (e >> 1) * 8;
                    if (rel > 0 || kt >= kend || (W > 0 && rel <= -W)) s[4 * n + e] = -INFINITY;
                }
        }

        // ---- online softmax, base 2, scale folded into the exponent (as in v2) ----
        // A row's reference maximum m moves only when the tile's scores exceed it by more
        // than 8 in the base-2 exponent (FlashAttention-4's conditional rescaling): the
        // probabilities are then at most 2^8, which the float32 sums carry exactly as well
        // and whose rounding to bf16 / fp16 for P V is as relative as below 1 (fp16 holds up
        // to 65504); O is rescaled only on such a jump instead of whenever the maximum grows.
        float corr[2];
        bool grew = false;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < C::BK / 8; ++n)
                mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mold = m[r];
            // mold = -inf: any finite maximum moves it
            const bool up = mx * sl > fmaf(mold, sl, 8.0f);
            const float mnew = up ? mx : mold;
            const float mref = mnew == -INFINITY ? 0.0f : mnew * sl;  // no -inf - -inf
            corr[r] = up ? fast_exp2(fmaf(mold, sl, -mref)) : 1.0f;
            grew |= up;
            m[r] = mnew;
            float rs = 0.0f;
#pragma unroll
            for (int n = 0; n < C::BK / 8; ++n) {
                s[4 * n + 2 * r] = fast_exp2(fmaf(s[4 * n + 2 * r], sl, -mref));
                s[4 * n + 2 * r + 1] = fast_exp2(fmaf(s[4 * n + 2 * r + 1], sl, -mref));
                rs += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
            }
            l[r] = l[r] * corr[r] + rs;  // this lane's part; the quad is summed at the end
        }
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
            for (int i = 0; i < C::NO / 4; ++i) {
                o[4 * i + 0] *= corr[0];
                o[4 * i + 1] *= corr[0];
                o[4 * i + 2] *= corr[1];
                o[4 * i + 3] *= corr[1];
            }
        }

        // ---- P rounded to T, in registers (the A operand of the RS form of P V) ----
#pragma unroll
        for (int kk = 0; kk < C::BK / 16; ++kk) {
            pack_p<T>(pa[kk], reinterpret_cast<const float(&)[4]>(s[8 * kk]),
                      reinterpret_cast<const float(&)[4]>(s[8 * kk + 4]));
#pragma unroll
            for (int j = 0; j < 4; ++j) fence_operand(pa[kk][j]);
        }
    };
    // O += P V, waited for
    auto pv_gemm = [&](uint32_t v_s) {
        pv_issue(v_s);
        wg_commit();
        wg_wait<0>();
        fence_operands(o);
    };
    // mask, online softmax and O += P V of the tile at key kbase, V at shared address v_s
    auto softmax_pv = [&](int kbase, uint32_t v_s) {
        softmax_pack(kbase);
        pv_gemm(v_s);
    };
    // a tile the warpgroup's rows see (warpgroup-uniform: wgmma needs all 4 warps)
    auto visible = [&](int kbase) {
        return wg_live && kbase <= qg1 && !(W > 0 && kbase + C::BK - 1 <= qg0 - W);
    };

    const bool skewed = SCHED == 1 && wg == 1;
    bool pending = false;  // skewed / alternating: S of a tile computed, its softmax not yet
    int pend_kbase = 0;
    uint32_t pend_v = 0;
    bool have_p = false;   // alternating: P of a tile in pa, its P V not yet issued
    uint32_t p_v = 0;
    auto pack_pending = [&] {  // alternating: the pending tile's softmax, P into pa
        softmax_pack(pend_kbase);
        have_p = true;
        p_v = pend_v;
        pending = false;
    };
    for (int it = 0; it < ntiles; ++it) {
        if constexpr (TMA) {
            if (threadIdx.x == 0 && it + AHEAD < ntiles) produce(it + AHEAD);
            mbar_wait(sFull + 8 * (it % C::STAGES), (it / C::STAGES) & 1);  // tile it landed
        } else {
            cp_async_wait<AHEAD - 1>();  // tile it (and Q) landed for this thread's copies
            fence_proxy_async_smem();    // ... and is visible to wgmma (async proxy)
            __syncthreads();             // ... for every thread; the stage read last is free
            const int nxt = it + AHEAD;
            if (nxt < ntiles) load_kv(nxt, nxt % C::STAGES);
            cp_async_commit();
        }

        const int kbase = (t_first + it) * C::BK;
        const int stage = it % C::STAGES;
        const uint32_t k_s = sK + stage * C::KV_BYTES;
        const uint32_t v_s = sV + stage * C::KV_BYTES;
        if (SCHED == 2) {
            // alternating: a product phase (P V of the previous tile with S = Q K^T of this
            // one, one batch) and a softmax phase; warpgroup 1 runs its softmax before the
            // product phase, warpgroup 0 after it, so one multiplies while the other does not
            if (wg == 1 && pending) pack_pending();
            // each batch straight-line code (a batch across a branch would be serialised)
            const bool vis = visible(kbase);
            if (have_p && vis) {
                pv_issue(p_v);
                s_issue(k_s);
                wg_commit();
                wg_wait<0>();
                fence_operands(o);
                fence_operands(s);
            } else if (have_p) {
                pv_gemm(p_v);
            } else if (vis) {
                s_gemm(k_s);
            }
            have_p = false;
            // TMA: tile it - 1 is read no more by this thread (its K in the last iteration,
            // its V in the batch above)
            if (TMA && it > 0) mbar_arrive(sEmpty + 8 * ((it - 1) % C::STAGES));
            if (vis) {
                pending = true;
                pend_kbase = kbase;
                pend_v = v_s;
            }
            if (wg == 0 && pending) pack_pending();
        } else if (!skewed) {
            // tiles entirely outside the warpgroup's rows' windows contribute nothing
            if (!visible(kbase)) continue;
            s_gemm(k_s);
            softmax_pv(kbase, v_s);
        } else {
            // the previous tile's softmax / P V (while warpgroup 0 runs this tile's S = Q K^T),
            // then this tile's S = Q K^T (while warpgroup 0 runs its softmax)
            if (pending) softmax_pv(pend_kbase, pend_v);
            pending = visible(kbase);
            if (pending) {
                s_gemm(k_s);
                pend_kbase = kbase;
                pend_v = v_s;
            }
        }
    }
    // the last tile's remaining steps (no loads are left, its stage is intact)
    if (pending && SCHED != 2) softmax_pv(pend_kbase, pend_v);
    if (SCHED == 2) {
        if (pending) pack_pending();
        if (have_p) pv_gemm(p_v);
    }
    cp_async_wait<0>();

    // ---- normalise and store (out is contiguous (B, Lq, H, hd)); with lse (B, H, Lq) the
    // natural log-sum-exp of the scaled scores, ln 2 (m sl + log2 l), -inf for a row without
    // keys, NaN where the sum is (the training forward, attention_fwd_lse.cu) ----
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float lsum = quad_sum(l[r]);
        const float inv = row_inv(lsum);
        const int q = q0 + wg * 64 + warp * 16 + g + r * 8;
        if (q >= Lq) continue;
        store_o_row<T, C::NO / 4>((T *)p.out.ptr + ((b * Lq + q) * p.nheads + h) * hd,
                                  reinterpret_cast<const float(&)[C::NO / 4][4]>(o), r, inv, hd, tq);
        if (lse != nullptr && tq == 0)
            lse[(b * p.nheads + h) * Lq + q] =
                lsum > 0.0f ? 0.6931471805599453f * (m[r] * sl + log2f(lsum))
                            : (lsum == 0.0f ? -INFINITY : lsum);
    }
}

template <typename T, class C, int SCHED = 0>
samba_status launch_w(const samba_cu_attn_args *a, cudaStream_t st, float *lse) {
    return launch_prefill(attn_wgmma_kernel<T, C, SCHED>, C::BQ, C::THREADS, C::SMEM, "swa_attention (v4)",
                          a, st, KvMaps<false>{}, lse);
}

// SAMBA_EXT_ATTN_V4_BK: 64 or 128 (anything else: the default of the head dim)
int v4_bk_override() {
    const char *e = getenv("SAMBA_EXT_ATTN_V4_BK");
    if (!e) return 0;
    const int v = atoi(e);
    return v == 64 || v == 128 ? v : 0;
}

// SAMBA_EXT_ATTN_V4_SKEW: the schedule of the two warpgroups (header): "0" in step, "1"
// skewed, anything else (and unset) alternating, the fastest in every prefill case measured
// with the addressing and rescaling above (benchmarks/results/gpu_attention_notes.md)
int v4_sched() {
    const char *e = getenv("SAMBA_EXT_ATTN_V4_SKEW");
    return e && e[0] == '0' ? 0 : e && e[0] == '1' ? 1 : 2;
}

// SAMBA_EXT_ATTN_V4_STAGES: 2, 3, or 4 at head dim 64 with 64-key tiles (4 elsewhere runs 3;
// the skewed and alternating schedules need 3 at least). Default: 4 at head dim 64 with 64-key
// tiles, else 3 (the fastest on an H100, benchmarks/results/gpu_attention_notes.md).
int v4_stages(int64_t hd, int bk) {
    const char *e = getenv("SAMBA_EXT_ATTN_V4_STAGES");
    const int v = e ? atoi(e) : 4;
    if (v == 4 && hd <= 64 && bk == 64) return 4;
    return v == 3 || v == 4 || v4_sched() != 0 ? 3 : 2;
}

// SAMBA_EXT_ATTN_V4_TMA=1 (read on every call; off by default until measured): the alternating
// schedule loads K and V by tensor-memory copies (attn_wgmma_kernel with TMA = true)
int v4_tma() {
    const char *e = getenv("SAMBA_EXT_ATTN_V4_TMA");
    return e && e[0] == '1';
}

typedef CUresult (*EncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// the driver's cuTensorMapEncodeTiled, looked up once (NULL without it: no TMA)
EncodeTiled encode_tiled() {
    static const EncodeTiled fn = [] {
        void *f = nullptr;
#if CUDART_VERSION >= 12050
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                             &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
#endif
        return (EncodeTiled)f;
    }();
    return fn;
}

// K or V (element (b, l, h, d) at b s[0] + l s[1] + h s[2] + d) as the 4-D tensor (head dim,
// seqlen_k, nheads_kv, batch), in boxes of 64 head dims x bk rows with the 128-byte swizzle of
// the kernel's shared layout; false when the driver or the strides (non-negative multiples of
// 16 bytes) do not allow it
bool kv_tensor_map(CUtensorMap *m, const samba_cu_attn_args *a, samba_cu_ref t, const int64_t s[3],
                   int bk) {
    const EncodeTiled f = encode_tiled();
    if (f == nullptr) return false;
    for (int i = 0; i < 3; ++i)
        if (s[i] < 0 || (s[i] * 2) % 16 != 0 || s[i] * 2 >= ((int64_t)1 << 40)) return false;
    const cuuint64_t dims[4] = {(cuuint64_t)a->headdim, (cuuint64_t)a->seqlen_k,
                                (cuuint64_t)a->nheads_kv, (cuuint64_t)a->batch};
    const cuuint64_t strides[3] = {(cuuint64_t)(s[1] * 2), (cuuint64_t)(s[2] * 2),
                                   (cuuint64_t)(s[0] * 2)};
    const cuuint32_t box[4] = {64, (cuuint32_t)bk, 1, 1}, unit[4] = {1, 1, 1, 1};
    const CUtensorMapDataType dt = t.dtype == SAMBA_CU_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                            : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    return f(m, dt, 4, t.ptr, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// the TMA kernel for configuration C, into *out; false (nothing launched) when its tensor maps
// or its shared memory (the ring plus 16 bytes of barriers per stage) are not available
template <typename T, class C>
bool launch_tma(const samba_cu_attn_args *a, cudaStream_t st, float *lse, samba_status *out) {
    KvMaps<true> maps;
    const size_t smem = C::SMEM + 16 * C::STAGES;
    if (smem > attn_smem_optin() || !kv_tensor_map(&maps.k, a, a->k, a->k_stride, C::BK) ||
        !kv_tensor_map(&maps.v, a, a->v, a->v_stride, C::BK))
        return false;
    *out = launch_prefill(attn_wgmma_kernel<T, C, 2, true>, C::BQ, C::THREADS, smem,
                          "swa_attention (v4, TMA)", a, st, maps, lse);
    return true;
}

// key-tile size for head dim hd (keep in step with attn_wgmma_fwd)
int v4_bk(int64_t hd) {
    const int f = v4_bk_override();
    return f ? f : (hd <= 64 ? 64 : 128);
}

template <class C2, class C3, class C4 = C3> size_t smem_of(int stages) {
    return stages == 2 ? C2::SMEM : stages == 3 ? C3::SMEM : C4::SMEM;
}

size_t wgmma_smem(int64_t hd) {
    const int bk = v4_bk(hd), ns = v4_stages(hd, bk);
    if (hd <= 64)
        return bk == 64 ? smem_of<W64_64, W64_64_S3, W64_64_S4>(ns) : smem_of<W64_128, W64_128_S3>(ns);
    return bk == 64 ? smem_of<W128_64, W128_64_S3>(ns) : smem_of<W128_128, W128_128_S3>(ns);
}

}  // namespace

int attn_wgmma_device_ok(void) {
#if defined(SAMBA_WGMMA_SM90A)
    static int cached[64];  // 0 unknown, 1 yes, 2 no
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        cudaGetLastError();
        return 0;
    }
    if (cached[dev] == 0) {
        int major = 0, minor = 0;
        cudaFuncAttributes fa;
        bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                  major == 9 && minor == 0;
        // the image the runtime picked for this device must be the sm_90a one (binary 90)
        if (ok) {
            ok = cudaFuncGetAttributes(&fa, attn_wgmma_kernel<__nv_bfloat16, W64_64, 0, false>) == cudaSuccess &&
                 fa.binaryVersion >= 90;
        }
        cudaGetLastError();
        cached[dev] = ok ? 1 : 2;
    }
    return cached[dev] == 1;
#else
    return 0;  // this build has no sm_90a code for the kernel (SAMBA_EXT_CUDA_ARCHS without 90)
#endif
}

int attn_wgmma_applicable(const samba_cu_attn_args *a) {
    if (a->headdim > 128) return 0;
    const float sl = a->softmax_scale * 1.4426950408889634f;
    if (!(sl > 0.0f) || isinf(sl)) return 0;  // the folded exponent needs a positive scale
    if (a->seqlen_k >= ((int64_t)1 << 30)) return 0;  // positions are int32 in the kernel
    return attn_mma_applicable(a) && wgmma_smem(a->headdim) <= attn_smem_optin();
}

template <typename T, class C2, class C3, class C4 = C3>
static samba_status launch_stages(int stages, int sched, const samba_cu_attn_args *a,
                                  cudaStream_t st, float *lse) {
    if (sched == 1)
        return stages == 4 ? launch_w<T, C4, 1>(a, st, lse) : launch_w<T, C3, 1>(a, st, lse);
    samba_status s = SAMBA_OK;
    if (sched == 2 && v4_tma() &&
        (stages == 4 ? launch_tma<T, C4>(a, st, lse, &s) : launch_tma<T, C3>(a, st, lse, &s)))
        return s;
    if (sched == 2)
        return stages == 4 ? launch_w<T, C4, 2>(a, st, lse) : launch_w<T, C3, 2>(a, st, lse);
    if (stages == 2) return launch_w<T, C2>(a, st, lse);
    return stages == 3 ? launch_w<T, C3>(a, st, lse) : launch_w<T, C4>(a, st, lse);
}

template <typename T>
static samba_status dispatch_w(const samba_cu_attn_args *a, cudaStream_t st, float *lse) {
    const int bk = v4_bk(a->headdim), ns = v4_stages(a->headdim, bk);
    const int sched = v4_sched();
    if (a->headdim <= 64)
        return bk == 64 ? launch_stages<T, W64_64, W64_64_S3, W64_64_S4>(ns, sched, a, st, lse)
                        : launch_stages<T, W64_128, W64_128_S3>(ns, sched, a, st, lse);
    return bk == 64 ? launch_stages<T, W128_64, W128_64_S3>(ns, sched, a, st, lse)
                    : launch_stages<T, W128_128, W128_128_S3>(ns, sched, a, st, lse);
}

samba_status attn_wgmma_fwd(const samba_cu_attn_args *a, cudaStream_t st, float *lse) {
    if (a->q.dtype == SAMBA_CU_BF16) return dispatch_w<__nv_bfloat16>(a, st, lse);
    return dispatch_w<__half>(a, st, lse);
}
