// scan.cu - Mamba-1 selective scan (prefill) and one-step state update (decode).
//
// One thread per (batch, channel): the channel's N float32 states and its row of A live in
// registers (MAXN = 16 / 64 unrolled; larger N up to 256 in local memory, still correct);
// the sequence is walked in order. B and C of one (batch, group, time) are the same for all
// channels of a group, so the loads of a warp broadcast. Float32 arithmetic throughout:
//   dt = delta + delta_bias; dt = softplus(dt) (threshold 20) if requested
//   h = exp(dt * A) * h + dt * B * u;  y = <h, C> + D * u;  y *= silu(z) if z
#include <stdlib.h>
#include <string.h>

#include "pdl.cuh"
#include "scan_common.cuh"
#include "scan_tile.cuh"
#include "scan_tile2.cuh"
#include "scan_warp.cuh"

#define SCAN_THREADS 128

__device__ __forceinline__ float softplus_f(float x) { return x <= 20.0f ? log1pf(expf(x)) : x; }

// MAXN: register-array size (the loops over n are unrolled with a guard n < N); UNROLL 0
// keeps the loops rolled (N up to 256, the state then lives in local memory).
// TBC: dtype of B and C (the loads in the inner loop).
template <int MAXN, int UNROLL, typename TBC>
__global__ void __launch_bounds__(SCAN_THREADS)
scan_fwd_kernel(samba_cu_scan_args p) {
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= p.batch * p.dim) return;
    const int64_t b = idx / p.dim, d = idx % p.dim;
    const int N = (int)p.dstate;
    const int64_t g = d / (p.dim / p.ngroups);
    const int NB = UNROLL ? MAXN : N;  // loop bound: compile-time when unrolled
    float h[MAXN], a[MAXN];
#pragma unroll(UNROLL ? MAXN : 1)
    for (int n = 0; n < NB; ++n) {
        if (n < N) {
            a[n] = ldf(p.A, d * N + n);
            h[n] = p.initial_state ? p.initial_state[idx * N + n] : 0.0f;
        }
    }
    const float Dd = ldf_opt(p.D, d, 0.0f);
    const float db = ldf_opt(p.delta_bias, d, 0.0f);
    // Row bases of (b, d, :) and (b, g, :, :); the time index is scaled by each stride.
    const int64_t u0 = b * p.u_s[0] + d * p.u_s[1], dl0 = b * p.delta_s[0] + d * p.delta_s[1];
    const int64_t z0 = b * p.z_s[0] + d * p.z_s[1], y0 = b * p.y_s[0] + d * p.y_s[1];
    const int64_t B0 = b * p.B_s[0] + g * p.B_s[1], C0 = b * p.C_s[0] + g * p.C_s[1];
    for (int64_t t = 0; t < p.seqlen; ++t) {
        const float u = ldf(p.u, u0 + t * p.u_s[2]);
        float dt = ldf(p.delta, dl0 + t * p.delta_s[2]) + db;
        if (p.delta_softplus) dt = softplus_f(dt);
        const float du = dt * u;
        const int64_t bt = B0 + t * p.B_s[3], ct = C0 + t * p.C_s[3];
        float y = 0.0f;
#pragma unroll(UNROLL ? MAXN : 1)
        for (int n = 0; n < NB; ++n) {
            if (n < N) {
                const float bn = ldt<TBC>(p.B.ptr, bt + n * p.B_s[2]);
                const float cn = ldt<TBC>(p.C.ptr, ct + n * p.C_s[2]);
                h[n] = expf(dt * a[n]) * h[n] + bn * du;
                y += h[n] * cn;
            }
        }
        y += Dd * u;
        if (p.z.ptr) y *= silu_f(ldf(p.z, z0 + t * p.z_s[2]));
        stf(p.y, y0 + t * p.y_s[2], y);
    }
    if (p.final_state) {
#pragma unroll(UNROLL ? MAXN : 1)
        for (int n = 0; n < NB; ++n)
            if (n < N) p.final_state[idx * N + n] = h[n];
    }
}

