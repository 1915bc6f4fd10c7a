// scan_bwd_kernels.cuh - the kernels of the selective scan's backward (launched by
// scan_bwd.cu; the formulas are those of csrc/scan_bwd.c).
//
// Layout, as in the forward's split kernel (scan.cu): LPC = 4 or 8 consecutive threads
// share a (batch, channel) and each holds NPL = 16 / LPC of a 16-state slice; dstate > 16
// runs ceil(dstate / 16) slices as separate blocks (states past dstate are padding: A, B,
// C read as 0, so they stay 0 and add nothing). A block of SBWD_THREADS threads holds
// SBWD_THREADS / LPC channels of one (batch, group, slice), so its channels share B and C.
//
// The states h_{t-1} are needed in reverse order; they are recomputed, never stored for
// all steps (mamba's selective_scan_bwd does the same):
//   1. sbwd_ckpt_kernel walks the sequence forward and stores the state at the start of
//      every chunk of 8 * S steps (chunk 0 starts from the initial state, not stored).
//   2. sbwd_main_kernel walks the chunks in reverse. Per chunk it recomputes the states at
//      the start of each group of 8 steps from the chunk's checkpoint (into shared memory),
//      then walks the groups in reverse: it recomputes the group's 8 states and decay
//      factors e_t = exp(dt_t A) in registers and runs the adjoint recurrence
//      g_t = dy0_t C_t + e_{t+1} g_{t+1} backwards over them.
// Per step, the sums over the states (ddt, du and y0 for dz) are reduced over the LPC
// threads of a channel (a reduce-scatter: each thread finishes 8 / LPC "own" steps, like
// the forward), and the contributions to dB / dC over the block's channels by a warp
// reduce-scatter, shared memory across the warps, and one float32 atomic add per
// (block, state, step) into dB / dC. dA, dD and ddelta_bias are summed over the steps in
// registers and added atomically over the batch. With more than one slice, the per-step
// sums over the states are added atomically into a float32 workspace and
// sbwd_finish_kernel computes du, ddelta, dz, dD and ddelta_bias from them.
// exp is exp2 on the exp unit (ex2.approx, relative error ~2^-22), softplus / sigmoid use
// the fast intrinsics as in the forward; everything else is float32 arithmetic.
#ifndef SAMBA_SCAN_BWD_KERNELS_CUH
#define SAMBA_SCAN_BWD_KERNELS_CUH

#include "scan_common.cuh"

#define SBWD_THREADS 256
#define SBWD_SLICE 16                    // states per slice (LPC lanes x NPL states)
#define SBWD_WARPS (SBWD_THREADS / 32)
#define SBWD_RED_FLOATS (SBWD_WARPS * SPLIT_T * 32)  // one group's dB / dC partials
#define SBWD_FULL 0xffffffffu
struct SbwdParams {
    int64_t batch, dim, dstate, seqlen, ngroups;
    const void *u, *delta, *z, *dout, *B, *C;  // one dtype (the kernel's T)
    int64_t u_s[3], delta_s[3], z_s[3], dout_s[3], B_s[4], C_s[4];
    samba_cu_ref A, D, delta_bias;
    const float *initial_state, *dlast_state;
    samba_cu_ref du, ddelta, dz;  // (B, D, L) contiguous
    float *dA, *dB, *dC, *dD, *ddelta_bias, *dinitial_state;
    float *ckpt;   // (B*D, nchunks - 1, nslices * 16): states at the starts of chunks 1..
    float *acc;    // nslices > 1: (3, B*D*L) per-step sums over the states
    int64_t chunk_groups, nchunks;  // S groups of SPLIT_T steps per chunk
    int nslices, softplus, vec;     // vec: unit time strides, 16-byte aligned rows
    int vec_atomics;  // dB / dC by float4 atomics, 4 steps each (sm_90+; scan_bwd.cu decides)
    // the tiled kernels (scan_tile_bwd.cuh): tiles per checkpointed chunk; du / ddelta / dz
    // stored 8 steps per vector (seqlen a multiple of 8, 16-byte aligned bases)
    int64_t chunk_tiles;
    int vec_out;
    // their segments (several blocks per row, each over seg_chunks chunks; nsegs = 1: one):
    // ckpt_dt (nchunks - 1, B*D) the sum of dt from the segment start to each checkpoint
    // (whose state is then the segment's own, from zero); seg_g (nsegs - 1, B*D, 16) the
    // adjoint that segment s (>= 1) hands on from zero, seg_dt (nsegs - 1, B*D) its sum of dt;
    // seg_h (nsegs - 1, B*D, 16) the true state at the start of segment s (>= 1)
    float *ckpt_dt, *seg_g, *seg_dt, *seg_h;
    int64_t seg_chunks, nsegs;
};

