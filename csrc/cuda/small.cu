// small.cu - RMSNorm (+ fused residual add), rotary embedding, SwiGLU.
#include "cu_common.cuh"

#define NORM_THREADS 256

// 16 bytes of one dtype (4 float32 or 8 float16 / bfloat16), loaded and stored whole.
template <typename T> struct Pack16 {
    static constexpr int N = 16 / (int)sizeof(T);
    union {
        uint4 raw;
        float f[4];
        __nv_bfloat16 b[8];
        __half h[8];
    } v;
    __device__ __forceinline__ void load(const void *p, int64_t i) {
        v.raw = *(const uint4 *)((const T *)p + i);
    }
    __device__ __forceinline__ void store(void *p, int64_t i) const {
        *(uint4 *)((T *)p + i) = v.raw;
    }
    __device__ __forceinline__ float get(int k) const;
    __device__ __forceinline__ void set(int k, float x);
};
template <> __device__ __forceinline__ float Pack16<float>::get(int k) const { return v.f[k]; }
template <> __device__ __forceinline__ void Pack16<float>::set(int k, float x) { v.f[k] = x; }
template <> __device__ __forceinline__ float Pack16<__nv_bfloat16>::get(int k) const {
    return __bfloat162float(v.b[k]);
}
template <> __device__ __forceinline__ void Pack16<__nv_bfloat16>::set(int k, float x) {
    v.b[k] = __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ float Pack16<__half>::get(int k) const {
    return __half2float(v.h[k]);
}
template <> __device__ __forceinline__ void Pack16<__half>::set(int k, float x) {
    v.h[k] = __float2half_rn(x);
}

static int is_aligned16(const void *p) { return ((uintptr_t)p % 16) == 0; }
static int64_t item_size(int dt) { return dt == SAMBA_CU_F32 ? 4 : 2; }

// Vectorised RMSNorm: one block per row, the row held in registers (NV 16-byte vectors per
// thread), so x and the residual are read once and y / residual_out written once. Used when
// x, residual, residual_out and y share one float dtype and every row is 16-byte aligned.
template <typename T, int NV>
__global__ void __launch_bounds__(1024)
rmsnorm_vec_kernel(int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res, int64_t ldr,
                   samba_cu_ref res_out, samba_cu_ref w, float eps, samba_cu_ref y) {
    constexpr int V = Pack16<T>::N;
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const int nvr = (int)(n / V);
    Pack16<T> pk[NV];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int vi = threadIdx.x + j * blockDim.x;
        if (vi < nvr) {
            pk[j].load(x.ptr, row * ldx + (int64_t)vi * V);
            if (res.ptr) {
                Pack16<T> r;
                r.load(res.ptr, row * ldr + (int64_t)vi * V);
#pragma unroll
                for (int k = 0; k < V; ++k) pk[j].set(k, pk[j].get(k) + r.get(k));
                pk[j].store(res_out.ptr, row * n + (int64_t)vi * V);
            }
#pragma unroll
            for (int k = 0; k < V; ++k) ss += pk[j].get(k) * pk[j].get(k);
        }
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < (int)((blockDim.x + 31) >> 5); ++k) tot += red[k];
    const float r = 1.0f / sqrtf(tot / (float)n + eps);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int vi = threadIdx.x + j * blockDim.x;
        if (vi < nvr) {
            Pack16<T> o;
#pragma unroll
            for (int k = 0; k < V; ++k) o.set(k, pk[j].get(k) * r * ldf(w, (int64_t)vi * V + k));
            o.store(y.ptr, row * n + (int64_t)vi * V);
        }
    }
}

template <typename T>
static void launch_rms_vec(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res,
                           int64_t ldr, samba_cu_ref res_out, samba_cu_ref w, float eps,
                           samba_cu_ref y, cudaStream_t st) {
    const int64_t nvr = n / Pack16<T>::N;
    int nv = 1;
    while (cdiv(nvr, nv) > 1024) nv *= 2;
    const unsigned threads = (unsigned)(cdiv(cdiv(nvr, nv), 32) * 32);
    if (nv == 1)
        rmsnorm_vec_kernel<T, 1><<<(unsigned)rows, threads, 0, st>>>(n, x, ldx, res, ldr, res_out, w, eps, y);
    else if (nv == 2)
        rmsnorm_vec_kernel<T, 2><<<(unsigned)rows, threads, 0, st>>>(n, x, ldx, res, ldr, res_out, w, eps, y);
    else
        rmsnorm_vec_kernel<T, 4><<<(unsigned)rows, threads, 0, st>>>(n, x, ldx, res, ldr, res_out, w, eps, y);
}

