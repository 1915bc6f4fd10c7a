// scan_tile2.cuh - the tiled selective scan forward with less shared-memory traffic
// (SAMBA_EXT_SCAN_VARIANT=tile2; included by scan.cu after scan_tile.cuh, whose loaders,
// staging roles and math it shares). Same blocks, roles, tiles and results as
// scan_tile_kernel<4, T> (4 threads per channel, 4 states each, 32 channels per block, tiles
// of 32 steps); what changes is how the partial outputs and B / C pass through shared memory.
//
// Why: a static count of scan_tile_kernel's shared-memory wavefronts per warp and tile (from
// its sm_90 SASS and the address patterns) gives about 240, about as many as the block's
// exponentials take on the exp unit, and both go through the same MIO queue:
//   scan loop   128  (per 16 steps: 16 LDS.64 (dt, du), 32 LDS.128 (B, C; broadcast),
//                     4 STS.128 of partial y, 4 wavefronts each)
//   staging      48  (8 STS.64 of (dt, du), 2 each; 8 STS.32 of B / C, 4-way bank conflict)
//   output       64  (8 LDS.128 of the 4 threads' partial y, 8-way conflict)
// This kernel:
//   * reads and writes (dt, du) two steps per 16-byte access (rows of 34 float2);
//   * sums the 4 threads' partial y of a channel in registers, a reduce-scatter over the
//     4 lanes (3 shuffles per 4 steps; lane l ends with the whole y of step t4 + l), and
//     stores one float per (channel, step), conflict-free (row stride 36 floats);
//   * reads them back in the output role with 2 conflict-free LDS.128 per 8-step piece;
//   * stores y 8 steps per 16-byte store (where y's rows are aligned) instead of one 2-byte
//     store per step with a dtype branch each (8 store instructions per warp and tile, each
//     touching 16 sectors, down to 1);
//   * stages B / C with the 16-byte chunks of each step's row XOR-swizzled by the piece index
//     (chunk c of step t at c ^ f((t / 8) % 4), f = 0, 1, 4, 5), so that the 32 lanes of a
//     staging warp write 32 different banks;
// about 144 wavefronts per warp and tile (-40%: scan loop 112 = per 16 steps 8 LDS.128 (dt, du),
// 32 LDS.128 (B, C), 12 SHFL, 4 STS.32; staging 24; output 8), and 126 shared-memory / shuffle
// instructions against 128. The exponentials, the arithmetic per state
// and the global traffic are those of scan_tile_kernel; y is summed over the states in
// another order (float32 rounding only).
#ifndef SAMBA_SCAN_TILE2_CUH
#define SAMBA_SCAN_TILE2_CUH

#include "scan_tile.cuh"
#include "vecio.cuh"

#define TILE2_LPC 4                           // threads per channel (4 states each)
#define TILE2_CPB (TILE_THREADS / TILE2_LPC)  // 32 channels per block
#define TILE2_YS (TILE_T + 4)                 // y row stride (floats): 16-byte rows, 4 banks apart

struct Tile2Smem {
    // (dt, du) of (channel, step); rows of 34 float2 (16-byte aligned, 4 banks apart), read
    // and written two steps per 16-byte access
    __align__(16) float2 dtdu[TILE2_CPB][TILE_T + 2];
    // bc[t][4 * (c ^ swz(t)) + j]: 16-byte chunk c of step t's row (chunk 2l: B[4l .. 4l+3],
    // chunk 2l + 1: C[4l .. 4l+3]), as in TileSmem<4> with the chunks swizzled
    __align__(16) float bc[TILE_T][32];
    __align__(16) float y[TILE2_CPB][TILE2_YS];  // summed y of (channel, step)
};

// chunk swizzle of step t: 0, 1, 4, 5 for the 8-step pieces q = 0..3 of a tile. A staging warp
// writes two chunks c, c ^ 2 of each step for the 4 pieces; {f(q), f(q) ^ 2} covers 0..7 once.
__device__ __forceinline__ int tile2_swz(int t) {
    const int q = (t >> 3) & 3;
    return (q & 1) | ((q & 2) << 1);
}

// Chunks over the sequence (PASS 1 and 2; PASS 0 walks the whole sequence in one launch).
// With few channels (batch 1: 4096 channels x 4 threads are one warp per scheduler) the
// sequence is cut into nchunks chunks of chunk_len steps (a multiple of TILE_T) and the
// blocks of every chunk run at once:
//   PASS 1 (chunks 0 .. nchunks - 2): each chunk scanned from a zero state (chunk 0 from the
//     initial state, which it also copies to start0), without outputs; stores its end state
//     and its sum of dt (the chunk's decay is exp(A * sum dt) per state);
//   PASS 2 (every chunk): the true start state composed from those,
//     h(c) = exp(A * sum_dt(c - 1)) * h(c - 1) + end(c - 1), h(1) = end(0) (exact), then the
//     chunk's scan with outputs; the last chunk writes the final state.
// Pass 1 repeats the exponentials of all chunks but the last ((2 - 1 / nchunks) x the floor
// in all), in exchange for nchunks x the warps.
struct Tile2Chunks {
    int64_t chunk_len;  // steps per chunk (PASS 1, 2)
    int nchunks;
    float *start0;  // (B*D, 16) copy of the initial state (zeros without one)
    float *ends;    // (nchunks - 1, B*D, 16) end states of pass 1
    float *sums;    // (nchunks - 1, B*D) sums of dt of pass 1 (chunk 0's unused)
};

