// gemm_lt.cu - the cuBLASLt path of gemm.cu: column-major C = op(A) op(B) + beta C through
// cublasLtMatmul with a per-shape algorithm choice.
//
// Same math as the cublasGemmEx path: CUBLAS_COMPUTE_32F, float32 scale (float32
// accumulation, no TF32 for float32 inputs). Modes (samba_cu_gemm_mode):
//   SAMBA_GEMM_LT       the first algorithm of cublasLtMatmulAlgoGetHeuristic;
//   SAMBA_GEMM_LT_TUNE  on first use of a shape key, outside stream capture and only when
//                       beta == 0 (the timing runs overwrite C), each of up to LT_CANDIDATES
//                       heuristic candidates runs once to warm up and once timed with CUDA
//                       events; the fastest is kept. Under capture (or with beta != 0) an
//                       untuned key runs the heuristic's first choice and is tuned later.
// The key holds everything the choice depends on: shape, leading dimensions, batch strides,
// dtypes, the operands' pointer alignment, the workspace size and whether beta is zero.
// Descriptors and the chosen algorithm are cached with the key (never freed before
// samba_cu_gemm_release), so a cached call costs one cublasLtMatmul.
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <string.h>

#include "gemm_internal.cuh"

#define LT_MAX_DEVICES 64
#define LT_CACHE 256
#define LT_CANDIDATES 16

struct LtKey {
    int dev, ta, tb, dtA, dtC, alA, alB, alC, beta0;
    int64_t m, n, k, lda, ldb, ldc, sA, sB, sC, batch;
    size_t ws;
};

struct LtEntry {
    LtKey key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    int tuned;  // algo is the timed fastest (else the heuristic's first)
};

static cublasLtHandle_t g_lt[LT_MAX_DEVICES];
static LtEntry g_cache[LT_CACHE];
static int g_ncache;

static const char *lt_status_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLASLt error";
    }
}

// Largest power of two (<= 256) dividing the address: cuBLASLt assumes 256-byte aligned
// operands unless told otherwise (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES).
static int ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a % (uintptr_t)al) != 0) al >>= 1;
    return al;
}

// Alignment of every matrix of a strided batch (byte stride `bstride`, 0 = broadcast).
static int batch_align(const void *p, int64_t bstride, int64_t batch) {
    int al = ptr_align(p);
    if (batch > 1 && bstride != 0) {
        int as = ptr_align((const void *)(uintptr_t)(bstride < 0 ? -bstride : bstride));
        if (as < al) al = as;
    }
    return al;
}

static cudaDataType_t lt_type(int dt) {
    return dt == SAMBA_CU_BF16 ? CUDA_R_16BF : dt == SAMBA_CU_F16 ? CUDA_R_16F : CUDA_R_32F;
}

#define LT_TRY(call, what)                                                                   \
    do {                                                                                     \
        cublasStatus_t s_ = (call);                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                   \
            st = lt_fail(what, s_, key);                                                     \
            goto fail;                                                                       \
        }                                                                                    \
    } while (0)

// SAMBA_ERR_UNSUPPORTED for CUBLAS_STATUS_NOT_SUPPORTED (gemm.cu then runs cublas*Ex).
static samba_status lt_fail(const char *what, cublasStatus_t s, const LtKey *k) {
    return samba_cu_fail_msg(s == CUBLAS_STATUS_NOT_SUPPORTED ? SAMBA_ERR_UNSUPPORTED
                                                              : SAMBA_ERR_CUDA,
                             "gemm (cuBLASLt): %s(m=%lld, n=%lld, k=%lld, lda=%lld, ldb=%lld, "
                             "ldc=%lld, batch=%lld) failed (%s)",
                             what, (long long)k->m, (long long)k->n, (long long)k->k,
                             (long long)k->lda, (long long)k->ldb, (long long)k->ldc,
                             (long long)k->batch, lt_status_str(s));
}

static cublasStatus_t layout(cublasLtMatrixLayout_t *l, int dt, int64_t rows, int64_t cols,
                             int64_t ld, int64_t stride, int64_t batch) {
    cublasStatus_t s = cublasLtMatrixLayoutCreate(l, lt_type(dt), (uint64_t)rows,
                                                  (uint64_t)cols, ld);
    if (s != CUBLAS_STATUS_SUCCESS || batch == 1) return s;
    int32_t b = (int32_t)batch;
    s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    return cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                            &stride, sizeof stride);
}

static void destroy_entry(LtEntry *e) {
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    memset(e, 0, sizeof *e);
}

