// scan_tile_bwd.cuh - the tiled selective scan backward (included by scan_bwd.cu; the formulas
// are those of scan_bwd_kernels.cuh and csrc/scan_bwd.c). d_state 16, unit time strides and
// 16-byte aligned rows, seqlen a multiple of 4 and whole blocks of 32 channels per group; other
// shapes run scan_bwd_kernels.cuh.
//
// Layout: the forward's tiled kernel (scan_tile2.cuh): a block of 128 threads owns 32 channels of
// one (batch, group), 4 threads per channel with 4 states each, and walks the sequence in tiles
// of TILE_T = 32 steps, here last tile first. Per tile the block stages in shared memory, once:
//   * per (channel, step): (dt, dt u, dy0, u) as a float4, dt = softplus(delta + bias) and
//     dy0 = dout silu(z) (the gradient of the ungated output), and for the tile's outputs the
//     softplus and gate derivatives, computed once by the thread that loaded the channel's
//     8-step piece (the raw rows then leave the registers, which hold the next tile's);
//   * B and C of the tile as float32 in tile2's swizzled layout (one 16-byte read gives a
//     thread its 4 states of B, another of C, broadcast to the block's channels).
// So the scan loops read float32 from shared memory: no per-thread 16-bit unpacking of B / C,
// no per-lane recomputation or shuffles of dt and dy0 (scan_bwd_kernels.cuh does both).
//
// States: the checkpoint kernel walks forward and stores the state at the start of every
// chunk of K tiles (K = 1 where the budget allows). Per chunk, the main kernel recomputes the
// states at its tile starts (K > 1 only; kept in shared memory), and per tile the states at
// its four 8-step group starts (registers); per group, last first, it recomputes the group's
// 8 states and decay factors e_t = 2^(dt_t A log2 e) in registers and runs the adjoint
// recurrence g_t = dy0_t C_t + e_{t+1} g_{t+1} backwards over them:
//   dA += g e h_{t-1} dt,  s1_t = sum_n g e h_{t-1} A,  s2_t = sum_n g B,
//   dB_t += g dt u,  dC_t += dy0 h_t   (summed over the block's channels, float4 atomics)
// and per (channel, step) du = s2 dt + D dy0, ddelta = (s1 + s2 u) softplus'(x),
// dz = dout silu'(z) (y0 + D u) with y0 = sum_n C h recomputed. Sums over the 4 threads of
// a channel are reduce-scatters by shuffles (each thread finishes 2 of a group's 8 steps),
// the dB / dC sums over the warp's 8 channels likewise, then over the 4 warps through shared
// memory. Exponentials per (channel, state, step): 3 (checkpoints, group starts, groups), 4
// with K > 1, and with segments 1 more on all but the first segment (their adjoint pre-pass).
//
// Segments (few rows, as batch 1): each row's chunks are cut into nsegs segments, one block
// each, so that the grid fills the GPU. The pre-pass walks the segments in parallel, from
// zero states and a zero adjoint; the recurrences are linear, so a segment with dt sum T maps
// a start state h to exp(A T) h + (its end state from zero), and an adjoint likewise. A small
// kernel then composes them, one thread per (row, 4 states), segment after segment: each
// segment's start state and the adjoint it starts from. The main blocks, one per (row block,
// segment), run as with one segment over their own chunks, adding exp(A T) times the segment's
// start state to each checkpoint inside it as they read it (T summed from the segment's start).
#ifndef SAMBA_SCAN_TILE_BWD_CUH
#define SAMBA_SCAN_TILE_BWD_CUH

#include "scan_bwd_kernels.cuh"
#include "scan_tile2.cuh"
#include "vecio.cuh"

#define TB_CPB 32              // channels per block
#define TB_G 8                 // steps per register group
#define TB_NG (TILE_T / TB_G)  // groups per tile
#define TB_MAX_K 16            // tiles per checkpointed chunk, at most
// resident blocks per multiprocessor the main kernel's registers must allow (its MINB): 3 by
// default (168 registers; ptxas spills 12-48 bytes with 16-bit inputs), 2 with float32 inputs
// (whose next-tile rows take twice the registers; at 168 they spilled up to 236 bytes) or with
// SAMBA_EXT_SCAN_BWD_OCC=2 (up to 255 registers, no spills, 8 warps per multiprocessor)
#define TB_MIN_BLOCKS(T) (sizeof(T) == 4 ? 2 : 3)