// Which (batch, group, slice, channel, states) a thread works on.
template <int LPC> struct SbwdIdx {
    static constexpr int NPL = SBWD_SLICE / LPC, CPB = SBWD_THREADS / LPC;
    int lane, cw, slice;  // lane in the channel, channel in the warp
    int64_t b, g, d, n0;  // n0: this thread's first state
    bool active;          // false: a padding channel past dim / ngroups (computes, stores nothing)
    int64_t u0, dl0, z0, dy0, B0, C0;  // row bases (time index 0)
    __device__ __forceinline__ SbwdIdx(const SbwdParams &p) {
        lane = (int)(threadIdx.x % LPC);
        cw = (int)((threadIdx.x & 31u) / LPC);
        const int64_t dpg = p.dim / p.ngroups;
        g = blockIdx.y % p.ngroups;
        slice = (int)(blockIdx.y / p.ngroups);
        b = blockIdx.z;
        const int64_t c = (int64_t)blockIdx.x * CPB + threadIdx.x / LPC;
        active = c < dpg;
        d = g * dpg + (active ? c : dpg - 1);
        n0 = (int64_t)slice * SBWD_SLICE + lane * NPL;
        u0 = b * p.u_s[0] + d * p.u_s[1];
        dl0 = b * p.delta_s[0] + d * p.delta_s[1];
        z0 = b * p.z_s[0] + d * p.z_s[1];
        dy0 = b * p.dout_s[0] + d * p.dout_s[1];
        B0 = b * p.B_s[0] + g * p.B_s[1];
        C0 = b * p.C_s[0] + g * p.C_s[1];
    }
    __device__ __forceinline__ bool valid(int k, const SbwdParams &p) const {
        return n0 + k < p.dstate;
    }
};

// n <= SPLIT_T steps of one row from t0 (zeros past n); a 16-byte load when allowed.
template <typename T>
__device__ __forceinline__ void sbwd_load(Vec8<T> &v, const void *p, int64_t base, int64_t st,
                                          int64_t t0, int n, bool vec) {
    if (vec && n == SPLIT_T)
        v.vload(p, base + t0);
    else
        v.sload(p, base + t0 * st, st, n);
}

// dt of the group's steps (0 past n), each thread computing its 8 / LPC own steps and
// exchanging them by shuffles; also the softplus derivative of the own steps.
template <int LPC>
__device__ __forceinline__ void sbwd_dt(float (&dt)[SPLIT_T], float (&own_dt)[SPLIT_T / LPC],
                                        float (&own_sx)[SPLIT_T / LPC], const float (&x)[SPLIT_T / LPC],
                                        int lane, int n, bool softplus) {
    constexpr int OWN = SPLIT_T / LPC;
#pragma unroll
    for (int o = 0; o < OWN; ++o) {
        float v = x[o], sx = 1.0f;
        if (softplus) {
            v = softplus_fast(x[o]);
            sx = x[o] <= 20.0f ? sigmoid_fast(x[o]) : 1.0f;
        }
        own_dt[o] = lane * OWN + o < n ? v : 0.0f;  // past the end: dt 0 leaves h as it is
        own_sx[o] = sx;
    }
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s) dt[s] = __shfl_sync(SBWD_FULL, own_dt[s % OWN], s / OWN, LPC);
}

// The inputs of the forward recurrence over one group: n <= SPLIT_T steps from t0 of u and
// delta, and the thread's states of B (zeros past n and past dstate).
template <typename T, int NPL> struct SbwdFwdIn {
    Vec8<T> u, dl, bv[NPL];
};