// The vectorised path applies: one dtype for x / residual / outputs, aligned rows, and at
// most 4 vectors per thread at 1024 threads.
static int rms_vec_ok(int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res, int64_t ldr,
                      samba_cu_ref res_out, samba_cu_ref y) {
    const int dt = x.dtype;
    const int64_t it = item_size(dt), V = 16 / it;
    if (y.dtype != dt || (res.ptr && (res.dtype != dt || res_out.dtype != dt))) return 0;
    if (n % V || n / V > 4096 || (ldx * it) % 16 || !is_aligned16(x.ptr) || !is_aligned16(y.ptr))
        return 0;
    if (res.ptr && ((ldr * it) % 16 || !is_aligned16(res.ptr) || !is_aligned16(res_out.ptr)))
        return 0;
    return 1;
}

// One block per row. Pass 1: (x [+ residual] -> residual_out) and the sum of squares in
// float32; block reduction; pass 2: y = v * rsqrt(mean + eps) * weight. With a residual,
// v is the sum as stored in residual_out's dtype (what a framework's pre-norm would see).
__global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res, int64_t ldr,
               samba_cu_ref res_out, samba_cu_ref w, float eps, samba_cu_ref y) {
    __shared__ float red[NORM_THREADS / 32];
    const int64_t row = blockIdx.x;
    const int64_t base = row * n, xb = row * ldx, rb = row * ldr;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = ldf(x, xb + i);
        if (res.ptr) {
            v = round_to(res_out.dtype, v + ldf(res, rb + i));
            stf(res_out, base + i, v);
        }
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < (int)(blockDim.x >> 5); ++k) tot += red[k];
    const float r = 1.0f / sqrtf(tot / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = res.ptr ? ldf(res_out, base + i) : ldf(x, xb + i);
        stf(y, base + i, v * r * ldf(w, i));
    }
}

extern "C" samba_status samba_cu_rmsnorm(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx,
                                         samba_cu_ref residual, int64_t ldr,
                                         samba_cu_ref residual_out, samba_cu_ref weight,
                                         float eps, samba_cu_ref y, void *stream) {
    if (rows == 0 || n == 0) return SAMBA_OK;
    if (rows > 0x7fffffffLL)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "rms_norm: more than 2^31 rows");
    cudaStream_t st = (cudaStream_t)stream;
    if (rms_vec_ok(n, x, ldx, residual, ldr, residual_out, y)) {
        if (x.dtype == SAMBA_CU_BF16)
            launch_rms_vec<__nv_bfloat16>(rows, n, x, ldx, residual, ldr, residual_out, weight, eps, y, st);
        else if (x.dtype == SAMBA_CU_F16)
            launch_rms_vec<__half>(rows, n, x, ldx, residual, ldr, residual_out, weight, eps, y, st);
        else
            launch_rms_vec<float>(rows, n, x, ldx, residual, ldr, residual_out, weight, eps, y, st);
        return samba_cu_check_launch("rms_norm", stream);
    }
    int threads = NORM_THREADS;
    while (threads > 32 && threads / 2 >= n) threads /= 2;
    rmsnorm_kernel<<<(unsigned)rows, threads, 0, (cudaStream_t)stream>>>(
        n, x, ldx, residual, ldr, residual_out, weight, eps, y);
    return samba_cu_check_launch("rms_norm", stream);
}

