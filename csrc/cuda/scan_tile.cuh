// scan_tile.cuh - the tiled selective scan forward (d_state 16, u / delta / z / B / C of one
// dtype, unit time strides and 16-byte aligned rows), included by scan.cu.
//
// A block of 128 threads owns CPB channels of one (batch, group); each channel's 16 states are
// spread over LPC = 16 / NPL threads, NPL states (and their A * log2 e) in registers. The
// sequence is walked in tiles of TILE_T steps; per tile the block
//   1. stages B and C of the tile in shared memory as float32, laid out so that one thread's
//      NPL values of B and of C for a step are contiguous (one or two 16-byte loads, broadcast
//      to every channel of the block), and dt = softplus(delta + bias), du = dt * u of each
//      (channel, step) as a float2 (computed once per channel-step, not once per thread);
//   2. scans: per step a thread reads (dt, du) and its B / C values and, for each state,
//      h = ex2(dt * A log2 e) * h + B * du, y += C * h; its partial y goes to shared memory
//      (4 steps per 16-byte store);
//   3. sums the LPC partial y of each (channel, step), adds D * u, applies the gate and stores.
// Each thread loads (16-byte vectors) the next tile's rows into registers before scanning the
// current one, so the global latency is hidden behind a tile of work. Steps past the end of
// the sequence get dt = du = 0, which leaves the state unchanged (ex2(0) = 1 exactly).
//
// Instruction count per (channel, state, step), NPL = 4 (NPL = 2 in brackets):
//   scan: FMUL dt*a, MUFU.EX2, FMUL B*du, FFMA h, FFMA y = 5, plus per step and thread
//         LDS.64 (dt, du), 2 [1] LDS.128 (B, C), 1/4 STS.128 and loop overhead ~1:
//         5 + 4.25 / 4 = 6.1 [5 + 3.25 / 2 = 6.6]
//   per (channel, step), over its 16 states: preprocess (2 unpacks, bias, softplus ~11,
//         du, STS.64 ~ 16) = 1.0; output (LPC / 4 * 2 LDS.128 [4], LPC - 1 FADD, D*u, gate
//         ~7, convert, store ~14 [18]) = 0.9 [1.1]; staging B / C, barriers ~0.1
//   total ~8.1 [~8.8] issue slots per state-step, against 8 per exponential at the MUFU
//   rate (128 issue / 16 MUFU per clock per SM): the kernel is issue and MUFU co-limited.
//   MUFU per (channel, step): 16 ex2 + softplus 3 (ex2, lg2, rcp) + gate 2 (ex2, rcp) = 21.
// Prediction: ~1.3x the floor (the 21 / 16 MUFU ratio) where every scheduler has >= 2 warps;
// 1.4-1.8x at batch 1 (1-2 warps per scheduler, less latency hiding). Measured on the H200
// (benchmarks/results/gpu_model.md): 2.6x at batch 8 (half the split kernel's time), 5.1x at
// batch 1 x 4096 channels, 4.2x at batch 1 x 6144: the gap to the count is not explained yet.
// This kernel has no chunks over the sequence: with a channel's A per state, a chunk's start
// state reaches its outputs only through exp(A * cumulative dt) per (state, step), so any
// chunked scheme (two passes, or a correction of y) computes up to twice the exponentials
// (2 - 1 / chunks times the floor); its parallelism comes from the threads per channel
// (4096 channels x 4 threads = one warp per scheduler). scan_tile2.cuh trades those
// exponentials for warps where the channels are few (Tile2Chunks).
#ifndef SAMBA_SCAN_TILE_CUH
#define SAMBA_SCAN_TILE_CUH

#include "scan_common.cuh"

#define TILE_T 32        // steps per tile (a multiple of 8)
#define TILE_THREADS 128
#define TILE_N 16        // d_state

__device__ __forceinline__ float lg2_ftz(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return log2f(x);
#endif
}