template <typename T, int LPC>
__device__ __forceinline__ void sbwd_load_fwd(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                              int64_t t0, int n,
                                              SbwdFwdIn<T, SBWD_SLICE / LPC> &in) {
    constexpr int NPL = SBWD_SLICE / LPC;
    const bool vec = p.vec != 0;
    sbwd_load(in.u, p.u, ix.u0, p.u_s[2], t0, n, vec);
    sbwd_load(in.dl, p.delta, ix.dl0, p.delta_s[2], t0, n, vec);
#pragma unroll
    for (int k = 0; k < NPL; ++k)
        sbwd_load(in.bv[k], p.B, ix.B0 + (ix.valid(k, p) ? ix.n0 + k : 0) * p.B_s[2], p.B_s[3],
                  t0, ix.valid(k, p) ? n : 0, vec && ix.valid(k, p));
}

// Advance h over the n steps whose inputs are in `in` (the forward recurrence; nothing stored).
template <typename T, int LPC>
__device__ __forceinline__ void sbwd_forward_in(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                                const SbwdFwdIn<T, SBWD_SLICE / LPC> &in,
                                                const float (&a2)[SBWD_SLICE / LPC], float db,
                                                int n, float (&h)[SBWD_SLICE / LPC]) {
    constexpr int NPL = SBWD_SLICE / LPC, OWN = SPLIT_T / LPC;
    float x[OWN], own_dt[OWN], own_sx[OWN], dt[SPLIT_T];
#pragma unroll
    for (int o = 0; o < OWN; ++o) x[o] = pick(in.dl, ix.lane * OWN + o) + db;
    sbwd_dt<LPC>(dt, own_dt, own_sx, x, ix.lane, n, p.softplus != 0);
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s) {
        const float dtu = dt[s] * in.u.get(s);
#pragma unroll
        for (int k = 0; k < NPL; ++k)
            h[k] = ex2_ftz(dt[s] * a2[k]) * h[k] + in.bv[k].get(s) * dtu;
    }
}

// Advance h over n steps from t0, loading their inputs first.
template <typename T, int LPC>
__device__ __forceinline__ void sbwd_forward(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                             const float (&a2)[SBWD_SLICE / LPC], float db,
                                             int64_t t0, int n, float (&h)[SBWD_SLICE / LPC]) {
    SbwdFwdIn<T, SBWD_SLICE / LPC> in;
    sbwd_load_fwd<T, LPC>(p, ix, t0, n, in);
    sbwd_forward_in<T, LPC>(p, ix, in, a2, db, n, h);
}

// Reduce-scatter of v[0 .. 2 NPL) (dB then dC of the thread's states at one step) over the
// 32 / LPC channels of the warp: the thread of channel cw ends with the warp's sum of
// value cw (dB of state lane * NPL + cw for cw < NPL, else dC of lane * NPL + cw - NPL).
template <int LPC>
__device__ __forceinline__ float sbwd_reduce_channels(float (&v)[2 * (SBWD_SLICE / LPC)], int cw) {
    constexpr int CPW = 32 / LPC, NV = 2 * (SBWD_SLICE / LPC);
    static_assert(NV == CPW, "one value per channel of the warp");
#pragma unroll
    for (int m = CPW / 2, half = NV / 2; m >= 1; m /= 2, half /= 2) {
        const bool up = (cw & m) != 0;
#pragma unroll
        for (int k = 0; k < half; ++k) {
            const float send = up ? v[k] : v[k + half];
            const float keep = up ? v[k + half] : v[k];
            v[k] = keep + __shfl_xor_sync(SBWD_FULL, send, m * LPC);
        }
    }
    return v[0];
}

// Reduce-scatter of ys[0 .. SPLIT_T) over the LPC threads of a channel: thread `lane` ends
// with the sums of steps lane * OWN .. lane * OWN + OWN - 1 in ys[0 .. OWN).
template <int LPC>
__device__ __forceinline__ void sbwd_reduce_lanes(float (&ys)[SPLIT_T], int lane) {
#pragma unroll
    for (int m = LPC / 2, half = SPLIT_T / 2; m >= 1; m /= 2, half /= 2) {
        const bool up = (lane & m) != 0;
#pragma unroll
        for (int k = 0; k < half; ++k) {
            const float send = up ? ys[k] : ys[k + half];
            const float keep = up ? ys[k + half] : ys[k];
            ys[k] = keep + __shfl_xor_sync(SBWD_FULL, send, m, LPC);
        }
    }
}

