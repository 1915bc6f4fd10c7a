// gemm.cu - y = x @ w^T through cublasGemmEx (row-major in, row-major out), or through
// cuBLASLt (gemm_lt.cu) when the mode says so (samba_cu_gemm_mode: environment variable
// SAMBA_EXT_GEMM = gemmex (default) | lt | lt-tune, read once). With SAMBA_EXT_GEMV=1, products
// of at most 8 rows of bf16 / f16 x with a row-major W run gemv.cu's kernel instead.
//
// Math mode: CUBLAS_COMPUTE_32F with CUBLAS_GEMM_DEFAULT and the handle's default math mode,
// i.e. float32 accumulation for every input dtype and no TF32 down-conversion of float32
// inputs; bf16/f16 inputs run on the tensor cores with float32 accumulation.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_internal.cuh"

#define GEMM_WORKSPACE SAMBA_GEMM_WORKSPACE_BYTES
#define GEMM_MAX_DEVICES 64
#define GEMM_MAX_STREAMS 16

static cublasHandle_t g_handle[GEMM_MAX_DEVICES];
// The stream the device's handle is bound to (valid when g_bound[dev]).
static void *g_bound_stream[GEMM_MAX_DEVICES];
static int g_bound[GEMM_MAX_DEVICES];
// One workspace per stream, never freed before samba_cu_gemm_release: a captured CUDA
// graph keeps the workspace pointer of its stream, so a workspace must outlive every graph.
// (cublasSetStream resets the handle to cuBLAS's default workspace pool, so the workspace
// is set again after each change of stream; one workspace shared by two streams would let
// GEMMs running concurrently on them overwrite each other's partial sums.)
static void *g_ws_stream[GEMM_MAX_DEVICES][GEMM_MAX_STREAMS];
static void *g_ws_ptr[GEMM_MAX_DEVICES][GEMM_MAX_STREAMS];
static int g_ws_n[GEMM_MAX_DEVICES];

static const char *cublas_status_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

static samba_status get_handle(int *dev_out, cublasHandle_t *out) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return samba_cu_fail("gemm: cudaGetDevice", e);
    if (dev < 0 || dev >= GEMM_MAX_DEVICES)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: device %d", dev);
    if (g_handle[dev] == NULL) {
        cublasHandle_t h;
        cublasStatus_t s;
        {
            RelaxedCapture relaxed;
            s = cublasCreate(&h);
        }
        if (s != CUBLAS_STATUS_SUCCESS)
            return samba_cu_fail_msg(SAMBA_ERR_CUDA, "gemm: cublasCreate failed (%s)",
                                     cublas_status_str(s));
        g_handle[dev] = h;
        g_bound[dev] = 0;
    }
    *dev_out = dev;
    *out = g_handle[dev];
    return SAMBA_OK;
}

// The workspace of `stream` on device `dev` (allocated on first use), or NULL when none can
// be had without allocating inside a stream capture or beyond GEMM_MAX_STREAMS streams (the
// handle then keeps cuBLAS's default workspace pool, which is stream-ordered).
extern "C" samba_status samba_cu_gemm_stream_workspace(int dev, void *stream, void **ws) {
    *ws = NULL;
    for (int i = 0; i < g_ws_n[dev]; ++i)
        if (g_ws_stream[dev][i] == stream) {
            *ws = g_ws_ptr[dev][i];
            return SAMBA_OK;
        }
    if (g_ws_n[dev] >= GEMM_MAX_STREAMS) return SAMBA_OK;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaError_t e = cudaStreamIsCapturing((cudaStream_t)stream, &cs);
    if (e != cudaSuccess) return samba_cu_fail("gemm: cudaStreamIsCapturing", e);
    if (cs != cudaStreamCaptureStatusNone) return SAMBA_OK;  // no cudaMalloc while capturing
    void *p = NULL;
    e = cudaMalloc(&p, GEMM_WORKSPACE);
    if (e != cudaSuccess) return samba_cu_fail("gemm: workspace cudaMalloc", e);
    g_ws_stream[dev][g_ws_n[dev]] = stream;
    g_ws_ptr[dev][g_ws_n[dev]] = p;
    g_ws_n[dev]++;
    *ws = p;
    return SAMBA_OK;
}