__device__ __forceinline__ float rcp_ftz(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return 1.0f / x;
#endif
}

// softplus_fast / silu_fast (scan_common.cuh) with the flush-to-zero forms of the exp-unit
// instructions (no subnormal handling around each MUFU op): the same values except where
// exp(x) is subnormal (x < -87), where softplus gives 0 instead of a subnormal dt.
__device__ __forceinline__ float softplus_ftz(float x) {
    if (x > 20.0f) return x;
    const float e = ex2_ftz(x * LOG2E_F), u = 1.0f + e;
    return u == 1.0f ? e : lg2_ftz(u) * (0.6931471805599453f * e) * rcp_ftz(u - 1.0f);
}

__device__ __forceinline__ float silu_ftz(float x) {
    return x * rcp_ftz(1.0f + ex2_ftz(-x * LOG2E_F));  // 0 where exp(-x) overflows
}

template <int NPL> struct TileCfg {
    static constexpr int LPC = 16 / NPL;                   // threads per channel
    static constexpr int CPB = TILE_THREADS / LPC;         // channels per block
    static constexpr int QPR = TILE_T / 8;                 // 8-step pieces per row and tile
    static constexpr int PIECES = CPB * QPR;               // u / delta / z pieces per tile
    static constexpr int DS = TILE_T + 1;                  // (dt, du) row stride (float2)
    static constexpr int YS = TILE_T + 4;                  // partial-y row stride (floats)
    static_assert(NPL == 2 || NPL == 4, "2 or 4 states per thread");
    static_assert(PIECES <= TILE_THREADS, "one u / delta / z piece per thread at most");
    static_assert(32 * QPR == TILE_THREADS, "one B / C piece per thread");
};

template <int NPL> struct TileSmem {
    float2 dtdu[TileCfg<NPL>::CPB][TileCfg<NPL>::DS];
    // bc[t][l * 2 * NPL + j]: B[l * NPL + j] for j < NPL, C[l * NPL + j - NPL] after
    __align__(16) float bc[TILE_T][32];
    // yp[(c * LPC + l) * YS + t]: thread l's share of y for (channel c, step t)
    __align__(16) float yp[TileCfg<NPL>::CPB * TileCfg<NPL>::LPC * TileCfg<NPL>::YS];
};

// The next tile's rows as loaded by one thread: one 8-step piece of u / delta / z (threads
// below PIECES) and one 8-step piece of a B or C row (every thread).
template <typename T> struct TileRegs {
    Vec8<T> u, dl, z, bc;
};

struct TileRows {
    int64_t u, dl, z, bc;  // offsets at time 0 of this thread's rows (bc: in bcp)
    const void *bcp;       // p.B or p.C: the matrix of this thread's B / C row
    int64_t t_end;
};

// Loads the 8-step pieces at t0 + q * 8 (TT: the tile length; a whole tile in range: 16-byte
// vectors, else element loads with zeros past the end).
// has_bc false: this thread's B / C row is not needed (its registers are left as they are).
template <int TT, typename T>
__device__ __forceinline__ void tile_load(TileRegs<T> &R, const samba_cu_scan_args &p,
                                          const TileRows &r, int64_t t0, bool piece, int q,
                                          bool has_z, bool has_bc = true) {
    const int64_t t = t0 + q * 8;  // first step of this thread's pieces (both roles)
    if (t0 + TT <= r.t_end) {
        if (piece) {
            R.u.vload(p.u.ptr, r.u + t);
            R.dl.vload(p.delta.ptr, r.dl + t);
            if (has_z) R.z.vload(p.z.ptr, r.z + t);
        }
        if (has_bc) R.bc.vload(r.bcp, r.bc + t);
    } else {  // the last, partial tile: element loads, zeros past the end
        const int n = (int)max((int64_t)0, min((int64_t)8, r.t_end - t));
        if (piece) {
            R.u.sload(p.u.ptr, r.u + t, 1, n);
            R.dl.sload(p.delta.ptr, r.dl + t, 1, n);
            if (has_z) R.z.sload(p.z.ptr, r.z + t, 1, n);
        }
        if (has_bc) R.bc.sload(r.bcp, r.bc + t, 1, n);
    }
}