// Per-thread accumulators of the main kernel.
template <int NPL> struct SbwdAcc {
    float gn[NPL];  // e_{t+1} g_{t+1}: the adjoint carried into the step being processed
    float dA[NPL];
    float dD, db;   // own steps' sums (one slice only)
};

// One group's inputs: those of the forward recurrence (u, delta, B), and dout, z (when given)
// and the thread's states of C (zeros past n and past dstate).
template <typename T, int NPL> struct SbwdIn {
    SbwdFwdIn<T, NPL> f;
    Vec8<T> dy, z, cv[NPL];
};

template <typename T, int LPC>
__device__ __forceinline__ void sbwd_load_group(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                                int64_t t0, int n,
                                                SbwdIn<T, SBWD_SLICE / LPC> &in) {
    constexpr int NPL = SBWD_SLICE / LPC;
    const bool vec = p.vec != 0;
    sbwd_load_fwd<T, LPC>(p, ix, t0, n, in.f);
    sbwd_load(in.dy, p.dout, ix.dy0, p.dout_s[2], t0, n, vec);
    if (p.z != nullptr) sbwd_load(in.z, p.z, ix.z0, p.z_s[2], t0, n, vec);
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        const bool ok = ix.valid(k, p);
        const int64_t nn = ok ? ix.n0 + k : 0;
        sbwd_load(in.cv[k], p.C, ix.C0 + nn * p.C_s[2], p.C_s[3], t0, ok ? n : 0, vec && ok);
    }
}

// The backward over one group: n <= SPLIT_T steps from t0 (inputs in `in`), states h_{t0-1}
// in hstart. red: this group's shared buffer (SBWD_RED_FLOATS floats).
template <typename T, int LPC>
__device__ __forceinline__ void sbwd_group(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                           const SbwdIn<T, SBWD_SLICE / LPC> &in,
                                           const float (&a)[SBWD_SLICE / LPC],
                                           const float (&a2)[SBWD_SLICE / LPC], float Dd,
                                           float db, int64_t t0, int n,
                                           const float (&hstart)[SBWD_SLICE / LPC],
                                           SbwdAcc<SBWD_SLICE / LPC> &acc, float *red) {
    constexpr int NPL = SBWD_SLICE / LPC, OWN = SPLIT_T / LPC;
    const bool has_z = p.z != nullptr;
    const Vec8<T> &u = in.f.u, &dl = in.f.dl, &z = in.z, &dy = in.dy;
    const Vec8<T>(&bv)[NPL] = in.f.bv;
    const Vec8<T>(&cv)[NPL] = in.cv;
    // own steps: dt, the softplus derivative, dy0 = dout silu(z), dout silu'(z)
    float x[OWN], own_dt[OWN], own_sx[OWN], own_dy0[OWN], own_dzf[OWN], dt[SPLIT_T];
#pragma unroll
    for (int o = 0; o < OWN; ++o) x[o] = pick(dl, ix.lane * OWN + o) + db;
    sbwd_dt<LPC>(dt, own_dt, own_sx, x, ix.lane, n, p.softplus != 0);
#pragma unroll
    for (int o = 0; o < OWN; ++o) {
        const int s = ix.lane * OWN + o;
        const float dyv = pick(dy, s);  // 0 past the end
        own_dy0[o] = dyv;
        own_dzf[o] = 0.0f;
        if (has_z) {
            const float zv = pick(z, s), sg = sigmoid_fast(zv);
            own_dzf[o] = dyv * sg * (1.0f + zv * (1.0f - sg));
            own_dy0[o] = dyv * zv * sg;
        }
    }
    float dy0[SPLIT_T];
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s)
        dy0[s] = __shfl_sync(SBWD_FULL, own_dy0[s % OWN], s / OWN, LPC);

    // the group's states hs[s + 1] = h_{t0+s} (hs[0] = h_{t0-1}) and factors e[s] = e_{t0+s}
    float hs[SPLIT_T + 1][NPL], e[SPLIT_T][NPL], ys[SPLIT_T];
