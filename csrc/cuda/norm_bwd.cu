// norm_bwd.cu - RMSNorm backward with the fused residual (the CUDA side of csrc/norm_bwd.c).
//
// Per row: s = x (+ residual, rounded to the forward's residual_out dtype), r = 1/sqrt(mean(s^2)
// + eps); ds = r (w dy) - s r^3 mean(w dy s) (+ dresidual_out); dx = ds; dw += dy s r.
// rmsnorm_bwd_kernel: a grid of min(rows, 4 x SMs) blocks walks the rows (block-stride); each
// block reduces sum(s^2) and sum(w dy s) of a row in float32, writes dx, and adds its dw
// contribution into a per-block float32 partial (shared memory when n fits, else the block's
// row of the scratch). rmsnorm_dw_kernel then sums the partials block by block in a fixed
// order (deterministic) and stores dweight.
#include "cu_common.cuh"
#include "samba_cuda_bwd.h"

#define NBW_THREADS 256

template <bool SMEM_ACC>
__global__ void __launch_bounds__(NBW_THREADS)
rmsnorm_bwd_kernel(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res,
                   int64_t ldr, int res_dt, samba_cu_ref w, float eps, samba_cu_ref dy, int64_t ldy,
                   samba_cu_ref dro, int64_t ldro, samba_cu_ref dx, float *part) {
    extern __shared__ float acc_s[];
    __shared__ float red[2][NBW_THREADS / 32];
    float *acc = SMEM_ACC ? acc_s : part + (int64_t)blockIdx.x * n;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int64_t i = tid; i < n; i += blockDim.x) acc[i] = 0.0f;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        float ss = 0.0f, dot = 0.0f;
        for (int64_t i = tid; i < n; i += blockDim.x) {
            float s = ldf(x, row * ldx + i);
            if (res.ptr) s = round_to(res_dt, s + ldf(res, row * ldr + i));
            ss += s * s;
            dot += ldf(w, i) * ldf(dy, row * ldy + i) * s;
        }
        ss = warp_sum(ss);
        dot = warp_sum(dot);
        if (lane == 0) {
            red[0][warp] = ss;
            red[1][warp] = dot;
        }
        __syncthreads();
        float tss = 0.0f, tdot = 0.0f;
        for (int k = 0; k < (int)(blockDim.x >> 5); ++k) {
            tss += red[0][k];
            tdot += red[1][k];
        }
        __syncthreads();  // red is rewritten by the next row
        const float r = 1.0f / sqrtf(tss / (float)n + eps);
        const float c = r * r * r * tdot / (float)n;
        for (int64_t i = tid; i < n; i += blockDim.x) {
            float s = ldf(x, row * ldx + i);
            if (res.ptr) s = round_to(res_dt, s + ldf(res, row * ldr + i));
            const float g = ldf(dy, row * ldy + i);
            float ds = r * ldf(w, i) * g - s * c;
            if (dro.ptr) ds += ldf(dro, row * ldro + i);
            stf(dx, row * n + i, ds);
            acc[i] += g * s * r;
        }
    }
    if (SMEM_ACC) {
        float *dst = part + (int64_t)blockIdx.x * n;
        for (int64_t i = tid; i < n; i += blockDim.x) dst[i] = acc[i];
    }
}

__global__ void rmsnorm_dw_kernel(int64_t n, int nb, const float *part, samba_cu_ref dw) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < nb; ++k) s += part[(int64_t)k * n + i];
        stf(dw, i, s);
    }
}

extern "C" samba_status samba_cu_rmsnorm_bwd(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx,
                                             samba_cu_ref residual, int64_t ldr, int res_dtype,
                                             samba_cu_ref weight, float eps, samba_cu_ref dy,
                                             int64_t ldy, samba_cu_ref dresidual_out, int64_t ldro,
                                             samba_cu_ref dx, samba_cu_ref dweight, void *stream) {
    if (rows < 0 || n < 0 || !(eps >= 0.0f))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "rms_norm_bwd: bad sizes or eps");
    if (n == 0) return SAMBA_OK;
    cudaStream_t st = (cudaStream_t)stream;
    if (rows == 0) {  // dweight = 0
        const cudaError_t e = cudaMemsetAsync(dweight.ptr, 0, (size_t)n * (dweight.dtype == SAMBA_CU_F32 ? 4 : 2), st);
        return e == cudaSuccess ? SAMBA_OK : samba_cu_fail("rms_norm_bwd (memset)", e);
    }
    int64_t nb = 4 * (int64_t)samba_sm_count();
    nb = nb > rows ? rows : nb;
    void *part = NULL;
    samba_status s = samba_cu_malloc(&part, (size_t)nb * (size_t)n * sizeof(float), st);
    if (s != SAMBA_OK) return s;
    const size_t smem = (size_t)n * sizeof(float);
    if (smem <= 48 * 1024) {
        rmsnorm_bwd_kernel<true><<<(unsigned)nb, NBW_THREADS, smem, st>>>(
            rows, n, x, ldx, residual, ldr, res_dtype, weight, eps, dy, ldy, dresidual_out, ldro,
            dx, (float *)part);
    } else {
        rmsnorm_bwd_kernel<false><<<(unsigned)nb, NBW_THREADS, 0, st>>>(
            rows, n, x, ldx, residual, ldr, res_dtype, weight, eps, dy, ldy, dresidual_out, ldro,
            dx, (float *)part);
    }
    s = samba_cu_check_launch("rms_norm_bwd", st);
    if (s == SAMBA_OK) {
        rmsnorm_dw_kernel<<<grid_1d(n, 256), 256, 0, st>>>(n, (int)nb, (const float *)part, dweight);
        s = samba_cu_check_launch("rms_norm_bwd (dweight)", st);
    }
    const samba_status s2 = samba_cu_free(part, st);
    return s != SAMBA_OK ? s : s2;
}
