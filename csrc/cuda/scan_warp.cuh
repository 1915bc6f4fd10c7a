// scan_warp.cuh - the selective scan forward parallel over the sequence inside a warp
// (d_state 16, u / delta / z / B / C of one dtype, unit time strides and 16-byte aligned
// rows: the tiled kernel's conditions), included by scan.cu. SAMBA_EXT_SCAN_VARIANT=warp
// (K = 16 steps per lane) or warp8 (K = 8) selects it.
//
// One warp per channel (b, d); blocks of WS_WARPS warps (channels d .. d + 3 of one batch,
// each warp on its own, no block barrier). The sequence is walked in chunks of 32 K steps;
// lane l owns the steps t0 + l K .. t0 + l K + K - 1 of a chunk. Per chunk:
//   1. the lane loads its K steps of u, delta (16-byte vectors), computes dt = softplus(delta +
//      bias) and du = dt u once per step, and starts y at D u;
//   2. per state n (A_n' = A[d, n] log2 e; B_n, C_n rows read from L1 / L2, shared by the
//      channels of a group):
//        a_i = 2^(dt_i A_n'), b_i = B_n,i du_i               (the only exponentials)
//        local:  H = sum of the lane's steps from a zero state (H = a_i H + b_i)
//                and the lane's decay E = 2^(A_n' sum_i dt_i)   (one more exponential per K)
//        warp:   inclusive scan of (E, H) over the lanes with (E1, H1) o (E2, H2) =
//                (E1 E2, E2 H1 + H2): five shuffle steps; the lane's start state is
//                h0 = E_prev c + H_prev (c the chunk's carry-in, (1, 0) before lane 0)
//        output: h = a_i h + b_i from h0 again, y_i += C_n,i h (no exponential recomputed)
//        carry:  the last lane's end state, broadcast
//   3. the gate y *= silu(z), the store, and after the last chunk the final state.
// Steps past the end of the sequence get dt = du = 0 (a = 1, b = 0: the state is unchanged).
//
// Count per (state, step), K = 16: FMUL dt A', MUFU.EX2, unpack B, FMUL B du, FFMA H (pass 1);
// FFMA h, unpack C, FFMA y (pass 2) = 8, plus the warp scan (5 x (2 SHFL + FMUL + FFMA +
// select) + 3 SHFL per 16 steps, ~1.7) and the per-step work over 16 states (softplus 3 MUFU,
// gate 2 MUFU, loads, stores, ~1.3): ~11 issue slots against 8 per exponential at the MUFU
// rate, i.e. ~1.35x the exp floor where issue-bound, ~1.3x where MUFU-bound (21 / 16).
// Unlike the tiled kernel (4 threads per channel, the sequence in order) the parallelism does
// not depend on the batch: batch 1 x 4096 channels is 4096 warps (31 per multiprocessor on
// the H200), and no exponential is computed twice (a chunked two-pass scheme recomputes them).
#ifndef SAMBA_SCAN_WARP_CUH
#define SAMBA_SCAN_WARP_CUH

#include "scan_common.cuh"

#define WS_WARPS 4   // warps (channels) per block
#define WS_N 16      // d_state

// K consecutive elements of one row as K / 8 Vec8 pieces (16-byte loads when the lane's steps
// are all inside the sequence, element loads with zeros past the end otherwise).
template <int K, typename T> struct RowK {
    Vec8<T> v[K / 8];
    __device__ __forceinline__ void load(const void *p, int64_t i, int n) {
        if (n >= K) {
#pragma unroll
            for (int j = 0; j < K / 8; ++j) v[j].vload(p, i + 8 * j);
        } else {
#pragma unroll
            for (int j = 0; j < K / 8; ++j) v[j].sload(p, i + 8 * j, 1, n - 8 * j);
        }
    }
    __device__ __forceinline__ float get(int s) const { return v[s / 8].get(s % 8); }
};

