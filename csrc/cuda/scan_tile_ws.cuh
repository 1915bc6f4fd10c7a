// scan_tile_ws.cuh - the tiled selective scan with specialised warps (variant "tilews"),
// included by scan.cu after scan_tile.cuh (whose loads, helpers and conditions it shares).
//
// The tiled kernel (scan_tile.cuh) runs its three phases (staging + softplus, scan, output)
// one after the other in every warp, separated by barriers: where a multiprocessor holds one
// or two blocks (batch 1), the exp unit idles during the staging and output phases and the
// barriers drain the pipelines. Here a block has 4 scan warps (128 threads: CPB channels x
// LPC threads) and 2 I/O warps (64 threads), and the tiles of WS_T steps flow through a
// two-deep pipeline with one barrier per tile: in iteration j the scan warps scan tile j - 1
// while the I/O warps finish tile j - 2 (sum of the partial y, D skip, gate, store) and stage
// tile j (B / C as float32; dt, du, u, z per (channel, step)), having loaded tile j + 1's rows
// into registers. Buffers alternate with the tile's parity: the scan reads the staged tile
// j - 1 and writes partial y of j - 1, the I/O warps read tile j - 2's partial y and (u, z)
// and overwrite tile j - 2's staging slots with tile j (each slot written and read by the
// same I/O thread). Instruction mix per state-step of the scan warps as in scan_tile.cuh
// (5 + 3.25 / NPL); the softplus / gate MUFU work now overlaps the scan's.
#ifndef SAMBA_SCAN_TILE_WS_CUH
#define SAMBA_SCAN_TILE_WS_CUH

#include "scan_tile.cuh"

#define WS_T 16                        // steps per tile
#define WS_SCAN 128                    // scan threads
#define WS_IO 64                       // I/O threads
#define WS_THREADS (WS_SCAN + WS_IO)

template <int NPL> struct WsCfg {
    static constexpr int LPC = 16 / NPL;
    static constexpr int CPB = WS_SCAN / LPC;  // channels per block: 32 or 16
    static constexpr int QPR = WS_T / 8;       // 8-step pieces per row and tile
    static constexpr int PIECES = CPB * QPR;   // u / delta / z pieces per tile
    static constexpr int ES = WS_T + 1;        // staged row stride (float4)
    static constexpr int YS = WS_T + 4;        // partial-y row stride (floats)
    static_assert(NPL == 2 || NPL == 4, "2 or 4 states per thread");
    static_assert(PIECES <= WS_IO, "one u / delta / z piece per I/O thread at most");
    static_assert(32 * QPR == WS_IO, "one B / C piece per I/O thread");
};

template <int NPL> struct WsSmem {
    float4 ew[2][WsCfg<NPL>::CPB][WsCfg<NPL>::ES];  // (dt, du, u, z) per (channel, step)
    __align__(16) float bc[2][WS_T][32];             // as TileSmem::bc
    __align__(16) float yp[2][WsCfg<NPL>::CPB * WsCfg<NPL>::LPC * WsCfg<NPL>::YS];
};

