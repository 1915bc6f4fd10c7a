// gemm_internal.cuh - what gemm.cu and gemm_lt.cu share (not part of the C API).
#ifndef SAMBA_GEMM_INTERNAL_CUH
#define SAMBA_GEMM_INTERNAL_CUH

#include "cu_common.cuh"

#define SAMBA_GEMM_WORKSPACE_BYTES (32u << 20)

// The cuBLAS and cuBLASLt handles are made on a device's first product, which may be inside a
// stream capture (a graph whose products are the first of the process to reach cuBLAS, e.g. a
// decode step at a new batch size after steps that ran only the GEMV). Making a handle
// allocates, which a capture in the default (global) mode forbids; this scope puts the calling
// thread in relaxed mode while the handle is made, then back.
struct RelaxedCapture {
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&mode); }
    ~RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&mode); }
};

// The workspace (SAMBA_GEMM_WORKSPACE_BYTES) of `stream` on device `dev`, allocated on first
// use outside stream capture and kept until samba_cu_gemm_release; *ws = NULL when none can
// be had (inside a capture before the first eager call on that stream, or too many streams).
extern "C" samba_status samba_cu_gemm_stream_workspace(int dev, void *stream, void **ws);

// gemm_lt.cu: column-major C = op(A) op(B) + beta C through cublasLtMatmul (same arguments as
// samba_cu_gemm_batched); tune != 0 times the heuristic's candidates on a key's first eager
// beta == 0 call. Returns SAMBA_ERR_UNSUPPORTED when cuBLASLt has no algorithm for the shape
// (or reports CUBLAS_STATUS_NOT_SUPPORTED).
extern "C" samba_status samba_cu_gemm_lt(int tune, int transa, int transb, int64_t m, int64_t n,
                                         int64_t k, samba_cu_ref A, int64_t lda, int64_t sA,
                                         samba_cu_ref B, int64_t ldb, int64_t sB, samba_cu_ref C,
                                         int64_t ldc, int64_t sC, int64_t batch, float beta,
                                         void *stream);
extern "C" void samba_cu_gemm_lt_release(void);

// gemv.cu: y = x @ W^T (+ beta y) for M <= SAMBA_GEMV_MAX_M rows of bf16 / f16 x; row m of x
// starts at element xoff[m] of x.ptr, of y at yoff[m] of y.ptr; W (N, K) with row pitch ldw.
// *done = 0 (and SAMBA_OK) when the shape, dtypes or W's alignment do not fit (the caller
// then runs cuBLAS); *done = 1 when it was launched (st: launch status).
#define SAMBA_GEMV_MAX_M 8
extern "C" samba_status samba_cu_gemv(int *done, int64_t M, int64_t N, int64_t K,
                                      samba_cu_ref x, const int64_t *xoff, samba_cu_ref w,
                                      int64_t ldw, samba_cu_ref y, const int64_t *yoff,
                                      float beta, void *stream);

// gemv.cu: y (1, N) = rms_norm(x [+ res]) @ W^T in one kernel (rms_norm as norm.cu computes
// it, rounded to W's dtype; res_out = x + res written when res is given). *done = 0 (and
// SAMBA_OK) when the shapes, dtypes or alignments do not fit or the GEMV is off (the caller
// then runs rms_norm and the product apart).
extern "C" samba_status samba_cu_gemv_rms(int *done, int64_t N, int64_t K, samba_cu_ref x,
                                          samba_cu_ref res, samba_cu_ref res_out,
                                          samba_cu_ref nw, float eps, samba_cu_ref w,
                                          int64_t ldw, samba_cu_ref y, void *stream);
// gemv.cu: 1 when samba_cu_gemm / samba_cu_gemv would compute y (1, N) = x @ W^T (W rows ldw
// apart) with the one-row kernel at one warp per row of W and 8-element vectors, each lane
// taking at most one vector (K a multiple of 8, at most 256): lane l's products of elements
// 8l .. 8l + 7 accumulated in order from 0 by fmaf, plus 0, summed by warp_sum, added to 0 and
// rounded to y's dtype. samba_cu_dt_state_update repeats exactly that.
extern "C" int samba_cu_gemv_row_plain(int64_t N, int64_t K, samba_cu_ref x, samba_cu_ref w,
                                       int64_t ldw, samba_cu_ref y);
// gemv.cu: y (1, N) = (silu(g) * u) @ W^T in one kernel (SwiGLU as swiglu.cu computes it,
// rounded to W's dtype); *done as samba_cu_gemv_rms.
extern "C" samba_status samba_cu_gemv_swiglu(int *done, int64_t N, int64_t K, samba_cu_ref g,
                                             samba_cu_ref u, samba_cu_ref w, int64_t ldw,
                                             samba_cu_ref y, void *stream);

#endif