// dt of channel d at batch 1 from the low-rank row (samba_cu_dt_state_update): the LPC threads of
// the channel compute dt_in @ dt_w[d]^T as gemv.cu's one-row kernel does with one warp per row
// (samba_cu_gemv_row_plain): lane l accumulates the products of elements 8l .. 8l + 7 in order
// (the kernel's lanes past the row, and its zero vectors, add +0), the lanes' sums meet in the
// order of warp_sum's butterfly (its steps across lanes past the row add +0), the sum is added to
// 0 and rounded to the product's dtype. So dt has the bits the product's store and a load give.
template <int LPC>
__device__ __forceinline__ float step_dt_proj(const samba_cu_scan_step_args &p, int64_t d,
                                              int lane) {
    float acc = 0.0f;
    if (lane < p.dt_nv) {
        const int64_t e0 = (int64_t)lane * 8;
        const uint4 wv = *reinterpret_cast<const uint4 *>(
            static_cast<const unsigned short *>(p.dt_w.ptr) + d * (int64_t)p.dt_nv * 8 + e0);
        const uint4 xv =
            *reinterpret_cast<const uint4 *>(static_cast<const unsigned short *>(p.dt.ptr) + e0);
        const uint32_t w4[4] = {wv.x, wv.y, wv.z, wv.w}, x4[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float w0, w1, x0, x1;
            if (p.dt_w.dtype == SAMBA_CU_BF16) {
                w0 = __uint_as_float(w4[e] << 16), w1 = __uint_as_float(w4[e] & 0xffff0000u);
                x0 = __uint_as_float(x4[e] << 16), x1 = __uint_as_float(x4[e] & 0xffff0000u);
            } else {
                w0 = __half2float(__ushort_as_half((unsigned short)(w4[e] & 0xffffu)));
                w1 = __half2float(__ushort_as_half((unsigned short)(w4[e] >> 16)));
                x0 = __half2float(__ushort_as_half((unsigned short)(x4[e] & 0xffffu)));
                x1 = __half2float(__ushort_as_half((unsigned short)(x4[e] >> 16)));
            }
            acc = fmaf(w0, x0, acc);
            acc = fmaf(w1, x1, acc);
        }
        acc += 0.0f;
    }
#pragma unroll
    for (int o = 16; o >= LPC; o >>= 1) acc += 0.0f;
#pragma unroll
    for (int m = LPC / 2; m >= 1; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m, LPC);
    return round_to(p.dt_rdt, 0.0f + acc);
}

// The one-step update: LPC = min(32, next power of two >= N) consecutive threads share a
// (batch, channel), thread `lane` updating the states lane, lane + LPC, ...; y = <h, C> is
// summed over the LPC threads by shuffles. A batch-1 step of 4096 channels is 64K threads
// (about 4 per exp unit lane of an H100) instead of 4096, and the state and A rows are read
// and written as contiguous, coalesced rows.
template <int LPC>
__global__ void __launch_bounds__(SCAN_THREADS) scan_step_kernel(samba_cu_scan_step_args p) {
    pdl_wait();
    pdl_trigger();
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t rows = p.batch * p.dim;
    const bool ok = tid / LPC < rows;  // a whole group of LPC lanes is in or out
    const int64_t idx = ok ? tid / LPC : rows - 1;  // out: computes row rows-1, stores nothing
    const int lane = (int)(tid % LPC);
    const int64_t b = idx / p.dim, d = idx % p.dim;
    const int N = (int)p.dstate;
    const int64_t g = d / (p.dim / p.ngroups);
    const int64_t B0 = b * p.B_s[0] + g * p.B_s[1], C0 = b * p.C_s[0] + g * p.C_s[1];
    const float x = ldf(p.x, b * p.x_s[0] + d * p.x_s[1]);
    float dt = p.dt_nv > 0 ? step_dt_proj<LPC>(p, d, lane)
                           : ldf(p.dt, b * p.dt_s[0] + d * p.dt_s[1]);
    dt += ldf_opt(p.dt_bias, d, 0.0f);
    if (p.dt_softplus) dt = softplus_f(dt);
    const float dx = dt * x;
    float y = 0.0f;
    float *st = p.state + idx * N;
    for (int n = lane; n < N; n += LPC) {
        const float h = expf(dt * ldf(p.A, d * N + n)) * st[n] + ldf(p.B, B0 + n * p.B_s[2]) * dx;
        if (ok) st[n] = h;
        y += h * ldf(p.C, C0 + n * p.C_s[2]);
    }
#pragma unroll
    for (int m = LPC / 2; m >= 1; m /= 2) y += __shfl_xor_sync(0xffffffffu, y, m, LPC);
    if (!ok || lane != 0) return;
    y += ldf_opt(p.D, d, 0.0f) * x;
    if (p.z.ptr) y *= silu_f(ldf(p.z, b * p.z_s[0] + d * p.z_s[1]));
    stf(p.y, b * p.y_s[0] + d * p.y_s[1], y);
}

// ------------------------------------------------------------------ split kernel --------
// The fast path for dstate 16 with u / delta / z / B / C of one dtype. LPC threads share a
// (batch, channel), each holding NPL = 16 / LPC of its states, so a batch-1 prefill still has
// enough threads to keep the exp units busy; the sequence is walked in groups of 8 steps:
// each input row is read as 16-byte vectors (when aligned) and the next group's vectors are
// loaded while the current one is computed. Per group, each thread computes softplus(dt)
// for its 8 / LPC "own" steps and the group's dt values are exchanged by warp shuffles; the
// partial outputs y_t = <h_t, C_t> over each thread's states are summed across the LPC
// threads by a reduce-scatter, after which each thread finishes (D skip, gate) and stores
// its own steps. exp(dt * A) is exp2(dt * A * log2(e)) on the exp unit (ex2.approx.ftz:
// relative error about 2^-22, flushed to 0 below 2^-126, where the state's decay factor
// does not matter against float32 rounding).
//
// Chunks (parallel over the sequence): with nchunks > 1 the sequence is cut into chunks of
// chunk_len steps. Pass 1 scans chunks 0..nchunks-2 from a zero state (chunk 0 from the
// initial state, which it also copies to the workspace) and stores each chunk's end state
// and its sum of dt. Pass 2 scans every chunk from its true start state, composed from the
// earlier chunks' end states: h_start(c) = exp(A * sum_dt(c-1)) * h_start(c-1) + end(c-1)
// (chunk 0's end state is already exact), and writes y and the final state. Pass 1 repeats
// the exponentials of all but the last chunk; with 4 threads per channel a batch-1 scan of
// 4096 channels already fills the H200, so chunks are used only on request (see
// split_chunks).
#define SPLIT_N 16