#pragma unroll
    for (int k = 0; k < NPL; ++k) hs[0][k] = hstart[k];
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s) {
        const float dtu = dt[s] * u.get(s);
        float y = 0.0f;
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            e[s][k] = ex2_ftz(dt[s] * a2[k]);
            hs[s + 1][k] = fmaf(e[s][k], hs[s][k], bv[k].get(s) * dtu);
            y = fmaf(hs[s + 1][k], cv[k].get(s), y);
        }
        ys[s] = y;
    }

    // the adjoint recurrence, last step first. Steps past n (a partial last group) need no
    // test: their dt, u, dout, B and C were loaded as 0, so e = 1 and they pass the adjoint
    // through unchanged and add 0 to dA and to the sums (whose entries past n are never
    // stored). One branch-free block lets the compiler overlap each step's shuffles with the
    // next step's arithmetic.
    float s1[SPLIT_T], s2[SPLIT_T], bc[SPLIT_T];
#pragma unroll
    for (int s = SPLIT_T - 1; s >= 0; --s) {
        const float dtu = dt[s] * u.get(s);
        float v[2 * NPL], t1 = 0.0f, t2 = 0.0f;
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            const float g = fmaf(dy0[s], cv[k].get(s), acc.gn[k]);
            const float ge = g * e[s][k];
            const float geh = ge * hs[s][k];
            acc.dA[k] = fmaf(geh, dt[s], acc.dA[k]);
            t1 = fmaf(geh, a[k], t1);
            t2 = fmaf(g, bv[k].get(s), t2);
            v[k] = ix.active ? g * dtu : 0.0f;
            v[NPL + k] = ix.active ? dy0[s] * hs[s + 1][k] : 0.0f;
            acc.gn[k] = ge;
        }
        s1[s] = t1;
        s2[s] = t2;
        bc[s] = sbwd_reduce_channels<LPC>(v, ix.cw);
    }

    // sums over the channel's states for the own steps, then du, ddelta, dz
    sbwd_reduce_lanes<LPC>(s1, ix.lane);
    sbwd_reduce_lanes<LPC>(s2, ix.lane);
    if (has_z) sbwd_reduce_lanes<LPC>(ys, ix.lane);
    const int64_t BDL = p.batch * p.dim * p.seqlen;
#pragma unroll
    for (int o = 0; o < OWN; ++o) {
        const int s = ix.lane * OWN + o;
        if (!ix.active || s >= n) continue;
        const int64_t i = (ix.b * p.dim + ix.d) * p.seqlen + t0 + s;
        if (p.nslices > 1) {
            atomicAdd(p.acc + i, s1[o]);
            atomicAdd(p.acc + BDL + i, s2[o]);
            if (has_z) atomicAdd(p.acc + 2 * BDL + i, ys[o]);
            continue;
        }
        const float uv = pick(u, s);
        const float ddelta = fmaf(s2[o], uv, s1[o]) * own_sx[o];
        stf(p.du, i, fmaf(Dd, own_dy0[o], s2[o] * own_dt[o]));
        stf(p.ddelta, i, ddelta);
        if (has_z) stf(p.dz, i, own_dzf[o] * fmaf(Dd, uv, ys[o]));
        acc.dD = fmaf(own_dy0[o], uv, acc.dD);
        acc.db += ddelta;
    }

    // dB, dC: the warps' sums through shared memory, one atomic add per (state, step)
    const int wl = (int)(threadIdx.x & 31u), warp = (int)(threadIdx.x >> 5);
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s) red[(warp * SPLIT_T + s) * 32 + wl] = bc[s];
    __syncthreads();
    const int64_t N = p.dstate, L = p.seqlen;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (p.vec_atomics && n == SPLIT_T) {  // 4 consecutive steps per 16-byte atomic add
        for (int q = (int)threadIdx.x; q < 2 * SBWD_SLICE * SPLIT_T / 4; q += SBWD_THREADS) {
            const int s0 = (q % (SPLIT_T / 4)) * 4, slot = q / (SPLIT_T / 4);
            const int which = slot / SBWD_SLICE, nl = slot % SBWD_SLICE;
            const int cw = which * NPL + nl % NPL, src = cw * LPC + nl / NPL;
            const int64_t nabs = (int64_t)ix.slice * SBWD_SLICE + nl;
            if (nabs >= N) continue;
            float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int w = 0; w < SBWD_WARPS; ++w)
#pragma unroll
                for (int i = 0; i < 4; ++i) v[i] += red[(w * SPLIT_T + s0 + i) * 32 + src];
            float *dst = (which ? p.dC : p.dB) + ((ix.b * p.ngroups + ix.g) * N + nabs) * L;
            atomicAdd((float4 *)(dst + t0 + s0), make_float4(v[0], v[1], v[2], v[3]));
        }
        return;
    }