struct TbStage {  // a staged tile (the checkpoint kernel's shared memory)
    __align__(16) float4 dd[TB_CPB][TILE_T + 1];    // (dt, dt u, dy0, u) of (channel, step)
    __align__(16) float2 ox[TB_CPB][TILE_T + 2];    // (softplus'(x), dout silu'(z))
    __align__(16) float bc[TILE_T][32];             // B / C, tile2's layout (tile2_swz)
};
struct TbSmem : TbStage {
    float sums[3][TB_CPB][TILE_T + 1];              // s1, s2, y0 of (channel, step)
    __align__(16) float red[2][4][TB_G][32];        // dB / dC warp sums, two groups in turn
    __align__(16) float4 hg[TB_NG][TILE_THREADS];   // each thread's states at the group starts
};
// dynamic shared memory: TbSmem, then K x 128 float4 (the states at the chunk's tile starts)

template <typename T> struct TbRegs {
    Vec8<T> u, dl, z, dy, bc;
};

// Per-thread row offsets (time index 0): the piece role (channel cp = tid / 4, 8 steps q * 8 ..
// of each tile, q = tid % 4) and the B / C staging role (row r = tid / 4: B states 0..15, then
// C), as in scan_tile2.cuh.
struct TbRows {
    int64_t u, dl, z, dy, bc;
    const void *bcp;
    bool isB;
};

// Loads the tile at t0: u, delta (always), dout and z (full), this thread's B / C row piece
// (B always, C when full). 16-byte vectors for a whole tile, element loads with zeros past the
// end for the last one.
template <typename T>
__device__ __forceinline__ void tb_load(TbRegs<T> &R, const SbwdParams &p, const TbRows &r,
                                        int64_t t0, int q, bool full) {
    const int64_t t = t0 + q * 8;
    const bool has_z = full && p.z != nullptr, has_bc = full || r.isB;
    if (t0 + TILE_T <= p.seqlen) {
        R.u.vload(p.u, r.u + t);
        R.dl.vload(p.delta, r.dl + t);
        if (full) R.dy.vload(p.dout, r.dy + t);
        if (has_z) R.z.vload(p.z, r.z + t);
        if (has_bc) R.bc.vload(r.bcp, r.bc + t);
    } else {
        const int n = (int)max((int64_t)0, min((int64_t)8, p.seqlen - t));
        R.u.sload(p.u, r.u + t, 1, n);
        R.dl.sload(p.delta, r.dl + t, 1, n);
        if (full) R.dy.sload(p.dout, r.dy + t, 1, n);
        if (has_z) R.z.sload(p.z, r.z + t, 1, n);
        if (has_bc) R.bc.sload(r.bcp, r.bc + t, 1, n);
    }
}

// Stages the loaded tile (see the top); past the end dt = dt u = dy0 = 0 and B = C = 0, so a
// step there leaves the state and the adjoint unchanged and adds nothing.
template <typename T>
__device__ __forceinline__ void tb_stage(TbStage &sm, const TbRegs<T> &R, const SbwdParams &p,
                                         const TbRows &r, int64_t t0, int cp, int q, float db,
                                         bool full) {
    const bool has_z = full && p.z != nullptr;
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        const float x = R.dl.get(s) + db, uv = R.u.get(s);
        const bool in = t0 + q * 8 + s < p.seqlen;
        const float dt = in ? (p.softplus ? softplus_fast(x) : x) : 0.0f;
        float dy0 = 0.0f;
        if (full) {
            const float dyv = R.dy.get(s);  // 0 past the end
            float dzf = 0.0f;
            dy0 = dyv;
            if (has_z) {
                const float zv = R.z.get(s), sg = sigmoid_fast(zv);
                dy0 = dyv * zv * sg;
                dzf = dyv * sg * (1.0f + zv * (1.0f - sg));
            }
            const float sx = p.softplus && x <= 20.0f ? sigmoid_fast(x) : 1.0f;
            sm.ox[cp][q * 8 + s] = make_float2(sx, dzf);
        }
        sm.dd[cp][q * 8 + s] = make_float4(dt, dt * uv, dy0, uv);
    }
    if (full || r.isB) {
        const int rn = (threadIdx.x / 4) % TILE_N;
        const int chunk = 2 * (rn / 4) + (r.isB ? 0 : 1), word = rn % 4;
        const int swz = tile2_swz(q * 8);
#pragma unroll
        for (int s = 0; s < 8; ++s) sm.bc[q * 8 + s][4 * (chunk ^ swz) + word] = R.bc.get(s);
    }
}

