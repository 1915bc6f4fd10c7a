// norm.cu - RMSNorm with the fused residual add (the CUDA side of csrc/norm.c).
#include "pack16.cuh"

#define NORM_THREADS 256

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