struct ScanChunks {
    int64_t chunk_len;  // steps per chunk (a multiple of SPLIT_T when nchunks > 1)
    int nchunks, pass;  // pass 0: no chunks; 1, 2: the two passes above
    float *start0;      // (B*D, N) copy of the initial state (pass 1 writes, pass 2 reads)
    float *ends;        // (nchunks-1, B*D, N) local end states
    float *sums;        // (nchunks-1, B*D) sums of dt
};

template <typename T, int NPL> struct ScanGroup {
    Vec8<T> u, dl, z, b[NPL], c[NPL];
};

// Offsets of one thread's rows: u, delta, z and its first B and C rows (time index 0).
struct RowBases {
    int64_t u, dl, z, b, c;
};

template <typename T, int NPL>
__device__ __forceinline__ void load_group_vec(ScanGroup<T, NPL> &G, const samba_cu_scan_args &p,
                                               const RowBases &r, int64_t t0, bool has_z) {
    G.u.vload(p.u.ptr, r.u + t0);
    G.dl.vload(p.delta.ptr, r.dl + t0);
    if (has_z) G.z.vload(p.z.ptr, r.z + t0);
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        G.b[k].vload(p.B.ptr, r.b + k * p.B_s[2] + t0);
        G.c[k].vload(p.C.ptr, r.c + k * p.C_s[2] + t0);
    }
}

template <typename T, int NPL>
__device__ __forceinline__ void load_group_tail(ScanGroup<T, NPL> &G, const samba_cu_scan_args &p,
                                                const RowBases &r, int64_t t0, int n, bool has_z) {
    G.u.sload(p.u.ptr, r.u + t0, 1, n);
    G.dl.sload(p.delta.ptr, r.dl + t0, 1, n);
    if (has_z) G.z.sload(p.z.ptr, r.z + t0, 1, n);
#pragma unroll
    for (int k = 0; k < NPL; ++k) {
        G.b[k].sload(p.B.ptr, r.b + k * p.B_s[2] + t0, 1, n);
        G.c[k].sload(p.C.ptr, r.c + k * p.C_s[2] + t0, 1, n);
    }
}

struct StepConsts {
    float Dd, db;
    bool softplus, has_z, want_y, active;
};

// The lanes of this thread's channel (LPC consecutive lanes: they run the same steps even
// where the lanes of one warp belong to chunks of different lengths).
template <int LPC> __device__ __forceinline__ unsigned seg_mask() {
    return ((1u << LPC) - 1u) << ((threadIdx.x & 31u) & ~(unsigned)(LPC - 1));
}

// Reduce-scatter of ys[0..SPLIT_T) over the LPC threads of a channel: thread `lane` ends
// with the full sums of steps lane * OWN .. lane * OWN + OWN - 1 in ys[0 .. OWN).
template <int LPC>
__device__ __forceinline__ void reduce_scatter(float (&ys)[SPLIT_T], int lane) {
    constexpr int LEVELS = LPC == 8 ? 3 : LPC == 4 ? 2 : LPC == 2 ? 1 : 0;
#pragma unroll
    for (int lvl = 0; lvl < LEVELS; ++lvl) {
        const int m = LPC >> (lvl + 1);
        const bool up = (lane & m) != 0;
#pragma unroll
        for (int k = 0; k < (SPLIT_T >> (lvl + 1)); ++k) {
            const int hk = k + (SPLIT_T >> (lvl + 1));
            const float send = up ? ys[k] : ys[hk];
            const float keep = up ? ys[hk] : ys[k];
            ys[k] = keep + __shfl_xor_sync(seg_mask<LPC>(), send, m, LPC);
        }
    }
}

// One group of n <= SPLIT_T steps from t0 for the thread's NPL states (see above).
template <int LPC, typename T, int NPL>
__device__ __forceinline__ void scan_group(const ScanGroup<T, NPL> &G, int n, int64_t t0,
                                           int lane, const float (&a2)[NPL], float (&h)[NPL],
                                           float &sum_dt, const StepConsts &sc,
                                           const samba_cu_scan_args &p, int64_t y0) {
    constexpr int OWN = SPLIT_T / LPC;
    // softplus(dt) of the own steps, then every step's dt from its owner by shuffles
    float own[OWN];
#pragma unroll
    for (int k = 0; k < OWN; ++k) {
        float x = pick(G.dl, lane * OWN + k) + sc.db;
        if (sc.softplus) x = softplus_fast(x);
        own[k] = (lane * OWN + k < n) ? x : 0.0f;  // past the end: dt 0 leaves h as it is
    }
    float dt[SPLIT_T];
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s)
        dt[s] = __shfl_sync(seg_mask<LPC>(), own[s % OWN], s / OWN, LPC);
    float ys[SPLIT_T];