// The block's (batch, first channel, group) for CPB channels per block; every channel of a
// block is in one group.
struct TileBlock {
    int64_t b, d0, g;
};
__device__ __forceinline__ TileBlock tile_block(const samba_cu_scan_args &p, int64_t cpb,
                                                int64_t bid) {
    const int64_t blocks_per_row = p.dim / cpb;
    const int64_t d0 = (bid % blocks_per_row) * cpb;
    return {bid / blocks_per_row, d0, d0 / (p.dim / p.ngroups)};
}

// A thread's NPL states n0 .. of channel ds (row idx = b * dim + ds): A * log2 e and the initial
// state (0 without one).
template <int NPL>
__device__ __forceinline__ void tile_state_init(const samba_cu_scan_args &p, int64_t ds,
                                                int64_t idx, int n0, float (&a2)[NPL],
                                                float (&h)[NPL]) {
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        a2[k] = ldf(p.A, ds * TILE_N + n0 + k) * LOG2E_F;
        h[k] = p.initial_state ? p.initial_state[idx * TILE_N + n0 + k] : 0.0f;
    }
}

// One step of a thread's NPL states, dd = (dt, dt * u): h = 2^(dt a2) h + B du; returns the
// partial output sum_k C[k] h[k] (unused, and not computed, where the caller drops it).
template <int NPL>
__device__ __forceinline__ float tile_step(float (&h)[NPL], const float (&a2)[NPL], float2 dd,
                                           const float (&bv)[NPL], const float (&cv)[NPL]) {
    float y = 0.0f;
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        h[k] = fmaf(ex2_ftz(dd.x * a2[k]), h[k], bv[k] * dd.y);
        y = fmaf(h[k], cv[k], y);
    }
    return y;
}