// Advances this thread's 4 states over steps s0 .. s1 - 1 of the staged tile, adding the
// steps' dt to dsum.
__device__ __forceinline__ void tb_forward_sum(const TbStage &sm, int cs, int l,
                                               const float (&a2)[4], float (&h)[4], int s0,
                                               int s1, float &dsum) {
#pragma unroll 4
    for (int t = s0; t < s1; ++t) {
        const float4 dd = sm.dd[cs][t];
        const float4 w = *(const float4 *)&sm.bc[t][4 * ((2 * l) ^ tile2_swz(t))];
        const float bv[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) h[k] = fmaf(ex2_ftz(dd.x * a2[k]), h[k], bv[k] * dd.y);
        dsum += dd.x;
    }
}
__device__ __forceinline__ void tb_forward(const TbStage &sm, int cs, int l, const float (&a2)[4],
                                           float (&h)[4], int s0, int s1) {
    float unused = 0.0f;
    tb_forward_sum(sm, cs, l, a2, h, s0, s1, unused);
}

// The adjoint alone over the staged tile, last step first: g <- e_t (dy0_t C_t + g), the
// recurrence of tb_group; the steps' dt added to dsum.
__device__ __forceinline__ void tb_adjoint(const TbStage &sm, int cs, int l, const float (&a2)[4],
                                           float (&g)[4], float &dsum) {
#pragma unroll 4
    for (int t = TILE_T - 1; t >= 0; --t) {
        const float4 dd = sm.dd[cs][t];
        const float4 w = *(const float4 *)&sm.bc[t][4 * ((2 * l + 1) ^ tile2_swz(t))];
        const float cv[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) g[k] = fmaf(dd.z, cv[k], g[k]) * ex2_ftz(dd.x * a2[k]);
        dsum += dd.x;
    }
}

// Reduce-scatter of v[0 .. 2 HALF) over ROUNDS lane bits, M the first (then M / 2, ...): in
// each round a lane keeps the half of its values selected by its bit (the upper half where it
// is set) and adds the other lane's copy of it. Over the warp's 8 channels (lane bits 4, 3, 2)
// the lane of channel cw ends with the sum of value cw; over the 4 threads of a channel (bits
// 1, 0) thread l ends with values 2 l, 2 l + 1 of 8.
template <int HALF, int M, int ROUNDS, int NV>
__device__ __forceinline__ void tb_reduce(float (&v)[NV], int lane) {
    if constexpr (ROUNDS > 0) {
        const bool up = (lane & M) != 0;
#pragma unroll
        for (int k = 0; k < HALF; ++k) {
            const float send = up ? v[k] : v[k + HALF];
            const float keep = up ? v[k + HALF] : v[k];
            v[k] = keep + __shfl_xor_sync(SBWD_FULL, send, M);
        }
        tb_reduce<HALF / 2, M / 2, ROUNDS - 1>(v, lane);
    }
}

// One (batch, group) block of channels.
struct TbBlock {
    int64_t b, d0, g;
};
__device__ __forceinline__ TbBlock tb_block(const SbwdParams &p) {
    const int64_t per_row = p.dim / TB_CPB, bid = blockIdx.x;
    const int64_t d0 = (bid % per_row) * TB_CPB;
    return {bid / per_row, d0, d0 / (p.dim / p.ngroups)};
}

__device__ __forceinline__ TbRows tb_rows(const SbwdParams &p, const TbBlock &k) {
    const int tid = threadIdx.x, cp = tid / 4, r = tid / 4;
    const int64_t d = k.d0 + cp;
    const bool isB = r < TILE_N;
    const int rn = r % TILE_N;
    TbRows w;
    w.u = k.b * p.u_s[0] + d * p.u_s[1];
    w.dl = k.b * p.delta_s[0] + d * p.delta_s[1];
    w.z = k.b * p.z_s[0] + d * p.z_s[1];
    w.dy = k.b * p.dout_s[0] + d * p.dout_s[1];
    w.bc = isB ? k.b * p.B_s[0] + k.g * p.B_s[1] + rn * p.B_s[2]
               : k.b * p.C_s[0] + k.g * p.C_s[1] + rn * p.C_s[2];
    w.bcp = isB ? p.B : p.C;
    w.isB = isB;
    return w;
}