#pragma unroll
    for (int s = 0; s < SPLIT_T; ++s) {
        const float du = dt[s] * G.u.get(s);
        float y = 0.0f;
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            h[k] = ex2_ftz(dt[s] * a2[k]) * h[k] + G.b[k].get(s) * du;
            y += h[k] * G.c[k].get(s);
        }
        ys[s] = y;
        sum_dt += dt[s];
    }
    if (!sc.want_y) return;  // chunk pass 1 (the same for every thread of the launch)
    reduce_scatter<LPC>(ys, lane);  // inactive threads take part in the shuffles too
#pragma unroll
    for (int k = 0; k < OWN; ++k) {
        const int s = lane * OWN + k;
        if (sc.active && s < n) {
            float y = ys[k] + sc.Dd * pick(G.u, s);
            if (sc.has_z) y *= silu_fast(pick(G.z, s));
            stf(p.y, y0 + (t0 + s) * p.y_s[2], y);
        }
    }
}

template <int LPC, typename T>
__global__ void __launch_bounds__(SCAN_THREADS)
scan_split_kernel(samba_cu_scan_args p, ScanChunks ck) {
    constexpr int NPL = SPLIT_N / LPC;  // states per thread
    const int lane = threadIdx.x % LPC;
    const int64_t BD = p.batch * p.dim;
    const int nck = ck.pass == 1 ? ck.nchunks - 1 : ck.nchunks;
    const int64_t gch = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / LPC;
    const bool active = gch < BD * nck;
    // inactive threads (the tail of the last warp) shadow a valid channel, store nothing
    const int64_t cg = active ? gch : BD * nck - 1;
    const int chunk = (int)(cg / BD);
    const int64_t idx = cg % BD;
    const int64_t b = idx / p.dim, d = idx % p.dim;
    const int64_t g = d / (p.dim / p.ngroups);
    const int64_t t_begin = chunk * ck.chunk_len;
    const int64_t t_end = min(p.seqlen, t_begin + ck.chunk_len);
    const int n0 = lane * NPL;

    float a2[NPL], h[NPL];
#pragma unroll
    for (int k = 0; k < NPL; ++k) a2[k] = ldf(p.A, d * SPLIT_N + n0 + k) * LOG2E_F;
    if (ck.pass == 2 && chunk > 0) {
        // start state from the earlier chunks: chunk 0's end is exact, later ones local
        chunk_start_state<NPL>(ck.ends, ck.sums, BD, idx, n0, chunk, a2, h);
    } else if (chunk == 0) {
        const float *init = ck.pass == 2 ? ck.start0 : p.initial_state;
#pragma unroll
        for (int k = 0; k < NPL; ++k) h[k] = init ? init[idx * SPLIT_N + n0 + k] : 0.0f;
        if (ck.pass == 1 && active)
#pragma unroll
            for (int k = 0; k < NPL; ++k) ck.start0[idx * SPLIT_N + n0 + k] = h[k];
    } else {
#pragma unroll
        for (int k = 0; k < NPL; ++k) h[k] = 0.0f;
    }
    const float Dd = ldf_opt(p.D, d, 0.0f);
    const float db = ldf_opt(p.delta_bias, d, 0.0f);
    const int64_t u0 = b * p.u_s[0] + d * p.u_s[1], dl0 = b * p.delta_s[0] + d * p.delta_s[1];
    const int64_t z0 = b * p.z_s[0] + d * p.z_s[1], y0 = b * p.y_s[0] + d * p.y_s[1];
    const int64_t B0 = b * p.B_s[0] + g * p.B_s[1], C0 = b * p.C_s[0] + g * p.C_s[1];
    const bool has_z = p.z.ptr != NULL;
    const RowBases rb = {u0, dl0, z0, B0 + n0 * p.B_s[2], C0 + n0 * p.C_s[2]};
    const StepConsts sc = {Dd, db, p.delta_softplus != 0, has_z, ck.pass != 1, active};
    float sum_dt = 0.0f;
    // full groups: 16-byte vector loads, the next group loaded while this one is computed
    const int64_t t_full = t_begin + (t_end - t_begin) / SPLIT_T * SPLIT_T;
    ScanGroup<T, NPL> cur, nxt;
    if (t_begin < t_full) load_group_vec<T, NPL>(cur, p, rb, t_begin, has_z);
    for (int64_t t0 = t_begin; t0 < t_full; t0 += SPLIT_T) {
        if (t0 + SPLIT_T < t_full) load_group_vec<T, NPL>(nxt, p, rb, t0 + SPLIT_T, has_z);
        scan_group<LPC, T, NPL>(cur, SPLIT_T, t0, lane, a2, h, sum_dt, sc, p, y0);
        cur = nxt;
    }
    if (t_full < t_end) {  // the last partial group: element loads
        load_group_tail<T, NPL>(cur, p, rb, t_full, (int)(t_end - t_full), has_z);
        scan_group<LPC, T, NPL>(cur, (int)(t_end - t_full), t_full, lane, a2, h, sum_dt, sc,
                                p, y0);
    }
    if (!active) return;
    if (ck.pass == 1) {
        if (chunk > 0) ck.sums[chunk * BD + idx] = sum_dt;
#pragma unroll
        for (int k = 0; k < NPL; ++k) ck.ends[(chunk * BD + idx) * SPLIT_N + n0 + k] = h[k];
    } else if (p.final_state && chunk == ck.nchunks - 1) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) p.final_state[idx * SPLIT_N + n0 + k] = h[k];
    }
}

