// fused_gemm.cu - the products of a decode step whose input is an elementwise function of other
// arrays: y = rms_norm(x [+ residual]) @ W^T (a block's pre-norm and the product reading it)
// and y = (silu(gate) * up) @ W^T (the MLP's down projection). One row (a batch-1 decode step)
// runs one kernel (gemv.cu's samba_cu_gemv_rms / samba_cu_gemv_swiglu: every block computes
// the row itself in shared memory, so it never goes through global memory and the step has one
// launch fewer); otherwise, or where that kernel does not apply, the elementwise kernel writes
// the row into the caller's scratch array and gemm.cu multiplies it. Third, Mamba's decode step
// with its dt projection, dt = dt_in @ dt_w^T feeding the state update: at batch 1 the update
// computes each channel's dt itself (scan.cu's step_dt_proj, the GEMV's sums), otherwise gemm.cu
// writes dt into the caller's scratch array first.
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

extern "C" samba_status samba_cu_dt_state_update(const samba_cu_scan_step_args *a, int64_t R,
                                                 samba_cu_ref dt_in, int64_t ld_dt_in,
                                                 samba_cu_ref dt_w, samba_cu_ref dt_buf,
                                                 void *stream) {
    samba_cu_scan_step_args s = *a;
    if (s.batch == 0 || s.dim == 0) return SAMBA_OK;
    int lpc = 1;  // samba_cu_scan_step's lanes per channel
    while (lpc < 32 && lpc < s.dstate) lpc *= 2;
    if (s.batch == 1 && R / 8 <= lpc && samba_cu_gemv_row_plain(s.dim, R, dt_in, dt_w, R, dt_buf)) {
        s.dt = dt_in;
        s.dt_w = dt_w;
        s.dt_nv = (int)(R / 8);
        s.dt_rdt = dt_buf.dtype;
        return samba_cu_scan_step(&s, stream);
    }
    // the call samba_ext.cuda.blas.matmul(dt_in, dt_w, trans_b=True) makes, so that the bits
    // are the composition's whichever path (GEMV, cuBLASLt, cuBLAS) the product takes
    samba_status st = samba_cu_gemm_batched(1, 0, s.dim, s.batch, R, dt_w, R, 0, dt_in, ld_dt_in,
                                            0, dt_buf, s.dim, s.batch * s.dim, 1, 0.0f, stream);
    if (st != SAMBA_OK) return st;
    s.dt = dt_buf;
    s.dt_s[0] = s.dim;
    s.dt_s[1] = 1;
    s.dt_nv = 0;
    return samba_cu_scan_step(&s, stream);
}
