// scan.cu - Mamba-1 selective scan (prefill) and one-step state update (decode).
//
// One thread per (batch, channel): the channel's N float32 states and its row of A live in
// registers (MAXN = 16 / 64 unrolled; larger N up to 256 in local memory, still correct);
// the sequence is walked in order. B and C of one (batch, group, time) are the same for all
// channels of a group, so the loads of a warp broadcast. Float32 arithmetic throughout:
//   dt = delta + delta_bias; dt = softplus(dt) (threshold 20) if requested
//   h = exp(dt * A) * h + dt * B * u;  y = <h, C> + D * u;  y *= silu(z) if z
#include "cu_common.cuh"

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

__global__ void __launch_bounds__(SCAN_THREADS)
scan_step_kernel(samba_cu_scan_step_args p) {
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= p.batch * p.dim) return;
    const int64_t b = idx / p.dim, d = idx % p.dim;
    const int N = (int)p.dstate;
    const int64_t g = d / (p.dim / p.ngroups);
    const int64_t B0 = b * p.B_s[0] + g * p.B_s[1], C0 = b * p.C_s[0] + g * p.C_s[1];
    const float x = ldf(p.x, b * p.x_s[0] + d * p.x_s[1]);
    float dt = ldf(p.dt, b * p.dt_s[0] + d * p.dt_s[1]) + ldf_opt(p.dt_bias, d, 0.0f);
    if (p.dt_softplus) dt = softplus_f(dt);
    const float dx = dt * x;
    float y = 0.0f;
    float *st = p.state + idx * N;
#pragma unroll 4
    for (int n = 0; n < N; ++n) {
        const float h = expf(dt * ldf(p.A, d * N + n)) * st[n] + ldf(p.B, B0 + n * p.B_s[2]) * dx;
        st[n] = h;
        y += h * ldf(p.C, C0 + n * p.C_s[2]);
    }
    y += ldf_opt(p.D, d, 0.0f) * x;
    if (p.z.ptr) y *= silu_f(ldf(p.z, b * p.z_s[0] + d * p.z_s[1]));
    stf(p.y, b * p.y_s[0] + d * p.y_s[1], y);
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
    const unsigned grid = (unsigned)cdiv(n, SCAN_THREADS);
    cudaStream_t st = (cudaStream_t)stream;
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
    const unsigned grid = (unsigned)cdiv(n, SCAN_THREADS);
    scan_step_kernel<<<grid, SCAN_THREADS, 0, (cudaStream_t)stream>>>(*a);
    return samba_cu_check_launch("selective_state_update", stream);
}