template <typename TBC>
static void launch_scan(const samba_cu_scan_args *a, unsigned grid, cudaStream_t st) {
    if (a->dstate <= 16)
        scan_fwd_kernel<16, 1, TBC><<<grid, SCAN_THREADS, 0, st>>>(*a);
    else if (a->dstate <= 64)
        scan_fwd_kernel<64, 1, TBC><<<grid, SCAN_THREADS, 0, st>>>(*a);
    else
        scan_fwd_kernel<256, 0, TBC><<<grid, SCAN_THREADS, 0, st>>>(*a);
}

static int env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    return (v != NULL && v[0] >= '0' && v[0] <= '9') ? atoi(v) : dflt;
}

// Threads per channel for the split kernel (1: the one-thread-per-channel kernel).
// SAMBA_EXT_SCAN_LANES=1|4|8 overrides the choice (benchmarks/gpu_kernels.py compares them).
static int split_lanes(const samba_cu_scan_args *a) {
    const int z_ok = a->z.ptr == NULL || a->z.dtype == a->u.dtype;
    if (a->dstate != SPLIT_N || a->delta.dtype != a->u.dtype || !z_ok ||
        a->B.dtype != a->u.dtype || a->C.dtype != a->u.dtype)
        return 1;
    const int v = env_int("SAMBA_EXT_SCAN_LANES", 0);
    if (v == 1 || v == 4 || v == 8) return v;
    return a->u.dtype == SAMBA_CU_F32 ? 8 : 4;  // float32 rows need twice the registers
}

static int aligned16(const void *p, int64_t item, const int64_t *st, int n) {
    if ((uintptr_t)p % 16) return 0;
    for (int i = 0; i < n; ++i)
        if ((st[i] * item) % 16) return 0;
    return 1;
}

// The split kernel reads rows as 16-byte vectors: unit time strides, every row 16-byte
// aligned. Other layouts (token-major views, odd lengths) take the per-channel kernel.
static int split_vec_ok(const samba_cu_scan_args *a) {
    const int64_t item = a->u.dtype == SAMBA_CU_F32 ? 4 : 2;
    return a->u_s[2] == 1 && a->delta_s[2] == 1 && a->B_s[3] == 1 && a->C_s[3] == 1 &&
           (a->z.ptr == NULL || a->z_s[2] == 1) && aligned16(a->u.ptr, item, a->u_s, 2) &&
           aligned16(a->delta.ptr, item, a->delta_s, 2) &&
           (a->z.ptr == NULL || aligned16(a->z.ptr, item, a->z_s, 2)) &&
           aligned16(a->B.ptr, item, a->B_s, 3) && aligned16(a->C.ptr, item, a->C_s, 3);
}

template <int LPC, typename T>
static void launch_split_t(const samba_cu_scan_args *a, const ScanChunks &ck, int nck,
                           cudaStream_t st) {
    const int64_t threads = a->batch * a->dim * nck * LPC;
    scan_split_kernel<LPC, T><<<(unsigned)cdiv(threads, SCAN_THREADS), SCAN_THREADS, 0, st>>>(*a, ck);
}

template <typename T>
static void launch_split_lpc(const samba_cu_scan_args *a, int lanes, const ScanChunks &ck,
                             int nck, cudaStream_t st) {
    if (lanes == 8)
        launch_split_t<8, T>(a, ck, nck, st);
    else
        launch_split_t<4, T>(a, ck, nck, st);
}

static void launch_split_pass(const samba_cu_scan_args *a, int lanes, const ScanChunks &ck,
                              int nck, cudaStream_t st) {
    if (a->u.dtype == SAMBA_CU_BF16)
        launch_split_lpc<__nv_bfloat16>(a, lanes, ck, nck, st);
    else if (a->u.dtype == SAMBA_CU_F16)
        launch_split_lpc<__half>(a, lanes, ck, nck, st);
    else
        launch_split_lpc<float>(a, lanes, ck, nck, st);
}

// The split kernel's chunks over the sequence only on request (SAMBA_EXT_SCAN_CHUNKS=N): on
// the H200 its two passes were slower than one pass with 4 threads per channel at every
// measured size, batch 1 included (benchmarks/results/gpu_model.md). The default tile2 kernel
// has chunks of its own (tile2_chunks below).
static int split_chunks(const samba_cu_scan_args *a) {
    int64_t c = env_int("SAMBA_EXT_SCAN_CHUNKS", 1);
    if (c > a->seqlen / SPLIT_T) c = a->seqlen / SPLIT_T;  // at least one group per chunk
    return c < 1 ? 1 : (int)c;
}

