/*
 * norm_bwd.c - backward pass of RMSNorm with the fused residual add (norm.c), fp32.
 *
 * Forward per row: s = x (+ residual); r = 1 / sqrt(mean(s^2) + eps); y = s r w;
 * residual_out = s.  Backward with dy and (optionally) dres = dL/d(residual_out):
 *   ds = r (w dy) - s r^3 mean(w dy s) + dres;  dx = dresidual = ds;  dw = sum_rows dy s r
 * Rows are split statically over threads; dw is summed per thread and reduced in thread
 * order (deterministic for a given thread count). ctx is polled between row chunks.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */

#define NBWD_CHUNK ((int64_t)1 << 22) /* elements between stop polls */

SAMBA_ALWAYS_INLINE void
nbwd_row_body(const samba_rmsnorm_bwd_args *a, int64_t row, float *restrict dw)
{
    const int64_t n = a->n;
    const float *restrict x = a->x + row * n;
    const float *restrict res = a->residual != NULL ? a->residual + row * n : NULL;
    const float *restrict dy = a->dy + row * n;
    const float *restrict dro = a->dresidual_out != NULL ? a->dresidual_out + row * n : NULL;
    const float *restrict w = a->weight;
    float *restrict dx = a->dx + row * n;
    float ss = 0.0f, dot = 0.0f, r, c;
    int64_t i;

#pragma omp simd reduction(+ : ss, dot)
    for (i = 0; i < n; i++) {
        const float s = res != NULL ? x[i] + res[i] : x[i];
        ss += s * s;
        dot += w[i] * dy[i] * s;
    }
    r = 1.0f / sqrtf(ss / (float)n + a->eps);
    c = r * r * r * dot / (float)n;
    for (i = 0; i < n; i++) {
        const float s = res != NULL ? x[i] + res[i] : x[i];
        float ds = r * w[i] * dy[i] - s * c;
        if (dro != NULL) {
            ds += dro[i];
        }
        dx[i] = ds;
        dw[i] += dy[i] * s * r;
    }
    if (a->dresidual != NULL) {
        memcpy(a->dresidual + row * n, dx, (size_t)n * sizeof(float));
    }
}

typedef void (*nbwd_fn)(const samba_rmsnorm_bwd_args *, int64_t, float *);

SAMBA_VEC_FN static void
nbwd_row_c(const samba_rmsnorm_bwd_args *a, int64_t row, float *dw)
{
    nbwd_row_body(a, row, dw);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
nbwd_row_avx2(const samba_rmsnorm_bwd_args *a, int64_t row, float *dw)
{
    nbwd_row_body(a, row, dw);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
nbwd_row_avx512(const samba_rmsnorm_bwd_args *a, int64_t row, float *dw)
{
    nbwd_row_body(a, row, dw);
}
#endif

samba_status
samba_rmsnorm_bwd(const samba_rmsnorm_bwd_args *a, const samba_ctx *ctx)
{
    int64_t rchunk, r0;
    int nt, i;
    float *priv;
    nbwd_fn fn = nbwd_row_c;

    if (a == NULL || a->rows < 0 || a->n < 0 || !(a->eps >= 0.0f)) {
        return SAMBA_ERR_ARG;
    }
    if (a->n == 0) {
        return SAMBA_OK;
    }
    if (a->weight == NULL || a->dweight == NULL ||
        (a->rows > 0 && (a->x == NULL || a->dy == NULL || a->dx == NULL))) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = nbwd_row_avx512; break;
    case SAMBA_ISA_AVX2: fn = nbwd_row_avx2; break;
    default: break;
    }
#endif
    nt = samba_ctx_threads(ctx);
    if (a->rows * a->n < ((int64_t)1 << 15) || nt < 1) {
        nt = 1;
    }
    priv = (float *)calloc((size_t)nt * (size_t)a->n, sizeof(float));
    if (priv == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    rchunk = NBWD_CHUNK / a->n;
    if (rchunk < 1) {
        rchunk = 1;
    }
    for (r0 = 0; r0 < a->rows; r0 += rchunk) {
        const int64_t r1 = r0 + rchunk < a->rows ? r0 + rchunk : a->rows;
        int64_t r;
        if (samba_ctx_stop(ctx)) {
            free(priv);
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (r = r0; r < r1; r++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            fn(a, r, priv + (size_t)tid * (size_t)a->n);
        }
    }
    memcpy(a->dweight, priv, (size_t)a->n * sizeof(float));
    for (i = 1; i < nt; i++) {
        int64_t k;
        for (k = 0; k < a->n; k++) {
            a->dweight[k] += priv[(size_t)i * (size_t)a->n + k];
        }
    }
    free(priv);
    return SAMBA_OK;
}
