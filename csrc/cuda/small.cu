// small.cu - RMSNorm (+ fused residual add), rotary embedding, SwiGLU.
#include "cu_common.cuh"

#define NORM_THREADS 256

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

extern "C" samba_status samba_cu_swiglu(int64_t rows, int64_t cols, samba_cu_ref gate,
                                        int64_t ld_gate, samba_cu_ref up, int64_t ld_up,
                                        samba_cu_ref y, int64_t ld_y, void *stream) {
    const int64_t n = rows * cols;
    if (n == 0) return SAMBA_OK;
    swiglu_kernel<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(rows, cols, gate, ld_gate,
                                                                      up, ld_up, y, ld_y);
    return samba_cu_check_launch("swiglu", stream);
}