// Descriptors for `key` and up to `max` heuristic candidates (*n_out of them, >= 1).
static samba_status build_entry(cublasLtHandle_t h, const LtKey *key, LtEntry *e,
                                cublasLtMatmulHeuristicResult_t *res, int max, int *n_out) {
    samba_status st = SAMBA_OK;
    cublasLtMatmulPreference_t pref = NULL;
    memset(e, 0, sizeof *e);
    e->key = *key;
    cublasOperation_t ta = key->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = key->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    uint64_t ws = key->ws;
    uint32_t alA = (uint32_t)key->alA, alB = (uint32_t)key->alB, alC = (uint32_t)key->alC;
    LT_TRY(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
           "cublasLtMatmulDescCreate");
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
           "cublasLtMatmulDescSetAttribute(TRANSA)");
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
           "cublasLtMatmulDescSetAttribute(TRANSB)");
    // Stored shapes (column-major): A is m x k (k x m when transposed), B k x n (n x k).
    LT_TRY(layout(&e->la, key->dtA, key->ta ? key->k : key->m, key->ta ? key->m : key->k,
                  key->lda, key->sA, key->batch), "cublasLtMatrixLayoutCreate(A)");
    LT_TRY(layout(&e->lb, key->dtA, key->tb ? key->n : key->k, key->tb ? key->k : key->n,
                  key->ldb, key->sB, key->batch), "cublasLtMatrixLayoutCreate(B)");
    LT_TRY(layout(&e->lc, key->dtC, key->m, key->n, key->ldc, key->sC, key->batch),
           "cublasLtMatrixLayoutCreate(C)");
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws, sizeof ws),
           "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &alA, sizeof alA),
           "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &alB, sizeof alB),
           "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &alC, sizeof alC),
           "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &alC, sizeof alC),
           "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)");
    *n_out = 0;
    LT_TRY(cublasLtMatmulAlgoGetHeuristic(h, e->op, e->la, e->lb, e->lc, e->lc, pref, max, res,
                                          n_out),
           "cublasLtMatmulAlgoGetHeuristic");
    if (*n_out <= 0) {
        st = samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                               "gemm (cuBLASLt): no algorithm for m=%lld, n=%lld, k=%lld",
                               (long long)key->m, (long long)key->n, (long long)key->k);
        goto fail;
    }
    e->algo = res[0].algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return SAMBA_OK;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    destroy_entry(e);
    return st;
}

static cublasStatus_t run(cublasLtHandle_t h, const LtEntry *e, const cublasLtMatmulAlgo_t *algo,
                          const void *A, const void *B, void *C, float beta, void *ws,
                          cudaStream_t stream) {
    const float alpha = 1.0f;
    return cublasLtMatmul(h, e->op, &alpha, A, e->la, B, e->lb, &beta, C, e->lc, C, e->lc, algo,
                          ws, e->key.ws, stream);
}

// Time each candidate (one warm-up run, one timed run) and keep the fastest in e->algo.
// Candidates that fail to run are skipped; the heuristic's first stays when none can be timed.
static samba_status tune(cublasLtHandle_t h, LtEntry *e, const cublasLtMatmulHeuristicResult_t *res,
                         int n, const void *A, const void *B, void *C, void *ws,
                         cudaStream_t stream) {
    cudaEvent_t ev[2];
    cudaError_t ce = cudaEventCreate(&ev[0]);
    if (ce != cudaSuccess) return samba_cu_fail("gemm (cuBLASLt tuning): cudaEventCreate", ce);
    ce = cudaEventCreate(&ev[1]);
    if (ce != cudaSuccess) {
        cudaEventDestroy(ev[0]);
        return samba_cu_fail("gemm (cuBLASLt tuning): cudaEventCreate", ce);
    }
    float best = -1.0f;
    samba_status st = SAMBA_OK;
    for (int i = 0; i < n; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        if (run(h, e, &res[i].algo, A, B, C, 0.0f, ws, stream) != CUBLAS_STATUS_SUCCESS) continue;
        if ((ce = cudaEventRecord(ev[0], stream)) != cudaSuccess) break;
        cublasStatus_t s = run(h, e, &res[i].algo, A, B, C, 0.0f, ws, stream);
        if ((ce = cudaEventRecord(ev[1], stream)) != cudaSuccess) break;
        if ((ce = cudaEventSynchronize(ev[1])) != cudaSuccess) break;
        float ms = 0.0f;
        if ((ce = cudaEventElapsedTime(&ms, ev[0], ev[1])) != cudaSuccess) break;
        if (s == CUBLAS_STATUS_SUCCESS && (best < 0.0f || ms < best)) {
            best = ms;
            e->algo = res[i].algo;
        }
    }
    if (ce != cudaSuccess) st = samba_cu_fail("gemm (cuBLASLt tuning): CUDA events", ce);
    cudaEventDestroy(ev[1]);
    cudaEventDestroy(ev[0]);
    if (st == SAMBA_OK) e->tuned = 1;
    return st;
}