// The chunked passes' workspace, stream-ordered (cudaFreeAsync after pass 2): start0 (BD, 16),
// ends (nck - 1, BD, 16), sums (nck - 1, BD); CK is ScanChunks or Tile2Chunks.
template <class CK>
static samba_status chunk_workspace(CK &ck, int64_t BD, int nck, void **ws, cudaStream_t st) {
    const size_t nbytes = (size_t)(BD * 16 + (nck - 1) * BD * 16 + (nck - 1) * BD) * sizeof(float);
    cudaError_t e = cudaMallocAsync(ws, nbytes, st);
    if (e != cudaSuccess) return samba_cu_fail("selective_scan: workspace cudaMallocAsync", e);
    ck.start0 = (float *)*ws;
    ck.ends = ck.start0 + BD * 16;
    ck.sums = ck.ends + (nck - 1) * BD * 16;
    return SAMBA_OK;
}

static samba_status launch_split(const samba_cu_scan_args *a, int lanes, cudaStream_t st) {
    const int64_t BD = a->batch * a->dim;
    ScanChunks ck;
    memset(&ck, 0, sizeof ck);
    int nck = split_chunks(a);
    ck.chunk_len = nck > 1 ? cdiv(cdiv(a->seqlen, nck), SPLIT_T) * SPLIT_T : a->seqlen;
    if (nck > 1) nck = (int)cdiv(a->seqlen, ck.chunk_len);
    if (nck == 1) ck.chunk_len = a->seqlen;
    ck.nchunks = nck;
    if (nck == 1) {
        ck.pass = 0;
        launch_split_pass(a, lanes, ck, 1, st);
        return samba_cu_check_launch("selective_scan", st);
    }
    void *ws = NULL;
    samba_status s = chunk_workspace(ck, BD, nck, &ws, st);
    if (s != SAMBA_OK) return s;
    ck.pass = 1;
    launch_split_pass(a, lanes, ck, nck - 1, st);
    s = samba_cu_check_launch("selective_scan (chunk pass 1)", st);
    if (s == SAMBA_OK) {
        ck.pass = 2;
        launch_split_pass(a, lanes, ck, nck, st);
        s = samba_cu_check_launch("selective_scan (chunk pass 2)", st);
    }
    const cudaError_t e = cudaFreeAsync(ws, st);
    if (s == SAMBA_OK && e != cudaSuccess) return samba_cu_fail("selective_scan: cudaFreeAsync", e);
    return s;
}

// The tiled kernels (scan_tile2.cuh, the default, and scan_tile.cuh; SAMBA_EXT_SCAN_VARIANT=split
// selects the split kernel above instead; a variant with specialised I/O warps measured slower
// everywhere and was dropped). They need the split kernel's conditions (split_lanes > 1 and
// split_vec_ok), whole blocks of channels within one group, and no chunks requested (else the
// split kernel runs). scan_tile2.cuh's kernel (4 threads per channel, 4 states each) runs
// unless SAMBA_EXT_SCAN_VARIANT=tile, which selects scan_tile.cuh's (4 threads per channel, or
// 8 with SAMBA_EXT_SCAN_LANES=8). Measured (benchmarks/results/gpu_scan_variants.md, H100,
// same run): tile2 0.80x tile's kernel time at batch 8 and 0.90-0.92x at batch 1; tile was
// 1.35-2x faster than split at every measured size (H200, gpu_model.md). Results agree up to
// float32 rounding (y is summed over the states in another order).
static int tile_kind(void) {  // 0: split, 1: tile, 2: tile2
    const char *v = getenv("SAMBA_EXT_SCAN_VARIANT");
    if (v != NULL && strcmp(v, "split") == 0) return 0;
    return (v != NULL && strcmp(v, "tile") == 0) ? 1 : 2;
}

static int tile_lanes(const samba_cu_scan_args *a) {
    const int kind = tile_kind();
    if (kind == 0) return 0;
    if (kind == 1 && env_int("SAMBA_EXT_SCAN_CHUNKS", 1) > 1) return 0;  // tile has no chunks
    const int lanes = kind == 1 && env_int("SAMBA_EXT_SCAN_LANES", 0) == 8 ? 8 : 4;
    const int64_t cpb = TILE_THREADS / lanes;  // channels per block
    return (a->dim / a->ngroups) % cpb == 0 ? lanes : 0;
}