#endif
    for (int q = (int)threadIdx.x; q < 2 * SBWD_SLICE * SPLIT_T; q += SBWD_THREADS) {
        const int s = q % SPLIT_T, slot = q / SPLIT_T;  // slot: which * 16 + state in slice
        const int which = slot / SBWD_SLICE, nl = slot % SBWD_SLICE;
        const int cw = which * NPL + nl % NPL, src = cw * LPC + nl / NPL;
        const int64_t nabs = (int64_t)ix.slice * SBWD_SLICE + nl;
        if (s >= n || nabs >= N) continue;
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < SBWD_WARPS; ++w) v += red[(w * SPLIT_T + s) * 32 + src];
        float *dst = which ? p.dC : p.dB;
        atomicAdd(dst + ((ix.b * p.ngroups + ix.g) * N + nabs) * L + t0 + s, v);
    }
}

// Stores the states at the starts of chunks 1 .. nchunks-1.
template <typename T, int LPC>
__global__ void __launch_bounds__(SBWD_THREADS) sbwd_ckpt_kernel(SbwdParams p) {
    constexpr int NPL = SBWD_SLICE / LPC;
    const SbwdIdx<LPC> ix(p);
    float a2[NPL], h[NPL];
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        const bool ok = ix.valid(k, p);
        a2[k] = ok ? ldf(p.A, ix.d * p.dstate + ix.n0 + k) * LOG2E_F : 0.0f;
        h[k] = ok && p.initial_state
                   ? p.initial_state[(ix.b * p.dim + ix.d) * p.dstate + ix.n0 + k] : 0.0f;
    }
    const float db = ldf_opt(p.delta_bias, ix.d, 0.0f);
    const int64_t NS = (int64_t)p.nslices * SBWD_SLICE, K = p.chunk_groups * SPLIT_T;
    float *ck = p.ckpt + (ix.b * p.dim + ix.d) * (p.nchunks - 1) * NS + ix.n0;
    // The groups of the chunks before the last (all full), each group's inputs loaded while
    // the one before it is processed.
    const int64_t walk = (p.nchunks - 1) * K;
    SbwdFwdIn<T, NPL> cur, nxt;
    if (walk > 0) sbwd_load_fwd<T, LPC>(p, ix, 0, SPLIT_T, cur);
    for (int64_t t0 = 0; t0 < walk; t0 += SPLIT_T) {
        if (t0 + SPLIT_T < walk) sbwd_load_fwd<T, LPC>(p, ix, t0 + SPLIT_T, SPLIT_T, nxt);
        sbwd_forward_in<T, LPC>(p, ix, cur, a2, db, SPLIT_T, h);
        cur = nxt;  // after the last group: a copy never read
        if ((t0 + SPLIT_T) % K == 0 && ix.active) {
            const int64_t c = (t0 + SPLIT_T) / K - 1;  // h is the state at the start of chunk c + 1
#pragma unroll
            for (int k = 0; k < NPL; ++k) ck[c * NS + k] = h[k];
        }
    }
}

// The state at the start of chunk c: the checkpoint for c > 0, else the initial state (or 0).
template <int LPC>
__device__ __forceinline__ void sbwd_chunk_start(const SbwdParams &p, const SbwdIdx<LPC> &ix,
                                                 int64_t row, int64_t c,
                                                 float (&h)[SBWD_SLICE / LPC]) {
    constexpr int NPL = SBWD_SLICE / LPC;
    const int64_t NS = (int64_t)p.nslices * SBWD_SLICE;
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        if (c > 0)
            h[k] = p.ckpt[(row * (p.nchunks - 1) + c - 1) * NS + ix.n0 + k];
        else
            h[k] = ix.valid(k, p) && p.initial_state
                       ? p.initial_state[row * p.dstate + ix.n0 + k] : 0.0f;
    }
}