template <int K, typename T>
__global__ void __launch_bounds__(WS_WARPS * 32)
scan_warp_kernel(samba_cu_scan_args p) {
    const int lane = threadIdx.x % 32;
    const int64_t idx = blockIdx.x * (int64_t)WS_WARPS + threadIdx.x / 32;  // b * dim + d
    if (idx >= p.batch * p.dim) return;  // the whole warp: no barrier below spans warps
    const int64_t b = idx / p.dim, d = idx % p.dim;
    const int64_t g = d / (p.dim / p.ngroups);
    const bool has_z = p.z.ptr != NULL;
    const float Dd = ldf_opt(p.D, d, 0.0f), db = ldf_opt(p.delta_bias, d, 0.0f);
    const int64_t u0 = b * p.u_s[0] + d * p.u_s[1], dl0 = b * p.delta_s[0] + d * p.delta_s[1];
    const int64_t z0 = b * p.z_s[0] + d * p.z_s[1], y0 = b * p.y_s[0] + d * p.y_s[1];
    const int64_t B0 = b * p.B_s[0] + g * p.B_s[1], C0 = b * p.C_s[0] + g * p.C_s[1];
    constexpr int CH = 32 * K;  // steps per chunk

    // the carry (state at the chunk's start): lane n holds state n (n < 16)
    float carry = 0.0f;
    if (lane < WS_N && p.initial_state) carry = p.initial_state[idx * WS_N + lane];
    const float a2_own = lane < WS_N ? ldf(p.A, d * WS_N + lane) * LOG2E_F : 0.0f;

    for (int64_t t0 = 0; t0 < p.seqlen; t0 += CH) {
        const int64_t ts = t0 + (int64_t)lane * K;
        const int nv = (int)max((int64_t)0, min((int64_t)K, p.seqlen - ts));
        float dt[K], du[K], y[K];
        {
            RowK<K, T> u, dl;
            u.load(p.u.ptr, u0 + ts, nv);
            dl.load(p.delta.ptr, dl0 + ts, nv);
#pragma unroll
            for (int i = 0; i < K; ++i) {
                float x = dl.get(i) + db;
                if (p.delta_softplus) x = softplus_fast(x);
                dt[i] = i < nv ? x : 0.0f;
                du[i] = dt[i] * u.get(i);
                y[i] = Dd * u.get(i);
            }
        }
        float sdt = 0.0f;
#pragma unroll
        for (int i = 0; i < K; ++i) sdt += dt[i];

        // B and C rows of state n + 1 are loaded while state n is computed
        RowK<K, T> Bn, Cn, Bx, Cx;
        Bn.load(p.B.ptr, B0 + ts, nv);
        Cn.load(p.C.ptr, C0 + ts, nv);
#pragma unroll 1
        for (int n = 0; n < WS_N; ++n) {
            const float a2 = __shfl_sync(0xffffffffu, a2_own, n);
            const float c_in = __shfl_sync(0xffffffffu, carry, n);
            if (n + 1 < WS_N) {
                Bx.load(p.B.ptr, B0 + (n + 1) * p.B_s[2] + ts, nv);
                Cx.load(p.C.ptr, C0 + (n + 1) * p.C_s[2] + ts, nv);
            }
            // pass 1: the exponentials, the lane's local sum and decay
            float a[K], bu[K], H = 0.0f;
#pragma unroll
            for (int i = 0; i < K; ++i) {
                a[i] = ex2_ftz(dt[i] * a2);
                bu[i] = Bn.get(i) * du[i];
                H = fmaf(a[i], H, bu[i]);
            }
            float E = ex2_ftz(sdt * a2);
            // warp: inclusive scan of (E, H) over the lanes, earlier lanes applied first
#pragma unroll
            for (int off = 1; off < 32; off *= 2) {
                const float Eu = __shfl_up_sync(0xffffffffu, E, off);
                const float Hu = __shfl_up_sync(0xffffffffu, H, off);
                if (lane >= off) {
                    H = fmaf(E, Hu, H);
                    E *= Eu;
                }
            }
            // this lane's start state: the previous lane's inclusive (E, H) applied to c_in
            float Ep = __shfl_up_sync(0xffffffffu, E, 1), Hp = __shfl_up_sync(0xffffffffu, H, 1);
            if (lane == 0) {
                Ep = 1.0f;
                Hp = 0.0f;
            }
            float h = fmaf(Ep, c_in, Hp);
            const float c_out = __shfl_sync(0xffffffffu, fmaf(E, c_in, H), 31);
            if (lane == n) carry = c_out;
            // pass 2: the states of the lane's steps, their share of y
#pragma unroll
            for (int i = 0; i < K; ++i) {
                h = fmaf(a[i], h, bu[i]);
                y[i] = fmaf(Cn.get(i), h, y[i]);
            }
            Bn = Bx;
            Cn = Cx;
        }
        // gate and store
        if (has_z) {
            RowK<K, T> z;
            z.load(p.z.ptr, z0 + ts, nv);
#pragma unroll
            for (int i = 0; i < K; ++i) y[i] *= silu_fast(z.get(i));
        }
#pragma unroll
        for (int i = 0; i < K; ++i)
            if (i < nv) stf(p.y, y0 + (ts + i) * p.y_s[2], y[i]);
    }
    if (p.final_state && lane < WS_N) p.final_state[idx * WS_N + lane] = carry;
}

#endif