// The pre-pass, grid (blocks, 2 nsegs - 1). Blocks y < nsegs walk segment y forward (chunks
// y SC .., SC = seg_chunks), from the initial state (y = 0) or from zeros (y > 0), and store
// the state at the start of each chunk c after the segment's first, up to and including the
// next segment's first, as ckpt[((c - 1) * B*D + row) * 16 + n], with nsegs > 1 the sum of dt
// since the segment's start as ckpt_dt[(c - 1) * B*D + row]; the last chunk is not walked.
// Blocks y >= nsegs walk segment s = y - nsegs + 1 backward with the adjoint alone, from zero,
// and store what it hands on, seg_g[((s - 1) * B*D + row) * 16 + n], and the segment's sum of
// dt, seg_dt[(s - 1) * B*D + row]. The main kernel composes them (the recurrences are linear:
// over a segment with dt sum T, h_end = exp(A T) h_start + h_end(from 0), and likewise g).
// SEG: several segments (a separate build: the adjoint walk's registers would cost the
// one-segment walk resident blocks).
template <typename T, bool SEG>
__global__ void __launch_bounds__(TILE_THREADS) tb_ckpt_kernel(SbwdParams p) {
    __shared__ TbStage sm;
    const int tid = threadIdx.x, cs = tid / 4, l = tid % 4, q = tid % 4;
    const TbBlock blk = tb_block(p);
    const TbRows rows = tb_rows(p, blk);
    const int64_t d = blk.d0 + cs, row = blk.b * p.dim + d, BD = p.batch * p.dim;
    const int64_t K = p.chunk_tiles, SC = p.seg_chunks, y = blockIdx.y;
    const int64_t ntiles = (p.seqlen + TILE_T - 1) / TILE_T;
    float a2[4], h[4];
    const bool fwd = !SEG || y < p.nsegs;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        a2[k] = ldf(p.A, d * TILE_N + 4 * l + k) * LOG2E_F;
        h[k] = fwd && y == 0 && p.initial_state ? p.initial_state[row * TILE_N + 4 * l + k] : 0.0f;
    }
    const float db = ldf_opt(p.delta_bias, blk.d0 + tid / 4, 0.0f);
    float dsum = 0.0f;
    TbRegs<T> cur, nxt;
    if (fwd) {
        const int64_t i0 = y * SC * K, i1 = min(y * SC + SC, p.nchunks - 1) * K;
        if (i0 >= i1) return;  // the last segment of one chunk: nothing to store
        tb_load<T>(cur, p, rows, i0 * TILE_T, q, false);
        for (int64_t i = i0; i < i1; ++i) {
            if (i + 1 < i1) tb_load<T>(nxt, p, rows, (i + 1) * TILE_T, q, false);
            __syncthreads();
            tb_stage<T>(sm, cur, p, rows, i * TILE_T, tid / 4, q, db, false);
            cur = nxt;
            __syncthreads();
            if (SEG)
                tb_forward_sum(sm, cs, l, a2, h, 0, TILE_T, dsum);
            else
                tb_forward(sm, cs, l, a2, h, 0, TILE_T);
            if ((i + 1) % K == 0) {
                const int64_t c = (i + 1) / K - 1;
                float *dst = p.ckpt + (c * BD + row) * TILE_N + 4 * l;
                *(float4 *)dst = make_float4(h[0], h[1], h[2], h[3]);
                if (SEG && l == 0) p.ckpt_dt[c * BD + row] = dsum;
            }
        }
        return;
    }
    const int64_t s = y - p.nsegs + 1;
    const int64_t i_lo = s * SC * K, i_hi = min(s * SC * K + SC * K, ntiles);
    tb_load<T>(cur, p, rows, (i_hi - 1) * TILE_T, q, true);
    for (int64_t i = i_hi - 1; i >= i_lo; --i) {
        if (i > i_lo) tb_load<T>(nxt, p, rows, (i - 1) * TILE_T, q, true);
        __syncthreads();
        tb_stage<T>(sm, cur, p, rows, i * TILE_T, tid / 4, q, db, true);
        cur = nxt;
        __syncthreads();
        tb_adjoint(sm, cs, l, a2, h, dsum);
    }
    float *dst = p.seg_g + ((s - 1) * BD + row) * TILE_N + 4 * l;
    *(float4 *)dst = make_float4(h[0], h[1], h[2], h[3]);
    if (l == 0) p.seg_dt[(s - 1) * BD + row] = dsum;
}