extern "C" samba_status samba_cu_gemm_lt(int tune_mode, int transa, int transb, int64_t m,
                                         int64_t n, int64_t k, samba_cu_ref A, int64_t lda,
                                         int64_t sA, samba_cu_ref B, int64_t ldb, int64_t sB,
                                         samba_cu_ref C, int64_t ldc, int64_t sC, int64_t batch,
                                         float beta, void *stream) {
    int dev = 0;
    cudaError_t ce = cudaGetDevice(&dev);
    if (ce != cudaSuccess) return samba_cu_fail("gemm (cuBLASLt): cudaGetDevice", ce);
    if (dev < 0 || dev >= LT_MAX_DEVICES)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemm (cuBLASLt): device %d", dev);
    if (g_lt[dev] == NULL) {
        cublasStatus_t s;
        {
            RelaxedCapture relaxed;
            s = cublasLtCreate(&g_lt[dev]);
        }
        if (s != CUBLAS_STATUS_SUCCESS) {
            g_lt[dev] = NULL;
            return samba_cu_fail_msg(SAMBA_ERR_CUDA, "gemm: cublasLtCreate failed (%s)",
                                     lt_status_str(s));
        }
    }
    cublasLtHandle_t h = g_lt[dev];
    void *ws = NULL;
    samba_status st = samba_cu_gemm_stream_workspace(dev, stream, &ws);
    if (st != SAMBA_OK) return st;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    ce = cudaStreamIsCapturing((cudaStream_t)stream, &cs);
    if (ce != cudaSuccess) return samba_cu_fail("gemm (cuBLASLt): cudaStreamIsCapturing", ce);
    const int capturing = cs != cudaStreamCaptureStatusNone;

    LtKey key;
    memset(&key, 0, sizeof key);  // padding bytes too: keys compare with memcmp
    key.dev = dev;
    key.ta = transa != 0;
    key.tb = transb != 0;
    key.dtA = A.dtype;
    key.dtC = C.dtype;
    // every matrix of a batch starts at ptr + i * stride: its alignment counts too
    const int esA = A.dtype == SAMBA_CU_F32 ? 4 : 2, esC = C.dtype == SAMBA_CU_F32 ? 4 : 2;
    key.alA = batch_align(A.ptr, sA * esA, batch);
    key.alB = batch_align(B.ptr, sB * esA, batch);
    key.alC = batch_align(C.ptr, sC * esC, batch);
    key.beta0 = beta == 0.0f;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldc = ldc;
    key.batch = batch;
    key.sA = batch > 1 ? sA : 0;
    key.sB = batch > 1 ? sB : 0;
    key.sC = batch > 1 ? sC : 0;
    key.ws = ws != NULL ? SAMBA_GEMM_WORKSPACE_BYTES : 0;

    LtEntry *e = NULL;
    for (int i = 0; i < g_ncache; ++i)
        if (memcmp(&g_cache[i].key, &key, sizeof key) == 0) {
            e = &g_cache[i];
            break;
        }
    LtEntry local;
    cublasLtMatmulHeuristicResult_t res[LT_CANDIDATES];
    int nres = 0;
    // Tune only a shape the cache can keep: with the cache full, a tuned choice would be
    // thrown away after the call and the timing repeated on every call of the shape.
    const int want_tune = tune_mode && !capturing && key.beta0 &&
                          (e != NULL || g_ncache < LT_CACHE);
    if (e == NULL || (want_tune && !e->tuned)) {
        const int fresh = e == NULL;
        LtEntry *slot = e;
        if (fresh) slot = g_ncache < LT_CACHE ? &g_cache[g_ncache] : &local;
        else destroy_entry(slot);  // re-tune a key first seen under capture (or with beta != 0)
        st = build_entry(h, &key, slot, res, want_tune ? LT_CANDIDATES : 1, &nres);
        if (st != SAMBA_OK) {
            if (!fresh) {  // drop the emptied entry, keeping the cache dense
                *slot = g_cache[g_ncache - 1];
                memset(&g_cache[--g_ncache], 0, sizeof(LtEntry));
            }
            return st;
        }
        if (fresh && slot != &local) g_ncache++;
        e = slot;
        if (want_tune) {
            st = tune(h, e, res, nres, A.ptr, B.ptr, C.ptr, ws, (cudaStream_t)stream);
            if (st != SAMBA_OK) {
                if (e == &local) destroy_entry(&local);
                return st;
            }
        }
    }
    cublasStatus_t s = run(h, e, &e->algo, A.ptr, B.ptr, C.ptr, beta, ws, (cudaStream_t)stream);
    if (e == &local) destroy_entry(&local);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail("cublasLtMatmul", s, &key);
    return samba_cu_check_launch("gemm (cublasLtMatmul)", stream);
}

extern "C" void samba_cu_gemm_lt_release(void) {
    for (int i = 0; i < g_ncache; ++i) destroy_entry(&g_cache[i]);
    g_ncache = 0;
    for (int d = 0; d < LT_MAX_DEVICES; ++d)
        if (g_lt[d]) {
            cublasLtDestroy(g_lt[d]);
            g_lt[d] = NULL;
        }
}
