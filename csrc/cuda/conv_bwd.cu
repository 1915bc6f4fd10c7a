// conv_bwd.cu - launcher of the causal conv1d's backward (kernel: conv_bwd_kernels.cuh).
#include <string.h>

#include "conv_bwd_kernels.cuh"
#include "conv_seq.cuh"
#include "samba_cuda_bwd_scan.h"

static int cbwd_rows_aligned(const void *ptr, const int64_t *s, int64_t item) {
    return (uintptr_t)ptr % 16 == 0 && s[2] == 1 && (s[0] * item) % 16 == 0 &&
           (s[1] * item) % 16 == 0;
}

template <typename T, bool SEQ>
static void cbwd_launch(const CbwdParams &p, int width, unsigned grid, cudaStream_t st) {
    if (width == 2)
        conv_bwd_kernel<T, 2, SEQ><<<grid, CBWD_THREADS, 0, st>>>(p);
    else if (width == 3)
        conv_bwd_kernel<T, 3, SEQ><<<grid, CBWD_THREADS, 0, st>>>(p);
    else
        conv_bwd_kernel<T, 4, SEQ><<<grid, CBWD_THREADS, 0, st>>>(p);
}

template <typename T>
static void cbwd_launch(const CbwdParams &p, int width, unsigned grid, cudaStream_t st) {
    if (p.seq.ptr != NULL)
        cbwd_launch<T, true>(p, width, grid, st);
    else
        cbwd_launch<T, false>(p, width, grid, st);
}

extern "C" samba_status samba_cu_conv1d_bwd(int64_t batch, int64_t dim, int64_t seqlen,
                                            int64_t width, samba_cu_ref x, const int64_t *x_s,
                                            samba_cu_ref dy, const int64_t *dy_s,
                                            samba_cu_ref weight, samba_cu_ref bias,
                                            const float *initial_states,
                                            const float *dfinal_states, samba_cu_ref seq_idx,
                                            const int64_t *seq_s, int silu, samba_cu_ref dx,
                                            float *dweight, float *dbias,
                                            float *dinitial_states, void *stream) {
    if (width < 2 || width > 4)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "causal_conv1d_bwd: width must be 2, 3 "
                                 "or 4, got %lld", (long long)width);
    if (batch < 0 || dim < 0 || seqlen < 0 || x.dtype != dy.dtype || x.dtype > SAMBA_CU_BF16)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "causal_conv1d_bwd: x and dy must have one float "
                                 "dtype and the sizes must be >= 0");
    const samba_status sc = conv_seq_check(
        "causal_conv1d_bwd", seq_idx, seq_s,
        initial_states != NULL || dfinal_states != NULL || dinitial_states != NULL);
    if (sc != SAMBA_OK) return sc;
    const bool seq = seq_idx.ptr != NULL;
    if (dim == 0) return SAMBA_OK;
    if (dweight == NULL || (batch * seqlen > 0 && dx.ptr == NULL))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "causal_conv1d_bwd: an output is missing");
    cudaStream_t st = (cudaStream_t)stream;
    if (seqlen == 0 && dinitial_states != NULL && batch > 0) {
        // the final states are the initial ones
        const size_t nb = (size_t)(batch * dim * (width - 1)) * sizeof(float);
        cudaError_t e = dfinal_states ? cudaMemcpyAsync(dinitial_states, dfinal_states, nb,
                                                        cudaMemcpyDeviceToDevice, st)
                                      : cudaMemsetAsync(dinitial_states, 0, nb, st);
        if (e != cudaSuccess) return samba_cu_fail("causal_conv1d_bwd (empty sequence)", e);
    }
    CbwdParams p;
    memset(&p, 0, sizeof p);
    p.batch = batch;
    p.dim = dim;
    p.seqlen = seqlen;
    p.x = x.ptr;
    p.dy = dy.ptr;
    for (int i = 0; i < 3; ++i) {
        p.xs[i] = x_s[i];
        p.dys[i] = dy_s[i];
    }
    p.weight = weight;
    p.bias = bias;
    p.dx = dx;
    p.init = initial_states;
    p.dfinal = dfinal_states;
    p.dweight = dweight;
    p.dbias = bias.ptr ? dbias : NULL;
    p.dinit = dinitial_states;
    p.silu = silu != 0;
    p.seq = seq_idx;
    p.ss[0] = seq ? seq_s[0] : 0;
    p.ss[1] = seq ? seq_s[1] : 0;
    const int64_t item = x.dtype == SAMBA_CU_F32 ? 4 : 2;
    p.vec = cbwd_rows_aligned(x.ptr, x_s, item) && cbwd_rows_aligned(dy.ptr, dy_s, item);
    const int64_t dx_s[3] = {dim * seqlen, seqlen, 1};
    p.vec_out = dx.dtype == x.dtype && cbwd_rows_aligned(dx.ptr, dx_s, item);
    const unsigned grid = (unsigned)(dim < 65535LL * 16 ? dim : 65535LL * 16);
    if (x.dtype == SAMBA_CU_BF16)
        cbwd_launch<__nv_bfloat16>(p, (int)width, grid, st);
    else if (x.dtype == SAMBA_CU_F16)
        cbwd_launch<__half>(p, (int)width, grid, st);
    else
        cbwd_launch<float>(p, (int)width, grid, st);
    return samba_cu_check_launch("causal_conv1d_bwd", st);
}