// Chunks of the tile2 scan (scan_tile2.cuh, Tile2Chunks): SAMBA_EXT_SCAN_CHUNKS=N asks for N
// (1: one pass). By default TILE2_CHUNKS chunks of at least TILE2_MIN_CHUNK steps where the
// channels alone give at most 1.5 warps per scheduler (batch x dim <= 48 x the multiprocessors,
// e.g. batch 1 x 4096 or 6144 channels on 132 of them), else none; fewer than 3 (a sequence
// under 3072 steps) means none. Measured on an H100
// (benchmarks/results/gpu_scan_variants.md), kernel time over the exp-unit floor for 1, 2, 3,
// 4, 6, 8 chunks: batch 1 x 4096 x 32K 4.66 5.20 4.03 3.61 3.81 3.66, batch 1 x 6144 x 128K
// 3.76 4.02 4.20 3.80 3.79 3.59, batch 8 x 4096 x 4K 2.08 2.98 3.18 3.28 3.35 3.40: pass 1 runs
// at the low occupancy it is meant to relieve (2 chunks lose), a wave of blocks left part
// empty costs as much as the gain (6144 channels), and where the warps already hide the
// latency the repeated exponentials are pure cost (batch 8). At most one chunk per tile.
#define TILE2_MIN_CHUNK 1024
#define TILE2_CHUNKS 8
static int tile2_chunks(const samba_cu_scan_args *a) {
    int64_t c = env_int("SAMBA_EXT_SCAN_CHUNKS", 0);
    if (c < 1) {
        const int64_t few = 48 * (int64_t)samba_sm_count();  // 6 warps of 8 channels
        c = a->batch * a->dim <= few ? TILE2_CHUNKS : 1;
        if (c > a->seqlen / TILE2_MIN_CHUNK) c = a->seqlen / TILE2_MIN_CHUNK;
        if (c < 3) c = 1;  // 2 chunks were slower than one pass in every measured case
    }
    if (c > cdiv(a->seqlen, TILE_T)) c = cdiv(a->seqlen, TILE_T);
    return c < 1 ? 1 : (int)c;
}

template <typename T>
static samba_status launch_tile2_t(const samba_cu_scan_args *a, cudaStream_t st) {
    const int64_t BD = a->batch * a->dim;
    const unsigned nb = (unsigned)(BD / TILE2_CPB);  // blocks per chunk
    Tile2Chunks ck;
    memset(&ck, 0, sizeof ck);
    int nck = tile2_chunks(a);
    if (nck > 1) {
        ck.chunk_len = cdiv(cdiv(a->seqlen, nck), TILE_T) * TILE_T;
        nck = (int)cdiv(a->seqlen, ck.chunk_len);
    }
    if (nck == 1) {
        scan_tile2_kernel<T, 0><<<nb, TILE_THREADS, 0, st>>>(*a, ck);
        return samba_cu_check_launch("selective_scan (tiled)", st);
    }
    ck.nchunks = nck;
    void *ws = NULL;
    samba_status s = chunk_workspace(ck, BD, nck, &ws, st);
    if (s != SAMBA_OK) return s;
    scan_tile2_kernel<T, 1><<<nb * (unsigned)(nck - 1), TILE_THREADS, 0, st>>>(*a, ck);
    s = samba_cu_check_launch("selective_scan (tiled, chunk pass 1)", st);
    if (s == SAMBA_OK) {
        scan_tile2_kernel<T, 2><<<nb * (unsigned)nck, TILE_THREADS, 0, st>>>(*a, ck);
        s = samba_cu_check_launch("selective_scan (tiled, chunk pass 2)", st);
    }
    const cudaError_t e = cudaFreeAsync(ws, st);
    if (s == SAMBA_OK && e != cudaSuccess) return samba_cu_fail("selective_scan: cudaFreeAsync", e);
    return s;
}

template <typename T>
static samba_status launch_tile_t(const samba_cu_scan_args *a, int lanes, cudaStream_t st) {
    const int64_t cpb = TILE_THREADS / lanes;
    const unsigned grid = (unsigned)(a->batch * a->dim / cpb);
    if (lanes == 4 && tile_kind() == 2) return launch_tile2_t<T>(a, st);
    if (lanes == 4)
        scan_tile_kernel<4, T><<<grid, TILE_THREADS, 0, st>>>(*a);
    else
        scan_tile_kernel<2, T><<<grid, TILE_THREADS, 0, st>>>(*a);
    return samba_cu_check_launch("selective_scan (tiled)", st);
}

static samba_status launch_tile(const samba_cu_scan_args *a, int lanes, cudaStream_t st) {
    if (a->u.dtype == SAMBA_CU_BF16) return launch_tile_t<__nv_bfloat16>(a, lanes, st);
    if (a->u.dtype == SAMBA_CU_F16) return launch_tile_t<__half>(a, lanes, st);
    return launch_tile_t<float>(a, lanes, st);
}

// The warp kernel (scan_warp.cuh): SAMBA_EXT_SCAN_VARIANT=warp (16 steps per lane) or warp8
// (8), under the split kernel's conditions (split_lanes > 1, split_vec_ok; so
// SAMBA_EXT_SCAN_LANES=1 runs the per-channel kernel) and with no chunks requested; 0 otherwise.
static int warp_items(void) {
    const char *v = getenv("SAMBA_EXT_SCAN_VARIANT");
    if (v == NULL || env_int("SAMBA_EXT_SCAN_CHUNKS", 1) > 1) return 0;
    return strcmp(v, "warp") == 0 ? 16 : strcmp(v, "warp8") == 0 ? 8 : 0;
}