template <int NPL, typename T>
__global__ void __launch_bounds__(TILE_THREADS)
scan_tile_kernel(samba_cu_scan_args p) {
    using Cfg = TileCfg<NPL>;
    constexpr int LPC = Cfg::LPC, CPB = Cfg::CPB, QPR = Cfg::QPR;
    __shared__ TileSmem<NPL> sm;
    const int tid = threadIdx.x;
    const TileBlock blk = tile_block(p, CPB, blockIdx.x);
    const int64_t b = blk.b, d0 = blk.d0, g = blk.g;
    const bool has_z = p.z.ptr != NULL;

    // scan role: channel cs, states n0 .. n0 + NPL - 1
    const int cs = tid / LPC, l = tid % LPC, n0 = l * NPL;
    const int64_t ds = d0 + cs, idx = b * p.dim + ds;
    float a2[NPL], h[NPL];
    tile_state_init<NPL>(p, ds, idx, n0, a2, h);
    // piece role (tid < PIECES): channel cp, steps q * 8 .. q * 8 + 7 of each tile
    const bool piece = tid < Cfg::PIECES;
    const int cp = piece ? tid / QPR : 0, q = tid % QPR;
    const int64_t dp = d0 + cp;
    const float Dd = ldf_opt(p.D, dp, 0.0f), db = ldf_opt(p.delta_bias, dp, 0.0f);
    // B / C staging role: row r (B rows 0..15, then C rows), steps q * 8 .. q * 8 + 7
    const int r = tid / QPR;
    const bool isB = r < TILE_N;
    const int rn = r % TILE_N;  // the state of that row; its slot in bc[t][.]:
    const int bc_slot = (rn / NPL) * 2 * NPL + (isB ? 0 : NPL) + rn % NPL;
    const int64_t bcrow = isB ? b * p.B_s[0] + g * p.B_s[1] + rn * p.B_s[2]
                              : b * p.C_s[0] + g * p.C_s[1] + rn * p.C_s[2];
    const TileRows rows = {b * p.u_s[0] + dp * p.u_s[1], b * p.delta_s[0] + dp * p.delta_s[1],
                           b * p.z_s[0] + dp * p.z_s[1], bcrow, isB ? p.B.ptr : p.C.ptr,
                           p.seqlen};
    const int64_t y0 = b * p.y_s[0] + dp * p.y_s[1];

    TileRegs<T> cur, nxt;
    tile_load<TILE_T, T>(cur, p, rows, 0, piece, q, has_z);
    for (int64_t t0 = 0; t0 < p.seqlen; t0 += TILE_T) {
        if (t0 + TILE_T < p.seqlen)  // the next tile's rows, in flight during this one
            tile_load<TILE_T, T>(nxt, p, rows, t0 + TILE_T, piece, q, has_z);
        __syncthreads();  // the previous tile's scan and output are done with the smem
        if (piece) {
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                float x = cur.dl.get(s) + db;
                if (p.delta_softplus) x = softplus_ftz(x);
                const float dt = t0 + q * 8 + s < p.seqlen ? x : 0.0f;
                sm.dtdu[cp][q * 8 + s] = make_float2(dt, dt * cur.u.get(s));
            }
        }
#pragma unroll
        for (int s = 0; s < 8; ++s) sm.bc[q * 8 + s][bc_slot] = cur.bc.get(s);
        __syncthreads();
        // scan of the tile (past the end: dt = du = 0 and B = C = 0, h unchanged)
        float *yrow = sm.yp + (cs * LPC + l) * Cfg::YS;
#pragma unroll 4
        for (int t4 = 0; t4 < TILE_T; t4 += 4) {
            float y4[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int t = t4 + j;
                const float2 dd = sm.dtdu[cs][t];
                float bv[NPL], cv[NPL];
                const float4 *bcp = (const float4 *)&sm.bc[t][l * 2 * NPL];
                if constexpr (NPL == 4) {  // B[0..3], then C[0..3]
                    const float4 w = bcp[0], x = bcp[1];
                    bv[0] = w.x; bv[1] = w.y; bv[2] = w.z; bv[3] = w.w;
                    cv[0] = x.x; cv[1] = x.y; cv[2] = x.z; cv[3] = x.w;
                } else {  // B0 B1 C0 C1
                    const float4 w = bcp[0];
                    bv[0] = w.x; bv[1] = w.y; cv[0] = w.z; cv[1] = w.w;
                }
                y4[j] = tile_step<NPL>(h, a2, dd, bv, cv);
            }
            *(float4 *)(yrow + t4) = make_float4(y4[0], y4[1], y4[2], y4[3]);
        }
        __syncthreads();
        // output: sum of the LPC shares, D skip, gate, store
        if (piece) {
            float ys[8];
#pragma unroll
            for (int s = 0; s < 8; ++s) ys[s] = 0.0f;
#pragma unroll
            for (int ll = 0; ll < LPC; ++ll) {
                const float4 *src = (const float4 *)(sm.yp + (cp * LPC + ll) * Cfg::YS + q * 8);
                const float4 a = src[0], c = src[1];
                ys[0] += a.x; ys[1] += a.y; ys[2] += a.z; ys[3] += a.w;
                ys[4] += c.x; ys[5] += c.y; ys[6] += c.z; ys[7] += c.w;
            }
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                const int64_t t = t0 + q * 8 + s;
                if (t < p.seqlen) {
                    float y = fmaf(Dd, cur.u.get(s), ys[s]);
                    if (has_z) y *= silu_ftz(cur.z.get(s));
                    stf(p.y, y0 + t * p.y_s[2], y);
                }
            }
        }
        cur = nxt;
    }
    if (p.final_state) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) p.final_state[idx * TILE_N + n0 + k] = h[k];
    }
}

#endif