// The composition of the segments (nsegs > 1), one thread per (row, 4 states), segment after
// segment: the true state at the start of segment s + 1 is exp(A T) h_s plus the state segment
// s reached from zero (its last checkpoint, T its dt sum since its start); it replaces that
// checkpoint and goes to seg_h[s] (the main kernel adds exp(A T) seg_h[s - 1] to the other
// checkpoints of segment s as it reads them). seg_g[s - 1], what segment s hands on from a
// zero adjoint, becomes the adjoint segment s - 1 starts from (the last segment's is
// dlast_state).
__global__ void tb_seg_kernel(SbwdParams p) {
    const int64_t BD = p.batch * p.dim, idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= BD * 4) return;
    const int64_t row = idx / 4, d = row % p.dim;
    const int l = (int)(idx % 4);
    float a2[4], h[4] = {0.0f, 0.0f, 0.0f, 0.0f}, g[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        a2[k] = ldf(p.A, d * TILE_N + 4 * l + k) * LOG2E_F;
        g[k] = p.dlast_state ? p.dlast_state[row * TILE_N + 4 * l + k] : 0.0f;
    }
    for (int64_t sg = 0; sg + 1 < p.nsegs; ++sg) {
        const int64_t i = (sg + 1) * p.seg_chunks - 1;  // slot of chunk (sg + 1) SC's start
        float4 *v = (float4 *)(p.ckpt + (i * BD + row) * TILE_N + 4 * l);
        float4 w = *v;
        if (sg > 0) {  // (segment 0 started from the true initial state)
            const float t = p.ckpt_dt[i * BD + row];
            w.x = fmaf(ex2_ftz(a2[0] * t), h[0], w.x);
            w.y = fmaf(ex2_ftz(a2[1] * t), h[1], w.y);
            w.z = fmaf(ex2_ftz(a2[2] * t), h[2], w.z);
            w.w = fmaf(ex2_ftz(a2[3] * t), h[3], w.w);
            *v = w;
        }
        h[0] = w.x, h[1] = w.y, h[2] = w.z, h[3] = w.w;
        *(float4 *)(p.seg_h + (sg * BD + row) * TILE_N + 4 * l) = w;
    }
    for (int64_t sg = p.nsegs - 1; sg >= 1; --sg) {
        float4 *v = (float4 *)(p.seg_g + ((sg - 1) * BD + row) * TILE_N + 4 * l);
        const float t = p.seg_dt[(sg - 1) * BD + row];
        const float4 q = *v;
        g[0] = fmaf(ex2_ftz(a2[0] * t), g[0], q.x);
        g[1] = fmaf(ex2_ftz(a2[1] * t), g[1], q.y);
        g[2] = fmaf(ex2_ftz(a2[2] * t), g[2], q.z);
        g[3] = fmaf(ex2_ftz(a2[3] * t), g[3], q.w);
        *v = make_float4(g[0], g[1], g[2], g[3]);
    }
}

// The outputs of one tile's (channel, 8-step piece): du, ddelta, dz; dD and ddelta_bias summed.
__device__ __forceinline__ void tb_outputs(const TbSmem &sm, const SbwdParams &p, int64_t t0,
                                           int cp, int q, int64_t row, float Dd, float &dD,
                                           float &dbs) {
    const bool has_z = p.z != nullptr;
    float du[8], ddl[8], dz[8];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        const int t = q * 8 + s;
        const float4 dd = sm.dd[cp][t];
        const float2 ox = sm.ox[cp][t];
        const float s1 = sm.sums[0][cp][t], s2 = sm.sums[1][cp][t];
        const float uv = dd.w;
        ddl[s] = fmaf(s2, uv, s1) * ox.x;
        du[s] = fmaf(Dd, dd.z, s2 * dd.x);
        dz[s] = has_z ? ox.y * fmaf(Dd, uv, sm.sums[2][cp][t]) : 0.0f;
        if (t0 + t < p.seqlen) {  // steps past the end: u, dy0 = 0 add nothing to dD
            dD = fmaf(dd.z, uv, dD);
            dbs += ddl[s];
        }
    }
    const int64_t i = row * p.seqlen + t0 + q * 8;
    if (p.vec_out && t0 + TILE_T <= p.seqlen) {
        stv<8>(p.du.ptr, p.du.dtype, i, du);
        stv<8>(p.ddelta.ptr, p.ddelta.dtype, i, ddl);
        if (has_z) stv<8>(p.dz.ptr, p.dz.dtype, i, dz);
    } else {
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            if (t0 + q * 8 + s >= p.seqlen) break;
            stf(p.du, i + s, du[s]);
            stf(p.ddelta, i + s, ddl[s]);
            if (has_z) stf(p.dz, i + s, dz[s]);
        }
    }
}

