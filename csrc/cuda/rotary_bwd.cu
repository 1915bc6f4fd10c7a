// rotary_bwd.cu - rotary backward (the CUDA side of csrc/rotary_bwd.c): a rotation's adjoint is
// the rotation by the negative angle, dx1 = dy1 cos a + dy2 sin a, dx2 = -dy1 sin a + dy2 cos a.
// One thread per rotated pair; angles pos * base^(-2i/hd) and their sine / cosine in float64,
// as in the forward (rotary.cu).
#include "cu_common.cuh"
#include "samba_cuda_bwd.h"

__global__ void rotary_bwd_kernel(int64_t batch, int64_t L, int64_t H, int64_t hd, samba_cu_ref dy,
                                  int64_t s0, int64_t s1, int64_t s2, samba_cu_ref pos,
                                  int pos_batched, int64_t offset, double log_base, samba_cu_ref dx,
                                  int64_t o0, int64_t o1, int64_t o2) {
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
        const int64_t p = pos.ptr ? ldi(pos.ptr, pos.dtype, pos_batched ? b * L + t : t) + offset
                                  : offset + t;
        const double inv_freq = exp(-(2.0 * (double)i / (double)hd) * log_base);
        double sn, cs;
        sincos((double)p * inv_freq, &sn, &cs);
        const int64_t io = b * s0 + t * s1 + h * s2;
        const int64_t oo = b * o0 + t * o1 + h * o2;
        const float g1 = ldf(dy, io + i), g2 = ldf(dy, io + i + half);
        const float c = (float)cs, s = (float)sn;
        stf(dx, oo + i, g1 * c + g2 * s);
        stf(dx, oo + i + half, g2 * c - g1 * s);
    }
}

extern "C" samba_status samba_cu_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads,
                                            int64_t headdim, samba_cu_ref dy, const int64_t *dy_s,
                                            samba_cu_ref positions, int pos_batched, int64_t offset,
                                            double base, samba_cu_ref dx, const int64_t *dx_s,
                                            void *stream) {
    if (headdim % 2 != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "apply_rotary_bwd: headdim must be even, got %lld",
                                 (long long)headdim);
    if (!(base > 0.0))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "apply_rotary_bwd: base must be > 0");
    const int64_t n = batch * seqlen * nheads * (headdim / 2);
    if (n == 0) return SAMBA_OK;
    rotary_bwd_kernel<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(
        batch, seqlen, nheads, headdim, dy, dy_s[0], dy_s[1], dy_s[2], positions, pos_batched,
        offset, log(base), dx, dx_s[0], dx_s[1], dx_s[2]);
    return samba_cu_check_launch("apply_rotary_bwd", stream);
}