template <typename T, int PASS>
__global__ void __launch_bounds__(TILE_THREADS)
scan_tile2_kernel(samba_cu_scan_args p, Tile2Chunks ck) {
    constexpr int NPL = 4, LPC = TILE2_LPC, CPB = TILE2_CPB, QPR = TILE_T / 8;
    constexpr bool WANT_Y = PASS != 1;
    static_assert(CPB * QPR == TILE_THREADS, "one u / delta / z piece per thread");
    __shared__ Tile2Smem sm;
    const int tid = threadIdx.x;
    const int64_t BD = p.batch * p.dim, nb = BD / CPB;  // blocks per chunk
    const int chunk = PASS == 0 ? 0 : (int)(blockIdx.x / nb);
    const TileBlock blk = tile_block(p, CPB, PASS == 0 ? (int64_t)blockIdx.x : blockIdx.x % nb);
    const int64_t b = blk.b, d0 = blk.d0, g = blk.g;
    const int64_t t_begin = PASS == 0 ? 0 : chunk * ck.chunk_len;
    const int64_t t_end = PASS == 0 ? p.seqlen : min(p.seqlen, t_begin + ck.chunk_len);
    const bool has_z = WANT_Y && p.z.ptr != NULL;

    // scan role: channel cs, states n0 .. n0 + NPL - 1
    const int cs = tid / LPC, l = tid % LPC, n0 = l * NPL;
    const int64_t ds = d0 + cs, idx = b * p.dim + ds;
    float a2[NPL], h[NPL];
    tile_state_init<NPL>(p, ds, idx, n0, a2, h);  // h: the initial state (0 without one)
    if (PASS == 1) {
        if (chunk == 0) {
#pragma unroll
            for (int k = 0; k < NPL; ++k) ck.start0[idx * TILE_N + n0 + k] = h[k];
        } else {
#pragma unroll
            for (int k = 0; k < NPL; ++k) h[k] = 0.0f;
        }
    } else if (PASS == 2) {
        if (chunk == 0) {  // the copy: the last chunk may be overwriting the initial state
#pragma unroll
            for (int k = 0; k < NPL; ++k) h[k] = ck.start0[idx * TILE_N + n0 + k];
        } else {
            chunk_start_state<NPL>(ck.ends, ck.sums, BD, idx, n0, chunk, a2, h);
        }
    }
    float sum_dt = 0.0f;  // pass 1: the chunk's sum of dt (every lane of the channel)
    // piece role (every thread): channel cp, steps q * 8 .. q * 8 + 7 of each tile
    const int cp = tid / QPR, q = tid % QPR;
    const int64_t dp = d0 + cp;
    const float Dd = ldf_opt(p.D, dp, 0.0f), db = ldf_opt(p.delta_bias, dp, 0.0f);
    // B / C staging role: row r (B rows 0..15, then C rows), steps q * 8 .. q * 8 + 7; its
    // value of step t goes to chunk (2 (rn / 4) + isC) ^ swz(t), word rn % 4
    const int r = tid / QPR;
    const bool isB = r < TILE_N;
    const bool has_bc = WANT_Y || isB;  // pass 1 needs no C
    const int rn = r % TILE_N;
    const int bc_chunk = 2 * (rn / NPL) + (isB ? 0 : 1), bc_word = rn % NPL;
    const int64_t bcrow = isB ? b * p.B_s[0] + g * p.B_s[1] + rn * p.B_s[2]
                              : b * p.C_s[0] + g * p.C_s[1] + rn * p.C_s[2];
    const TileRows rows = {b * p.u_s[0] + dp * p.u_s[1], b * p.delta_s[0] + dp * p.delta_s[1],
                           b * p.z_s[0] + dp * p.z_s[1], bcrow, isB ? p.B.ptr : p.C.ptr,
                           t_end};
    const int64_t y0 = b * p.y_s[0] + dp * p.y_s[1];
    // y written 8 steps per vector store where its rows allow (unit time stride, 16-byte
    // aligned base and row starts), else element by element
    const int64_t y_item = p.y.dtype == SAMBA_CU_F32 ? 4 : 2;
    const bool y_vec = p.y_s[2] == 1 && ((uintptr_t)p.y.ptr & 15) == 0 &&
                       ((p.y_s[1] * y_item) & 15) == 0 && ((p.y_s[0] * y_item) & 15) == 0 &&
                       (p.y.dtype == SAMBA_CU_F32 || p.y.dtype == SAMBA_CU_F16 ||
                        p.y.dtype == SAMBA_CU_BF16);
    // reduce-scatter of the partial y over the 4 lanes of a channel: bit 1 of l picks the
    // half of the 4 steps kept in round 1, bit 0 the step kept in round 2
    const bool hi1 = (l & 2) != 0, hi0 = (l & 1) != 0;

    TileRegs<T> cur, nxt;
    tile_load<TILE_T, T>(cur, p, rows, t_begin, true, q, has_z, has_bc);
    for (int64_t t0 = t_begin; t0 < t_end; t0 += TILE_T) {
        if (t0 + TILE_T < t_end)  // the next tile's rows, in flight during this one
            tile_load<TILE_T, T>(nxt, p, rows, t0 + TILE_T, true, q, has_z, has_bc);
        __syncthreads();  // the previous tile's scan and output are done with the smem
#pragma unroll
        for (int s = 0; s < 8; s += 2) {
            float dt2[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float x = cur.dl.get(s + e) + db;
                if (p.delta_softplus) x = softplus_ftz(x);
                dt2[e] = t0 + q * 8 + s + e < t_end ? x : 0.0f;
            }
            *(float4 *)&sm.dtdu[cp][q * 8 + s] =
                make_float4(dt2[0], dt2[0] * cur.u.get(s), dt2[1], dt2[1] * cur.u.get(s + 1));
        }
        if (has_bc) {
            const int swz = tile2_swz(q * 8);  // the same for the 8 steps of the piece
#pragma unroll
            for (int s = 0; s < 8; ++s)
                sm.bc[q * 8 + s][4 * (bc_chunk ^ swz) + bc_word] = cur.bc.get(s);
        }
        __syncthreads();
        // scan of the tile (past the end: dt = du = 0 and B = C = 0, h unchanged)
#pragma unroll 4
        for (int t4 = 0; t4 < TILE_T; t4 += 4) {
            const int swz = tile2_swz(t4);  // t4 .. t4 + 3 lie in one 8-step piece
            float y4[4];
            const float4 dd01 = *(const float4 *)&sm.dtdu[cs][t4];
            const float4 dd23 = *(const float4 *)&sm.dtdu[cs][t4 + 2];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int t = t4 + j;
                const float2 dd = j == 0 ? make_float2(dd01.x, dd01.y)
                                  : j == 1 ? make_float2(dd01.z, dd01.w)
                                  : j == 2 ? make_float2(dd23.x, dd23.y)
                                           : make_float2(dd23.z, dd23.w);
                const float4 w = *(const float4 *)&sm.bc[t][4 * ((2 * l) ^ swz)];
                const float bv[4] = {w.x, w.y, w.z, w.w};
                if (WANT_Y) {
                    const float4 x = *(const float4 *)&sm.bc[t][4 * ((2 * l + 1) ^ swz)];
                    const float cv[4] = {x.x, x.y, x.z, x.w};
                    y4[j] = tile_step<NPL>(h, a2, dd, bv, cv);
                } else {  // the states only (no C, no output)
                    tile_step<NPL>(h, a2, dd, bv, bv);
                    sum_dt += dd.x;
                }
            }
            if (WANT_Y) {
                // round 1 (lanes l, l ^ 2): keep steps 2 hi1, 2 hi1 + 1, send the other two
                const float k0 = hi1 ? y4[2] : y4[0], k1 = hi1 ? y4[3] : y4[1];
                const float s0 = hi1 ? y4[0] : y4[2], s1 = hi1 ? y4[1] : y4[3];
                const float p0 = k0 + __shfl_xor_sync(0xffffffffu, s0, 2);
                const float p1 = k1 + __shfl_xor_sync(0xffffffffu, s1, 2);
                // round 2 (lanes l, l ^ 1): keep step 2 hi1 + hi0 = l
                const float yl = (hi0 ? p1 : p0) + __shfl_xor_sync(0xffffffffu, hi0 ? p0 : p1, 1);
                sm.y[cs][t4 + l] = yl;
            }
        }
        if (WANT_Y) {
            __syncthreads();
            // output: D skip, gate, store
            const float4 *src = (const float4 *)&sm.y[cp][q * 8];
            const float4 a = src[0], c = src[1];
            float ys[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                ys[s] = fmaf(Dd, cur.u.get(s), ys[s]);
                if (has_z) ys[s] *= silu_ftz(cur.z.get(s));
            }
            const int64_t tq = t0 + q * 8;
            if (y_vec && tq + 8 <= t_end) {
                stv<8>(p.y, y0 + tq, ys);  // one 16-byte store (two for float32)
            } else {
#pragma unroll
                for (int s = 0; s < 8; ++s)
                    if (tq + s < t_end) stf(p.y, y0 + (tq + s) * p.y_s[2], ys[s]);
            }
        }
        cur = nxt;
    }
    if (PASS == 1) {
        if (chunk > 0 && l == 0) ck.sums[chunk * BD + idx] = sum_dt;
#pragma unroll
        for (int k = 0; k < NPL; ++k) ck.ends[(chunk * BD + idx) * TILE_N + n0 + k] = h[k];
    } else if (p.final_state && (PASS == 0 || chunk == ck.nchunks - 1)) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) p.final_state[idx * TILE_N + n0 + k] = h[k];
    }
}

#endif
