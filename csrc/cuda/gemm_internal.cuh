// gemm_internal.cuh - what gemm.cu and gemm_lt.cu share (not part of the C API).
#ifndef SAMBA_GEMM_INTERNAL_CUH
#define SAMBA_GEMM_INTERNAL_CUH

#include "cu_common.cuh"

#define SAMBA_GEMM_WORKSPACE_BYTES (32u << 20)

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

#endif