// The device's handle, bound to `stream` with that stream's workspace (every GEMM entry
// point starts here).
static samba_status bind_handle(void *stream, cublasHandle_t *out) {
    int dev = 0;
    samba_status st = get_handle(&dev, out);
    if (st != SAMBA_OK) return st;
    if (g_bound[dev] && g_bound_stream[dev] == stream) return SAMBA_OK;
    g_bound[dev] = 0;
    cublasStatus_t s = cublasSetStream(*out, (cudaStream_t)stream);
    if (s != CUBLAS_STATUS_SUCCESS)
        return samba_cu_fail_msg(SAMBA_ERR_CUDA, "gemm: cublasSetStream failed (%s)",
                                 cublas_status_str(s));
    void *ws = NULL;
    st = samba_cu_gemm_stream_workspace(dev, stream, &ws);
    if (st != SAMBA_OK) return st;
    if (ws != NULL) {
        s = cublasSetWorkspace(*out, ws, GEMM_WORKSPACE);
        if (s != CUBLAS_STATUS_SUCCESS)
            return samba_cu_fail_msg(SAMBA_ERR_CUDA, "gemm: cublasSetWorkspace failed (%s)",
                                     cublas_status_str(s));
        g_bound_stream[dev] = stream;
        g_bound[dev] = 1;  // rebind (and look for a workspace again) only on a stream change
    }
    return SAMBA_OK;
}

static int g_mode = -1;  // SAMBA_GEMM_* once known

extern "C" int samba_cu_gemm_mode(void) {
    if (g_mode < 0) {
        const char *v = getenv("SAMBA_EXT_GEMM");
        g_mode = SAMBA_GEMM_GEMMEX;
        if (v != NULL && strcmp(v, "lt") == 0) g_mode = SAMBA_GEMM_LT;
        if (v != NULL && strcmp(v, "lt-tune") == 0) g_mode = SAMBA_GEMM_LT_TUNE;
    }
    return g_mode;
}

extern "C" samba_status samba_cu_gemm_set_mode(int mode) {
    if (mode != SAMBA_GEMM_GEMMEX && mode != SAMBA_GEMM_LT && mode != SAMBA_GEMM_LT_TUNE)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: unknown mode %d", mode);
    g_mode = mode;
    return SAMBA_OK;
}

// The cuBLASLt path when the mode asks for it: *done = 1 when it ran (or failed: st), 0 when
// the mode is gemmex or cuBLASLt has no algorithm for the shape (then cublas*Ex runs).
static samba_status try_lt(int *done, int ta, int tb, int64_t m, int64_t n, int64_t k,
                           samba_cu_ref A, int64_t lda, int64_t sA, samba_cu_ref B, int64_t ldb,
                           int64_t sB, samba_cu_ref C, int64_t ldc, int64_t sC, int64_t batch,
                           float beta, void *stream) {
    *done = 0;
    int mode = samba_cu_gemm_mode();
    if (mode == SAMBA_GEMM_GEMMEX) return SAMBA_OK;
    samba_status st = samba_cu_gemm_lt(mode == SAMBA_GEMM_LT_TUNE, ta, tb, m, n, k, A, lda, sA, B,
                                       ldb, sB, C, ldc, sC, batch, beta, stream);
    if (st == SAMBA_ERR_UNSUPPORTED) return SAMBA_OK;
    *done = 1;
    return st;
}

static cudaDataType_t cuda_type(int dt) {
    return dt == SAMBA_CU_BF16 ? CUDA_R_16BF : dt == SAMBA_CU_F16 ? CUDA_R_16F : CUDA_R_32F;
}

extern "C" samba_status samba_cu_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref x,
                                      int64_t ldx, samba_cu_ref w, int64_t ldw, samba_cu_ref y,
                                      int64_t ldy, float beta, void *stream) {
    if (M == 0 || N == 0) return SAMBA_OK;
    if (x.dtype != w.dtype)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: x and w must have the same dtype");
    if (y.dtype != SAMBA_CU_F32 && y.dtype != x.dtype)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: y must be float32 or the input dtype");
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || ldx > INT32_MAX || ldw > INT32_MAX ||
        ldy > INT32_MAX)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "gemm: dimensions above 2^31");
    if (K == 0) {
        // cuBLAS would leave y untouched; the product of empty matrices is zero.
        if (beta != 0.0f)
            return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "gemm: K == 0 with beta != 0");
        size_t es = y.dtype == SAMBA_CU_F32 ? 4 : 2;
        cudaError_t e = cudaMemset2DAsync(y.ptr, (size_t)ldy * es, 0, (size_t)N * es, (size_t)M,
                                          (cudaStream_t)stream);
        if (e != cudaSuccess) return samba_cu_fail("gemm: cudaMemset2DAsync", e);
        return SAMBA_OK;
    }
    int done = 0;
    samba_status st;
    if (samba_cu_gemv_enabled() && M <= SAMBA_GEMV_MAX_M) {
        int64_t xo[SAMBA_GEMV_MAX_M], yo[SAMBA_GEMV_MAX_M];
        for (int64_t i = 0; i < M; ++i) xo[i] = i * ldx, yo[i] = i * ldy;
        st = samba_cu_gemv(&done, M, N, K, x, xo, w, ldw, y, yo, beta, stream);
        if (done || st != SAMBA_OK) return st;
    }
    st = try_lt(&done, 1, 0, N, M, K, w, ldw, 0, x, ldx, 0, y, ldy, 0, 1, beta, stream);
    if (done) return st;
    cublasHandle_t h;
    st = bind_handle(stream, &h);
    if (st != SAMBA_OK) return st;
    cublasStatus_t s;
    const float alpha = 1.0f;
    // Column-major view: y^T (N, M) = w (N, K) [w^T stored as K x N col-major, transposed]
    //                                  @ x^T (K, M) [x stored as K x M col-major].
    s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, w.ptr,
                     cuda_type(w.dtype), (int)ldw, x.ptr, cuda_type(x.dtype), (int)ldx, &beta,
                     y.ptr, cuda_type(y.dtype), (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return samba_cu_fail_msg(SAMBA_ERR_CUDA,
                                 "gemm: cublasGemmEx(M=%lld, N=%lld, K=%lld) failed (%s)",
                                 (long long)M, (long long)N, (long long)K, cublas_status_str(s));
    return samba_cu_check_launch("gemm (cublasGemmEx)", stream);
}