template <int NPL, typename T>
__global__ void __launch_bounds__(WS_THREADS)
scan_tile_ws_kernel(samba_cu_scan_args p) {
    using Cfg = WsCfg<NPL>;
    constexpr int LPC = Cfg::LPC, CPB = Cfg::CPB, QPR = Cfg::QPR;
    __shared__ WsSmem<NPL> sm;
    const int tid = threadIdx.x;
    const bool scanner = tid < WS_SCAN;  // warps 0-3 scan, warps 4-5 do the I/O
    const int64_t blocks_per_row = p.dim / CPB;
    const int64_t b = blockIdx.x / blocks_per_row;
    const int64_t d0 = (blockIdx.x % blocks_per_row) * CPB;
    const int64_t g = d0 / (p.dim / p.ngroups);  // every channel of the block: same group
    const bool has_z = p.z.ptr != NULL;
    const int64_t ntiles = (p.seqlen + WS_T - 1) / WS_T;

    // scan role: channel cs, states n0 .. n0 + NPL - 1
    const int cs = scanner ? tid / LPC : 0, l = tid % LPC, n0 = l * NPL;
    const int64_t idx = b * p.dim + d0 + cs;
    float a2[NPL], h[NPL];
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        a2[k] = ldf(p.A, (d0 + cs) * TILE_N + n0 + k) * LOG2E_F;
        h[k] = scanner && p.initial_state ? p.initial_state[idx * TILE_N + n0 + k] : 0.0f;
    }
    // I/O role: piece (channel cp, steps q * 8 ..) if iot < PIECES; B / C row r, same steps
    const int iot = scanner ? 0 : tid - WS_SCAN;
    const bool piece = !scanner && iot < Cfg::PIECES;
    const int cp = piece ? iot / QPR : 0, q = iot % QPR;
    const int64_t dp = d0 + cp;
    const float Dd = ldf_opt(p.D, dp, 0.0f), db = ldf_opt(p.delta_bias, dp, 0.0f);
    const int r = iot / QPR;
    const bool isB = r < TILE_N;
    const int rn = r % TILE_N;
    const int bc_slot = (rn / NPL) * 2 * NPL + (isB ? 0 : NPL) + rn % NPL;
    const int64_t bcrow = isB ? b * p.B_s[0] + g * p.B_s[1] + rn * p.B_s[2]
                              : b * p.C_s[0] + g * p.C_s[1] + rn * p.C_s[2];
    const TileRows rows = {b * p.u_s[0] + dp * p.u_s[1], b * p.delta_s[0] + dp * p.delta_s[1],
                           b * p.z_s[0] + dp * p.z_s[1], bcrow, isB ? p.B.ptr : p.C.ptr,
                           p.seqlen};
    const int64_t y0 = b * p.y_s[0] + dp * p.y_s[1];

    TileRegs<T> nxt;
    if (!scanner) tile_load<WS_T, T>(nxt, p, rows, 0, piece, q, has_z);
    for (int64_t j = 0; j <= ntiles + 1; ++j) {
        if (scanner) {
            const int64_t k = j - 1;  // scan tile k
            if (k >= 0 && k < ntiles) {
                const int buf = (int)(k & 1);
                float *yrow = sm.yp[buf] + (cs * LPC + l) * Cfg::YS;
#pragma unroll
                for (int t4 = 0; t4 < WS_T; t4 += 4) {
                    float y4[4];
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) {
                        const int t = t4 + jj;
                        const float2 dd = *(const float2 *)&sm.ew[buf][cs][t];
                        float bv[NPL], cv[NPL];
                        const float4 *bcp = (const float4 *)&sm.bc[buf][t][l * 2 * NPL];
                        if constexpr (NPL == 4) {
                            const float4 w = bcp[0], x = bcp[1];
                            bv[0] = w.x; bv[1] = w.y; bv[2] = w.z; bv[3] = w.w;
                            cv[0] = x.x; cv[1] = x.y; cv[2] = x.z; cv[3] = x.w;
                        } else {
                            const float4 w = bcp[0];
                            bv[0] = w.x; bv[1] = w.y; cv[0] = w.z; cv[1] = w.w;
                        }
                        float y = 0.0f;
#pragma unroll
                        for (int kk = 0; kk < NPL; ++kk) {
                            h[kk] = fmaf(ex2_ftz(dd.x * a2[kk]), h[kk], bv[kk] * dd.y);
                            y = fmaf(h[kk], cv[kk], y);
                        }
                        y4[jj] = y;
                    }
                    *(float4 *)(yrow + t4) = make_float4(y4[0], y4[1], y4[2], y4[3]);
                }
            }
        } else {
            TileRegs<T> cur = nxt;  // tile j's rows (loaded in the previous iteration)
            if (j + 1 < ntiles) tile_load<WS_T, T>(nxt, p, rows, (j + 1) * WS_T, piece, q, has_z);
            const int64_t ke = j - 2;  // output of tile ke (its scan ended at the last barrier)
            if (piece && ke >= 0 && ke < ntiles) {
                const int buf = (int)(ke & 1);
                float ys[8];
#pragma unroll
                for (int s = 0; s < 8; ++s) ys[s] = 0.0f;
#pragma unroll
                for (int ll = 0; ll < LPC; ++ll) {
                    const float4 *src =
                        (const float4 *)(sm.yp[buf] + (cp * LPC + ll) * Cfg::YS + q * 8);
                    const float4 a = src[0], c = src[1];
                    ys[0] += a.x; ys[1] += a.y; ys[2] += a.z; ys[3] += a.w;
                    ys[4] += c.x; ys[5] += c.y; ys[6] += c.z; ys[7] += c.w;
                }
#pragma unroll
                for (int s = 0; s < 8; ++s) {
                    const int64_t t = ke * WS_T + q * 8 + s;
                    const float4 e = sm.ew[buf][cp][q * 8 + s];
                    if (t < p.seqlen) {
                        float y = fmaf(Dd, e.z, ys[s]);
                        if (has_z) y *= silu_ftz(e.w);
                        stf(p.y, y0 + t * p.y_s[2], y);
                    }
                }
            }
            if (j < ntiles) {  // stage tile j into buffer j & 1 (tile j - 2's, read above)
                const int buf = (int)(j & 1);
                const int64_t t0 = j * WS_T;
                if (piece) {
#pragma unroll
                    for (int s = 0; s < 8; ++s) {
                        float x = cur.dl.get(s) + db;
                        if (p.delta_softplus) x = softplus_ftz(x);
                        const float dt = t0 + q * 8 + s < p.seqlen ? x : 0.0f;
                        const float u = cur.u.get(s);
                        sm.ew[buf][cp][q * 8 + s] =
                            make_float4(dt, dt * u, u, has_z ? cur.z.get(s) : 0.0f);
                    }
                }
#pragma unroll
                for (int s = 0; s < 8; ++s) sm.bc[buf][q * 8 + s][bc_slot] = cur.bc.get(s);
            }
        }
        __syncthreads();
    }
    if (scanner && p.final_state) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) p.final_state[idx * TILE_N + n0 + k] = h[k];
    }
}

#endif
