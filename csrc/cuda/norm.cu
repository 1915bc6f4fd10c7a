// norm.cu - RMSNorm with the fused residual add (the CUDA side of csrc/norm.c).
#include "pdl.cuh"
#include "vecio.cuh"

#define NORM_THREADS 256

// Register RMSNorm: one block per row, the row held in registers as NC chunks of E
// consecutive elements per thread (chunk c = threadIdx.x + j * blockDim.x), loaded and
// stored with vector accesses of every array's own dtype (vecio.cuh), so x and the residual
// are read once and y / residual_out written once, whatever the dtype combination. The
// weight is loaded before the reduction when it fits in registers (hides its latency for
// a few rows). Math as rmsnorm_kernel below: v = x [+ residual rounded to residual_out's
// dtype], float32 sum of squares, y = v * rsqrt(mean + eps) * w.
template <int E, int NC>
__global__ void __launch_bounds__(512)
rmsnorm_reg_kernel(int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res, int64_t ldr,
                   samba_cu_ref res_out, samba_cu_ref w, float eps, samba_cu_ref y) {
    constexpr bool W_EARLY = NC * E <= 16;
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const int nch = (int)(n / E);
    float v[NC][E], wv[W_EARLY ? NC : 1][E];
    float ss = 0.0f;
    pdl_wait();
    pdl_trigger();
#pragma unroll
    for (int j = 0; j < NC; ++j) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < nch) {
            const int64_t col = (int64_t)c * E;
            // All loads of the chunk issued before any is waited for (raw, then converted).
            RawV<E> rx, rr, rw;
            ldraw<E>(x, row * ldx + col, rx);
            if (res.ptr) ldraw<E>(res, row * ldr + col, rr);
            if constexpr (W_EARLY) ldraw<E>(w, col, rw);
            cvt<E>(rx, x.dtype, v[j]);
            if constexpr (W_EARLY) cvt<E>(rw, w.dtype, wv[j]);
            if (res.ptr) {
                float r[E];
                cvt<E>(rr, res.dtype, r);
#pragma unroll
                for (int k = 0; k < E; ++k) v[j][k] = round_to(res_out.dtype, v[j][k] + r[k]);
                stv<E>(res_out, row * n + col, v[j]);
            }
#pragma unroll
            for (int k = 0; k < E; ++k) ss += v[j][k] * v[j][k];
        }
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
    const int nwarps = (int)(blockDim.x >> 5);   // blockDim.x is a multiple of 32
    for (int k = 0; k < nwarps; ++k) tot += red[k];
    const float r = 1.0f / sqrtf(tot / (float)n + eps);
#pragma unroll
    for (int j = 0; j < NC; ++j) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < nch) {
            const int64_t col = (int64_t)c * E;
            float o[E];
            if constexpr (W_EARLY) {
#pragma unroll
                for (int k = 0; k < E; ++k) o[k] = v[j][k] * r * wv[j][k];
            } else {
                float wl[E];
                ldv<E>(w, col, wl);
#pragma unroll
                for (int k = 0; k < E; ++k) o[k] = v[j][k] * r * wl[k];
            }
            stv<E>(y, row * n + col, o);
        }
    }
}

#define RMS_REG_MAX_THREADS 512

template <int E>
static void launch_rms_reg(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res,
                           int64_t ldr, samba_cu_ref res_out, samba_cu_ref w, float eps,
                           samba_cu_ref y, int nc, cudaStream_t st) {
    const int64_t nch = n / E;
    const unsigned threads = (unsigned)(cdiv(cdiv(nch, nc), 32) * 32);
    const unsigned grid = (unsigned)rows;
#define RMS_REG_LAUNCH(NC_)                                                                    \
    samba_launch(rmsnorm_reg_kernel<E, NC_>, grid, threads, 0, st, n, x, ldx, res, ldr, res_out, \
                 w, eps, y)
    if (nc == 1) RMS_REG_LAUNCH(1);
    else if (nc == 2) RMS_REG_LAUNCH(2);
    else if (nc == 4) RMS_REG_LAUNCH(4);
    else RMS_REG_LAUNCH(8);
#undef RMS_REG_LAUNCH
}

// The register path: float dtypes, the widest E in {8, 4, 2, 1} that divides n and that
// every array's base address and row stride allow (vecio.cuh), and at most 512 threads x
// 8 chunks per row. Fewest chunks per thread with <= 256 threads (many blocks of a few
// warps), else <= 512. Returns 0 (and the caller loops in rmsnorm_kernel) otherwise.
static int rms_reg_try(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx, samba_cu_ref res,
                       int64_t ldr, samba_cu_ref res_out, samba_cu_ref w, float eps,
                       samba_cu_ref y, cudaStream_t st) {
    if (!vec_float_dtype(x.dtype) || !vec_float_dtype(w.dtype) || !vec_float_dtype(y.dtype))
        return 0;
    if (res.ptr && (!vec_float_dtype(res.dtype) || !vec_float_dtype(res_out.dtype))) return 0;
    int E = 8;
    for (; E > 1; E /= 2) {
        if (n % E == 0 && vec_ok(E, x, ldx) && vec_ok(E, w, 0) && vec_ok(E, y, n) &&
            vec_ok(E, res, ldr) && vec_ok(E, res_out, n))
            break;
    }
    const int64_t nch = n / E;
    int nc = 0;
    for (int c = 1; c <= 8 && !nc; c *= 2)
        if (cdiv(nch, c) <= 256) nc = c;
    for (int c = 1; c <= 8 && !nc; c *= 2)
        if (cdiv(nch, c) <= RMS_REG_MAX_THREADS) nc = c;
    if (!nc) return 0;
    if (E == 8) launch_rms_reg<8>(rows, n, x, ldx, res, ldr, res_out, w, eps, y, nc, st);
    else if (E == 4) launch_rms_reg<4>(rows, n, x, ldx, res, ldr, res_out, w, eps, y, nc, st);
    else if (E == 2) launch_rms_reg<2>(rows, n, x, ldx, res, ldr, res_out, w, eps, y, nc, st);
    else launch_rms_reg<1>(rows, n, x, ldx, res, ldr, res_out, w, eps, y, nc, st);
    return 1;
}

// The general path (rows longer than the register path holds): one block per row.
// Pass 1: (x [+ residual] -> residual_out) and the sum of squares in float32; block
// reduction; pass 2: y = v * rsqrt(mean + eps) * weight. With a residual, v is the sum as
// stored in residual_out's dtype (what a framework's pre-norm would see).
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
    if (rms_reg_try(rows, n, x, ldx, residual, ldr, residual_out, weight, eps, y, st))
        return samba_cu_check_launch("rms_norm", stream);
    int threads = NORM_THREADS;
    while (threads > 32 && threads / 2 >= n) threads /= 2;
    rmsnorm_kernel<<<(unsigned)rows, threads, 0, (cudaStream_t)stream>>>(
        n, x, ldx, residual, ldr, residual_out, weight, eps, y);
    return samba_cu_check_launch("rms_norm", stream);
}