extern "C" samba_status samba_cu_gemm_batched(int transa, int transb, int64_t m, int64_t n,
                                              int64_t k, samba_cu_ref A, int64_t lda,
                                              int64_t sA, samba_cu_ref B, int64_t ldb,
                                              int64_t sB, samba_cu_ref C, int64_t ldc,
                                              int64_t sC, int64_t batch, float beta,
                                              void *stream) {
    if (m == 0 || n == 0 || batch == 0) return SAMBA_OK;
    if (A.dtype != B.dtype)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: A and B must have the same dtype");
    if (C.dtype != SAMBA_CU_F32 && C.dtype != A.dtype)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm: C must be float32 or the input dtype");
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
        ldc > INT32_MAX || batch > INT32_MAX)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "gemm: dimensions above 2^31");
    if (k == 0)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "gemm: k == 0 (empty product)");
    int done = 0;
    samba_status st;
    // y (rows, m) = x (rows, k) @ W (m, k)^T with W = A shared by the batch: the GEMV when on.
    if (samba_cu_gemv_enabled() && transa && !transb && (batch == 1 || sA == 0) &&
        n * batch <= SAMBA_GEMV_MAX_M) {
        int64_t xo[SAMBA_GEMV_MAX_M], yo[SAMBA_GEMV_MAX_M];
        for (int64_t r = 0; r < n * batch; ++r)
            xo[r] = (r / n) * sB + (r % n) * ldb, yo[r] = (r / n) * sC + (r % n) * ldc;
        st = samba_cu_gemv(&done, n * batch, m, k, B, xo, A, lda, C, yo, beta, stream);
        if (done || st != SAMBA_OK) return st;
    }
    st = try_lt(&done, transa, transb, m, n, k, A, lda, sA, B, ldb, sB, C, ldc, sC, batch, beta,
                stream);
    if (done) return st;
    cublasHandle_t h;
    st = bind_handle(stream, &h);
    if (st != SAMBA_OK) return st;
    cublasStatus_t s;
    const float alpha = 1.0f;
    s = cublasGemmStridedBatchedEx(
        h, transa ? CUBLAS_OP_T : CUBLAS_OP_N, transb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)m, (int)n,
        (int)k, &alpha, A.ptr, cuda_type(A.dtype), (int)lda, (long long)sA, B.ptr,
        cuda_type(B.dtype), (int)ldb, (long long)sB, &beta, C.ptr, cuda_type(C.dtype), (int)ldc,
        (long long)sC, (int)batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return samba_cu_fail_msg(
            SAMBA_ERR_CUDA,
            "gemm: cublasGemmStridedBatchedEx(m=%lld, n=%lld, k=%lld, lda=%lld, ldb=%lld, "
            "ldc=%lld, batch=%lld) failed (%s)",
            (long long)m, (long long)n, (long long)k, (long long)lda, (long long)ldb,
            (long long)ldc, (long long)batch, cublas_status_str(s));
    return samba_cu_check_launch("gemm (cublasGemmStridedBatchedEx)", stream);
}

extern "C" void samba_cu_gemm_release(void) {
    samba_cu_gemm_lt_release();
    for (int d = 0; d < GEMM_MAX_DEVICES; ++d) {
        if (g_handle[d]) {
            cublasDestroy(g_handle[d]);
            g_handle[d] = NULL;
        }
        g_bound[d] = 0;
        for (int i = 0; i < g_ws_n[d]; ++i) cudaFree(g_ws_ptr[d][i]);
        g_ws_n[d] = 0;
    }
}