// The backward (see the top of the file). Dynamic shared memory: 2 * SBWD_RED_FLOATS
// floats (double-buffered dB / dC partials) + chunk_groups * NPL * SBWD_THREADS floats (the
// states at the group starts of the current chunk, private to each thread).
template <typename T, int LPC>
__global__ void __launch_bounds__(SBWD_THREADS) sbwd_main_kernel(SbwdParams p) {
    constexpr int NPL = SBWD_SLICE / LPC;
    extern __shared__ float sbwd_smem[];
    float *red = sbwd_smem;
    float *sub = sbwd_smem + 2 * SBWD_RED_FLOATS + threadIdx.x;  // [j * NPL + k] * SBWD_THREADS
    const SbwdIdx<LPC> ix(p);
    const int64_t N = p.dstate, L = p.seqlen, row = ix.b * p.dim + ix.d;
    float a[NPL], a2[NPL];
    SbwdAcc<NPL> acc;
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        const bool ok = ix.valid(k, p);
        a[k] = ok ? ldf(p.A, ix.d * N + ix.n0 + k) : 0.0f;
        a2[k] = a[k] * LOG2E_F;
        acc.gn[k] = ok && p.dlast_state ? p.dlast_state[row * N + ix.n0 + k] : 0.0f;
        acc.dA[k] = 0.0f;
    }
    acc.dD = acc.db = 0.0f;
    const float Dd = ldf_opt(p.D, ix.d, 0.0f);
    const float db = ldf_opt(p.delta_bias, ix.d, 0.0f);
    const int64_t K = p.chunk_groups * SPLIT_T;
    // With 8 lanes per channel and 16-bit inputs the registers allow loading one step ahead:
    // the next group's inputs (the groups are processed strictly backwards in time, so the
    // next one starts SPLIT_T steps earlier and is full) and the next chunk's starting state
    // are loaded before the current group is processed, so their latency overlaps its
    // arithmetic (bf16: 229 registers instead of 181, still one block per multiprocessor).
    // With 4 lanes (twice the states per thread) or float32 inputs (twice the bytes) the
    // kernel is at the register limit and loads on use.
    constexpr bool AHEAD = LPC == 8 && sizeof(T) == 2;
    SbwdIn<T, NPL> cur, nxt;
    float hck[NPL];  // AHEAD: the state at the start of the chunk processed next
    if constexpr (AHEAD) {
        const int64_t tl = (L - 1) / SPLIT_T * SPLIT_T;  // the first group processed
        sbwd_load_group<T, LPC>(p, ix, tl, (int)(L - tl), cur);
        sbwd_chunk_start<LPC>(p, ix, row, p.nchunks - 1, hck);
    }
    int parity = 0;
    for (int64_t c = p.nchunks - 1; c >= 0; --c) {
        const int64_t c0 = c * K, c1 = min(L, c0 + K);
        const int ng = (int)((c1 - c0 + SPLIT_T - 1) / SPLIT_T);
        float h[NPL];
        if constexpr (AHEAD) {
#pragma unroll
            for (int k = 0; k < NPL; ++k) h[k] = hck[k];
            if (c > 0) sbwd_chunk_start<LPC>(p, ix, row, c - 1, hck);
        } else {
            sbwd_chunk_start<LPC>(p, ix, row, c, h);
        }
        for (int j = 0; j < ng; ++j) {
#pragma unroll
            for (int k = 0; k < NPL; ++k) sub[(j * NPL + k) * SBWD_THREADS] = h[k];
            if (j + 1 < ng) sbwd_forward<T, LPC>(p, ix, a2, db, c0 + j * SPLIT_T, SPLIT_T, h);
        }
        for (int j = ng - 1; j >= 0; --j) {
            const int64_t t0 = c0 + j * SPLIT_T;
            const int n = (int)min((int64_t)SPLIT_T, c1 - t0);
#pragma unroll
            for (int k = 0; k < NPL; ++k) h[k] = sub[(j * NPL + k) * SBWD_THREADS];
            if constexpr (AHEAD) {
                if (t0 > 0) sbwd_load_group<T, LPC>(p, ix, t0 - SPLIT_T, SPLIT_T, nxt);
            } else {
                sbwd_load_group<T, LPC>(p, ix, t0, n, cur);
            }
            sbwd_group<T, LPC>(p, ix, cur, a, a2, Dd, db, t0, n, h, acc,
                               red + parity * SBWD_RED_FLOATS);
            if constexpr (AHEAD) cur = nxt;  // after the last group: a copy never read
            parity ^= 1;
        }
    }
    if (ix.active) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            if (!ix.valid(k, p)) continue;
            atomicAdd(p.dA + ix.d * N + ix.n0 + k, acc.dA[k]);
            if (p.dinitial_state) p.dinitial_state[row * N + ix.n0 + k] = acc.gn[k];
        }
    }
    if (p.nslices > 1) return;  // sbwd_finish_kernel sums dD and ddelta_bias
