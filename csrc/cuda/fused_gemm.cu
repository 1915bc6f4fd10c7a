// fused_gemm.cu - the products of a decode step whose input is an elementwise function of other
// arrays: y = rms_norm(x [+ residual]) @ W^T (a block's pre-norm and the product reading it)
// and y = (silu(gate) * up) @ W^T (the MLP's down projection). One row (a batch-1 decode step)
// runs one kernel (gemv.cu's samba_cu_gemv_rms / samba_cu_gemv_swiglu: every block computes
// the row itself in shared memory, so it never goes through global memory and the step has one
// launch fewer); otherwise, or where that kernel does not apply, the elementwise kernel writes
// the row into the caller's scratch array and gemm.cu multiplies it.
#include "gemm_internal.cuh"
#include "samba_cuda.h"

extern "C" samba_status samba_cu_rms_norm_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref x,
                                               int64_t ldx, samba_cu_ref res, int64_t ldr,
                                               samba_cu_ref res_out, samba_cu_ref nw, float eps,
                                               samba_cu_ref xn, samba_cu_ref w, int64_t ldw,
                                               samba_cu_ref y, int64_t ldy, void *stream) {
    if (M == 0 || N == 0) return SAMBA_OK;
    if (M == 1) {
        int done = 0;
        samba_status st = samba_cu_gemv_rms(&done, N, K, x, res, res_out, nw, eps, w, ldw, y,
                                            stream);
        if (done || st != SAMBA_OK) return st;
    }
    samba_status st = samba_cu_rmsnorm(M, K, x, ldx, res, ldr, res_out, nw, eps, xn, stream);
    if (st != SAMBA_OK) return st;
    return samba_cu_gemm(M, N, K, xn, K, w, ldw, y, ldy, 0.0f, stream);
}

extern "C" samba_status samba_cu_swiglu_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref g,
                                             int64_t ldg, samba_cu_ref u, int64_t ldu,
                                             samba_cu_ref h, samba_cu_ref w, int64_t ldw,
                                             samba_cu_ref y, int64_t ldy, void *stream) {
    if (M == 0 || N == 0) return SAMBA_OK;
    if (M == 1) {
        int done = 0;
        samba_status st = samba_cu_gemv_swiglu(&done, N, K, g, u, w, ldw, y, stream);
        if (done || st != SAMBA_OK) return st;
    }
    samba_status st = samba_cu_swiglu(M, K, g, ldg, u, ldu, h, K, stream);
    if (st != SAMBA_OK) return st;
    return samba_cu_gemm(M, N, K, h, K, w, ldw, y, ldy, 0.0f, stream);
}
