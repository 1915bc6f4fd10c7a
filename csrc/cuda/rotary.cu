// rotary.cu - rotary position embedding (the CUDA side of csrc/rotary.c).
#include "cu_common.cuh"

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