// One group (8 steps from s0 of the staged tile at t0), states h_{s0 - 1} in hg: the adjoint
// steps, the dB / dC partial sums into red (this group's buffer), the per-step sums over the
// states into sm.sums.
template <bool HAS_Z>
__device__ __forceinline__ void tb_group(TbSmem &sm, float (*red)[TB_G][32], int cs, int l,
                                         const float (&a)[4], const float (&a2)[4],
                                         const float (&hg)[4], int s0, float (&gn)[4],
                                         float (&dA)[4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float e[TB_G][4], hs[TB_G + 1][4], ys[TB_G];
    const int swz = tile2_swz(s0);  // the group lies in one 8-step piece
#pragma unroll
    for (int k = 0; k < 4; ++k) hs[0][k] = hg[k];
#pragma unroll
    for (int s = 0; s < TB_G; ++s) {
        const int t = s0 + s;
        const float4 dd = sm.dd[cs][t];
        const float4 wb = *(const float4 *)&sm.bc[t][4 * ((2 * l) ^ swz)];
        const float bv[4] = {wb.x, wb.y, wb.z, wb.w};
        float y = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            e[s][k] = ex2_ftz(dd.x * a2[k]);
            hs[s + 1][k] = fmaf(e[s][k], hs[s][k], bv[k] * dd.y);
        }
        if (HAS_Z) {
            const float4 wc = *(const float4 *)&sm.bc[t][4 * ((2 * l + 1) ^ swz)];
            y = fmaf(hs[s + 1][0], wc.x, y);
            y = fmaf(hs[s + 1][1], wc.y, y);
            y = fmaf(hs[s + 1][2], wc.z, y);
            y = fmaf(hs[s + 1][3], wc.w, y);
        }
        ys[s] = y;
    }
    float s1[TB_G], s2[TB_G];
#pragma unroll
    for (int s = TB_G - 1; s >= 0; --s) {
        const int t = s0 + s;
        const float4 dd = sm.dd[cs][t];
        const float4 wb = *(const float4 *)&sm.bc[t][4 * ((2 * l) ^ swz)];
        const float4 wc = *(const float4 *)&sm.bc[t][4 * ((2 * l + 1) ^ swz)];
        const float bv[4] = {wb.x, wb.y, wb.z, wb.w}, cv[4] = {wc.x, wc.y, wc.z, wc.w};
        float v[8], t1 = 0.0f, t2 = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float g = fmaf(dd.z, cv[k], gn[k]);
            const float ge = g * e[s][k];
            const float geh = ge * hs[s][k];
            dA[k] = fmaf(geh, dd.x, dA[k]);
            t1 = fmaf(geh, a[k], t1);
            t2 = fmaf(g, bv[k], t2);
            v[k] = g * dd.y;
            v[4 + k] = dd.z * hs[s + 1][k];
            gn[k] = ge;
        }
        s1[s] = t1;
        s2[s] = t2;
        // over the warp's 8 channels (lane bits 2..4): lane (cw, l) keeps value cw: dB of
        // state 4 l + cw for cw < 4, else dC of state 4 l + cw - 4
        tb_reduce<4, 16, 3>(v, lane);
        red[warp][s][lane] = v[0];
    }
    // over the channel's 4 threads (lane bits 0..1): thread l keeps steps 2 l, 2 l + 1
    tb_reduce<TB_G / 2, 2, 2>(s1, lane);
    tb_reduce<TB_G / 2, 2, 2>(s2, lane);
    if (HAS_Z) tb_reduce<TB_G / 2, 2, 2>(ys, lane);
#pragma unroll
    for (int o = 0; o < 2; ++o) {
        const int t = s0 + 2 * l + o;
        sm.sums[0][cs][t] = s1[o];
        sm.sums[1][cs][t] = s2[o];
        if (HAS_Z) sm.sums[2][cs][t] = ys[o];
    }
}