template <typename T>
static void launch_warp_t(const samba_cu_scan_args *a, int items, cudaStream_t st) {
    const unsigned grid = (unsigned)cdiv(a->batch * a->dim, WS_WARPS);
    if (items == 16)
        scan_warp_kernel<16, T><<<grid, WS_WARPS * 32, 0, st>>>(*a);
    else
        scan_warp_kernel<8, T><<<grid, WS_WARPS * 32, 0, st>>>(*a);
}

static samba_status launch_warp(const samba_cu_scan_args *a, int items, cudaStream_t st) {
    if (a->u.dtype == SAMBA_CU_BF16)
        launch_warp_t<__nv_bfloat16>(a, items, st);
    else if (a->u.dtype == SAMBA_CU_F16)
        launch_warp_t<__half>(a, items, st);
    else
        launch_warp_t<float>(a, items, st);
    return samba_cu_check_launch("selective_scan (warp)", st);
}

// Forward calls per kernel so far (0 per-channel, 1 split, 2 tile, 3 warp): the tests check
// which kernel a shape reaches with it.
static long long g_scan_launches[4];

extern "C" long long samba_cu_scan_launches(int kind) {
    return kind >= 0 && kind < 4 ? g_scan_launches[kind] : -1;
}

static samba_status check_groups(int64_t dim, int64_t ngroups, int64_t dstate) {
    if (ngroups < 1 || dim % ngroups != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "selective_scan: dim %lld not divisible by "
                                 "ngroups %lld", (long long)dim, (long long)ngroups);
    if (dstate < 1 || dstate > 256)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "selective_scan: dstate must be in 1..256 on CUDA, got %lld",
                                 (long long)dstate);
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_scan_fwd(const samba_cu_scan_args *a, void *stream) {
    samba_status s = check_groups(a->dim, a->ngroups, a->dstate);
    if (s != SAMBA_OK) return s;
    const int64_t n = a->batch * a->dim;
    if (n == 0) return SAMBA_OK;
    if (a->seqlen == 0) {
        // Nothing to scan: the final state is the initial state.
        if (a->final_state && a->final_state != a->initial_state) {
            cudaError_t e;
            if (a->initial_state)
                e = cudaMemcpyAsync(a->final_state, a->initial_state, n * a->dstate * 4,
                                    cudaMemcpyDeviceToDevice, (cudaStream_t)stream);
            else
                e = cudaMemsetAsync(a->final_state, 0, n * a->dstate * 4, (cudaStream_t)stream);
            if (e != cudaSuccess) return samba_cu_fail("selective_scan (empty sequence)", e);
        }
        return SAMBA_OK;
    }
    if (a->B.dtype != a->C.dtype)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "selective_scan: B and C must have one dtype");
    cudaStream_t st = (cudaStream_t)stream;
    const int lanes = split_lanes(a);
    if (lanes > 1 && split_vec_ok(a)) {
        const int wk = warp_items();
        if (wk) {
            g_scan_launches[3]++;
            return launch_warp(a, wk, st);
        }
        const int tl = tile_lanes(a);
        g_scan_launches[tl ? 2 : 1]++;
        return tl ? launch_tile(a, tl, st) : launch_split(a, lanes, st);
    }
    g_scan_launches[0]++;
    const unsigned grid = (unsigned)cdiv(n, SCAN_THREADS);
    if (a->B.dtype == SAMBA_CU_BF16)
        launch_scan<__nv_bfloat16>(a, grid, st);
    else if (a->B.dtype == SAMBA_CU_F16)
        launch_scan<__half>(a, grid, st);
    else
        launch_scan<float>(a, grid, st);
    return samba_cu_check_launch("selective_scan", stream);
}

extern "C" samba_status samba_cu_scan_step(const samba_cu_scan_step_args *a, void *stream) {
    samba_status s = check_groups(a->dim, a->ngroups, a->dstate);
    if (s != SAMBA_OK) return s;
    const int64_t n = a->batch * a->dim;
    if (n == 0) return SAMBA_OK;
    int lpc = 1;
    while (lpc < 32 && lpc < a->dstate) lpc *= 2;
    const unsigned grid = (unsigned)cdiv(n * lpc, SCAN_THREADS);
    cudaStream_t st = (cudaStream_t)stream;
    switch (lpc) {
    case 1: samba_launch(scan_step_kernel<1>, grid, SCAN_THREADS, 0, st, *a); break;
    case 2: samba_launch(scan_step_kernel<2>, grid, SCAN_THREADS, 0, st, *a); break;
    case 4: samba_launch(scan_step_kernel<4>, grid, SCAN_THREADS, 0, st, *a); break;
    case 8: samba_launch(scan_step_kernel<8>, grid, SCAN_THREADS, 0, st, *a); break;
    case 16: samba_launch(scan_step_kernel<16>, grid, SCAN_THREADS, 0, st, *a); break;
    default: samba_launch(scan_step_kernel<32>, grid, SCAN_THREADS, 0, st, *a); break;
    }
    return samba_cu_check_launch("selective_state_update", stream);
}