// One thread per rotated pair (b, t, h, i < hd/2). Angles pos * base^(-2i/hd) and their
// sine / cosine in float64 (large positions keep full float32 accuracy).
__global__ void rotary_kernel(int64_t batch, int64_t L, int64_t H, int64_t hd, samba_cu_ref x,
                              int64_t xs0, int64_t xs1, int64_t xs2, samba_cu_ref pos,
                              int pos_batched, int64_t offset, double log_base, samba_cu_ref y,
                              int64_t ys0, int64_t ys1, int64_t ys2) {
    const int64_t half = hd / 2;
    const int64_t n = batch * L * H * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx % half;
        int64_t r = idx / half;
        const int64_t h = r % H;
        r /= H;
        const int64_t t = r % L;
        const int64_t b = r / L;
        int64_t p;
        if (pos.ptr)
            p = ldi(pos.ptr, pos.dtype, pos_batched ? b * L + t : t) + offset;
        else
            p = offset + t;
        const double inv_freq = exp(-(2.0 * (double)i / (double)hd) * log_base);
        double sn, cs;
        sincos((double)p * inv_freq, &sn, &cs);
        const int64_t xo = b * xs0 + t * xs1 + h * xs2;
        const int64_t yo = b * ys0 + t * ys1 + h * ys2;
        const float x1 = ldf(x, xo + i), x2 = ldf(x, xo + i + half);
        const float c = (float)cs, s = (float)sn;
        stf(y, yo + i, x1 * c - x2 * s);
        stf(y, yo + i + half, x1 * s + x2 * c);
    }
}

extern "C" samba_status samba_cu_rotary(int64_t batch, int64_t seqlen, int64_t nheads,
                                        int64_t headdim, samba_cu_ref x, const int64_t *x_s,
                                        samba_cu_ref positions, int pos_batched, int64_t offset,
                                        double base, samba_cu_ref y, const int64_t *y_s,
                                        void *stream) {
    if (headdim % 2 != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "apply_rotary: headdim must be even, got %lld",
                                 (long long)headdim);
    if (!(base > 0.0))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "apply_rotary: base must be > 0");
    const int64_t n = batch * seqlen * nheads * (headdim / 2);
    if (n == 0) return SAMBA_OK;
    rotary_kernel<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(
        batch, seqlen, nheads, headdim, x, x_s[0], x_s[1], x_s[2], positions, pos_batched,
        offset, log(base), y, y_s[0], y_s[1], y_s[2]);
    return samba_cu_check_launch("apply_rotary", stream);
}

__global__ void swiglu_kernel(int64_t rows, int64_t cols, samba_cu_ref g, int64_t ldg,
                              samba_cu_ref u, int64_t ldu, samba_cu_ref y, int64_t ldy) {
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        const float gv = ldf(g, r * ldg + c);
        stf(y, r * ldy + c, silu_f(gv) * ldf(u, r * ldu + c));
    }
}

// Vectorised SwiGLU: one 16-byte vector of gate, up and y per thread and iteration.
template <typename T>
__global__ void swiglu_vec_kernel(int64_t rows, int64_t cols, samba_cu_ref g, int64_t ldg,
                                  samba_cu_ref u, int64_t ldu, samba_cu_ref y, int64_t ldy) {
    constexpr int V = Pack16<T>::N;
    const int64_t vpr = cols / V, n = rows * vpr;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / vpr, c = (i % vpr) * V;
        Pack16<T> a, b, o;
        a.load(g.ptr, r * ldg + c);
        b.load(u.ptr, r * ldu + c);
#pragma unroll
        for (int k = 0; k < V; ++k) o.set(k, silu_f(a.get(k)) * b.get(k));
        o.store(y.ptr, r * ldy + c);
    }
}

extern "C" samba_status samba_cu_swiglu(int64_t rows, int64_t cols, samba_cu_ref gate,
                                        int64_t ld_gate, samba_cu_ref up, int64_t ld_up,
                                        samba_cu_ref y, int64_t ld_y, void *stream) {
    const int64_t n = rows * cols;
    if (n == 0) return SAMBA_OK;
    const int dt = gate.dtype;
    const int64_t it = item_size(dt), V = 16 / it;
    cudaStream_t st = (cudaStream_t)stream;
    if (up.dtype == dt && y.dtype == dt && cols % V == 0 && (ld_gate * it) % 16 == 0 &&
        (ld_up * it) % 16 == 0 && (ld_y * it) % 16 == 0 && is_aligned16(gate.ptr) &&
        is_aligned16(up.ptr) && is_aligned16(y.ptr)) {
        const unsigned grid = grid_1d(n / V, 256);
        if (dt == SAMBA_CU_BF16)
            swiglu_vec_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        else if (dt == SAMBA_CU_F16)
            swiglu_vec_kernel<__half><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        else
            swiglu_vec_kernel<float><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        return samba_cu_check_launch("swiglu", stream);
    }
    swiglu_kernel<<<grid_1d(n, 256), 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
    return samba_cu_check_launch("swiglu", stream);
}