// dB / dC of one group (8 steps from t0 + s0) from the 4 warps' sums: 64 threads, each one
// (B or C, state, 4 steps) with one 16-byte atomic add (scalar adds before sm_90).
__device__ __forceinline__ void tb_group_atomics(const SbwdParams &p, const TbBlock &blk,
                                                 const float (*red)[TB_G][32], int64_t tg) {
    const int tid = threadIdx.x;
    const int quad = tid & 1, slot = tid >> 1;  // slot: which * 16 + state
    if (tid >= 64 || tg + 4 * quad >= p.seqlen) return;  // seqlen is a multiple of 4
    const int which = slot / TILE_N, n = slot % TILE_N;
    const int src = (which * 4 + n % 4) * 4 + n / 4;  // lane (cw, l) holding it
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] += red[w][4 * quad + i][src];
    float *dst = (which ? p.dC : p.dB) + ((blk.b * p.ngroups + blk.g) * TILE_N + n) * p.seqlen +
                 tg + 4 * quad;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd((float4 *)dst, make_float4(v[0], v[1], v[2], v[3]));
#else
#pragma unroll
    for (int i = 0; i < 4; ++i) atomicAdd(dst + i, v[i]);
#endif
}

// SEG: several segments (a separate build, so that one segment keeps the registers it had)
template <typename T, bool HAS_Z, int MINB, bool SEG>
__global__ void __launch_bounds__(TILE_THREADS, MINB) tb_main_kernel(SbwdParams p) {
    extern __shared__ __align__(16) unsigned char tb_smem_raw[];
    TbSmem &sm = *reinterpret_cast<TbSmem *>(tb_smem_raw);
    float4 *hsub = reinterpret_cast<float4 *>(tb_smem_raw + sizeof(TbSmem)) + threadIdx.x;
    const int tid = threadIdx.x, cs = tid / 4, l = tid % 4, q = tid % 4;
    const TbBlock blk = tb_block(p);
    const TbRows rows = tb_rows(p, blk);
    const int64_t d = blk.d0 + cs, row = blk.b * p.dim + d, BD = p.batch * p.dim;
    const int64_t L = p.seqlen, K = p.chunk_tiles, ntiles = (L + TILE_T - 1) / TILE_T;
    float a[4], a2[4], gn[4], dA[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        a[k] = ldf(p.A, d * TILE_N + 4 * l + k);
        a2[k] = a[k] * LOG2E_F;
        gn[k] = p.dlast_state ? p.dlast_state[row * TILE_N + 4 * l + k] : 0.0f;
        dA[k] = 0.0f;
    }
    // this block's segment: chunks c_lo .. c_hi - 1
    const int64_t sg = SEG ? blockIdx.y : 0, c_lo = SEG ? sg * p.seg_chunks : 0;
    const int64_t c_hi = SEG ? min(c_lo + p.seg_chunks, p.nchunks) : p.nchunks;
    if (SEG && sg + 1 < p.nsegs) {  // the adjoint entering the segment (tb_seg_kernel)
        const float4 v = *(const float4 *)(p.seg_g + (sg * BD + row) * TILE_N + 4 * l);
        gn[0] = v.x, gn[1] = v.y, gn[2] = v.z, gn[3] = v.w;
    }
    const float Dd = ldf_opt(p.D, d, 0.0f), db = ldf_opt(p.delta_bias, d, 0.0f);
    // the segment's start state (tb_seg_kernel), for the checkpoints inside the segment
    const float4 *hseg =
        SEG && sg > 0 ? (const float4 *)(p.seg_h + ((sg - 1) * BD + row) * TILE_N + 4 * l)
                      : nullptr;
    float dD = 0.0f, dbs = 0.0f;
    int buf = 0;
    TbRegs<T> cur, nxt;
    // Order of the tiles: per chunk, last chunk first, the forward over its tiles but the last
    // (K > 1), then the backward over all its tiles, last first. The next tile's rows are
    // loaded while the current one is processed.
    int64_t c = c_hi - 1;
    auto chunk_tiles = [&](int64_t cc) { return min(K, ntiles - cc * K); };
    // a chunk's first tile is its first: forward where it has more than one tile
    tb_load<T>(cur, p, rows, c * K * TILE_T, q, chunk_tiles(c) == 1);
    for (; c >= c_lo; --c) {
        const int64_t c0 = c * K, nt = chunk_tiles(c);
        float h[4];
        if (c > 0) {
            const float4 v = *(const float4 *)(p.ckpt + ((c - 1) * BD + row) * TILE_N + 4 * l);
            h[0] = v.x, h[1] = v.y, h[2] = v.z, h[3] = v.w;
            if (SEG && hseg != nullptr && c > c_lo) {
                // a checkpoint inside the segment holds the segment's own state (from zero):
                // add exp(A T) times the segment's start state
                const float t = p.ckpt_dt[(c - 1) * BD + row];
                const float4 w = *hseg;
                h[0] = fmaf(ex2_ftz(a2[0] * t), w.x, h[0]);
                h[1] = fmaf(ex2_ftz(a2[1] * t), w.y, h[1]);
                h[2] = fmaf(ex2_ftz(a2[2] * t), w.z, h[2]);
                h[3] = fmaf(ex2_ftz(a2[3] * t), w.w, h[3]);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                h[k] = p.initial_state ? p.initial_state[row * TILE_N + 4 * l + k] : 0.0f;
        }
        // forward over tiles c0 .. c0 + nt - 2: their start states to hsub
        for (int64_t j = 0; j + 1 < nt; ++j) {
            hsub[j * TILE_THREADS] = make_float4(h[0], h[1], h[2], h[3]);
            const bool next_full = j + 2 >= nt;
            tb_load<T>(nxt, p, rows, (c0 + j + 1) * TILE_T, q, next_full);
            __syncthreads();
            tb_stage<T>(sm, cur, p, rows, (c0 + j) * TILE_T, cs, q, db, false);
            cur = nxt;
            __syncthreads();
            tb_forward(sm, cs, l, a2, h, 0, TILE_T);
        }
        hsub[(nt - 1) * TILE_THREADS] = make_float4(h[0], h[1], h[2], h[3]);
        // backward over tiles c0 + nt - 1 .. c0
        for (int64_t j = nt - 1; j >= 0; --j) {
            const int64_t t0 = (c0 + j) * TILE_T;
            if (j > 0) {
                tb_load<T>(nxt, p, rows, t0 - TILE_T, q, true);
            } else if (c > c_lo) {
                tb_load<T>(nxt, p, rows, (c - 1) * K * TILE_T, q, chunk_tiles(c - 1) == 1);
            }
            __syncthreads();  // the previous tile's outputs are done with the shared memory
            tb_stage<T>(sm, cur, p, rows, t0, cs, q, db, true);
            cur = nxt;  // the next tile's rows (in flight); this one's are staged
            __syncthreads();
            {  // the states at the group starts (a thread reads back only its own)
                const float4 hv = hsub[j * TILE_THREADS];
                float hgr[4] = {hv.x, hv.y, hv.z, hv.w};
                sm.hg[0][tid] = hv;
#pragma unroll
                for (int gi = 1; gi < TB_NG; ++gi) {
                    tb_forward(sm, cs, l, a2, hgr, (gi - 1) * TB_G, gi * TB_G);
                    sm.hg[gi][tid] = make_float4(hgr[0], hgr[1], hgr[2], hgr[3]);
                }
            }
#pragma unroll 1
            for (int gi = TB_NG - 1; gi >= 0; --gi) {
                const float4 hv = sm.hg[gi][tid];
                const float hgr[4] = {hv.x, hv.y, hv.z, hv.w};
                tb_group<HAS_Z>(sm, sm.red[buf], cs, l, a, a2, hgr, gi * TB_G, gn, dA);
                __syncthreads();
                tb_group_atomics(p, blk, sm.red[buf], t0 + gi * TB_G);
                buf ^= 1;
            }
            tb_outputs(sm, p, t0, cs, q, row, Dd, dD, dbs);
        }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        atomicAdd(p.dA + d * TILE_N + 4 * l + k, dA[k]);
        if (p.dinitial_state && sg == 0) p.dinitial_state[row * TILE_N + 4 * l + k] = gn[k];
    }
#pragma unroll
    for (int m = 2; m >= 1; m /= 2) {
        dD += __shfl_xor_sync(SBWD_FULL, dD, m);
        dbs += __shfl_xor_sync(SBWD_FULL, dbs, m);
    }
    if (q == 0) {
        if (p.dD) atomicAdd(p.dD + d, dD);
        if (p.ddelta_bias) atomicAdd(p.ddelta_bias + d, dbs);
    }
}

#endif