#pragma unroll
    for (int m = LPC / 2; m >= 1; m /= 2) {
        acc.dD += __shfl_xor_sync(SBWD_FULL, acc.dD, m, LPC);
        acc.db += __shfl_xor_sync(SBWD_FULL, acc.db, m, LPC);
    }
    if (ix.active && ix.lane == 0) {
        if (p.dD) atomicAdd(p.dD + ix.d, acc.dD);
        if (p.ddelta_bias) atomicAdd(p.ddelta_bias + ix.d, acc.db);
    }
}

// More than one slice: du, ddelta, dz, dD, ddelta_bias from the per-step sums over the
// states in p.acc (s1 = sum g e h A, s2 = sum g B, y = sum h C). One warp per (b, d) row.
template <typename T>
__global__ void __launch_bounds__(SBWD_THREADS) sbwd_finish_kernel(SbwdParams p) {
    const int64_t rows = p.batch * p.dim, L = p.seqlen, BDL = rows * L;
    const int64_t row = ((int64_t)blockIdx.x * SBWD_THREADS + threadIdx.x) / 32;
    const int lane = (int)(threadIdx.x & 31u);
    if (row >= rows) return;  // whole warps
    const int64_t b = row / p.dim, d = row % p.dim;
    const float Dd = ldf_opt(p.D, d, 0.0f), db = ldf_opt(p.delta_bias, d, 0.0f);
    const int64_t u0 = b * p.u_s[0] + d * p.u_s[1], dl0 = b * p.delta_s[0] + d * p.delta_s[1];
    const int64_t z0 = b * p.z_s[0] + d * p.z_s[1], y0 = b * p.dout_s[0] + d * p.dout_s[1];
    float dD = 0.0f, dbs = 0.0f;
    for (int64_t t = lane; t < L; t += 32) {
        const float uv = ldt<T>(p.u, u0 + t * p.u_s[2]);
        const float x = ldt<T>(p.delta, dl0 + t * p.delta_s[2]) + db;
        float dt = x, sx = 1.0f;
        if (p.softplus) {
            dt = softplus_fast(x);
            sx = x <= 20.0f ? sigmoid_fast(x) : 1.0f;
        }
        const float dyv = ldt<T>(p.dout, y0 + t * p.dout_s[2]);
        float dy0 = dyv, dzf = 0.0f;
        if (p.z) {
            const float zv = ldt<T>(p.z, z0 + t * p.z_s[2]), sg = sigmoid_fast(zv);
            dzf = dyv * sg * (1.0f + zv * (1.0f - sg));
            dy0 = dyv * zv * sg;
        }
        const int64_t i = row * L + t;
        const float s1 = p.acc[i], s2 = p.acc[BDL + i];
        const float ddelta = fmaf(s2, uv, s1) * sx;
        stf(p.du, i, fmaf(Dd, dy0, s2 * dt));
        stf(p.ddelta, i, ddelta);
        if (p.z) stf(p.dz, i, dzf * fmaf(Dd, uv, p.acc[2 * BDL + i]));
        dD = fmaf(dy0, uv, dD);
        dbs += ddelta;
    }
    dD = warp_sum(dD);
    dbs = warp_sum(dbs);
    if (lane == 0) {
        if (p.dD) atomicAdd(p.dD + d, dD);
        if (p.ddelta_bias) atomicAdd(p.ddelta_bias + d, dbs);
    }
}

#endif
