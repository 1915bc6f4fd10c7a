/*
 * norm.c - RMSNorm over the last axis, optionally fused with the residual add.
 *
 * x (rows, n); weight (n); y (rows, n):
 *   s = x (+ residual, also written to residual_out);  y = s * rsqrt(mean(s^2) + eps) * weight
 * The sum of squares is accumulated in double (16 independent lanes, so it vectorises).
 * Rows are split into chunks of about SAMBA_NORM_CHUNK elements; ctx is polled between.
 */
#include "samba.h"
#include "simd.h"

#include <math.h>

#define SAMBA_NORM_CHUNK ((int64_t)1 << 23)
#define SAMBA_NORM_PAR_MIN ((int64_t)1 << 18)
#define SAMBA_NORM_LANES 16

typedef struct norm_job {
    int64_t n;
    const float *x, *res, *weight;
    float *res_out, *y;
    float eps;
} norm_job;

/* sum(x^2) in double over 16 independent lanes (so that it vectorises). */
SAMBA_ALWAYS_INLINE double
norm_sumsq(const float *x, int64_t n)
{
    double acc[SAMBA_NORM_LANES];
    double ss = 0.0;
    const int64_t main = n - n % SAMBA_NORM_LANES;
    int64_t i;
    int l;

    for (l = 0; l < SAMBA_NORM_LANES; l++) {
        acc[l] = 0.0;
    }
    for (i = 0; i < main; i += SAMBA_NORM_LANES) {
        for (l = 0; l < SAMBA_NORM_LANES; l++) {
            acc[l] += (double)x[i + l] * (double)x[i + l];
        }
    }
    for (; i < n; i++) {
        ss += (double)x[i] * (double)x[i];
    }
    for (l = 0; l < SAMBA_NORM_LANES; l++) {
        ss += acc[l];
    }
    return ss;
}

SAMBA_ALWAYS_INLINE void
norm_row_body(const norm_job *j, int64_t r)
{
    const int64_t n = j->n;
    const float *x = j->x + r * n;
    const float *w = j->weight;
    float *y = j->y + r * n;
    const float *s = x; /* the row that is normalised */
    float scale;
    int64_t i;

    if (j->res != NULL) {
        const float *rs = j->res + r * n;
        float *ro = j->res_out + r * n;
        for (i = 0; i < n; i++) {
            ro[i] = x[i] + rs[i];
        }
        s = ro; /* re-read from L1/L2 below */
    }
    scale = (float)(1.0 / sqrt(norm_sumsq(s, n) / (double)n + (double)j->eps));
    for (i = 0; i < n; i++) {
        y[i] = (s[i] * scale) * w[i];
    }
}

typedef void (*norm_row_fn)(const norm_job *, int64_t);

SAMBA_VEC_FN static void
norm_row_c(const norm_job *j, int64_t r)
{
    norm_row_body(j, r);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
norm_row_avx2(const norm_job *j, int64_t r)
{
    norm_row_body(j, r);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
norm_row_avx512(const norm_job *j, int64_t r)
{
    norm_row_body(j, r);
}
#endif

static void
norm_chunk(norm_row_fn fn, const norm_job *j, int64_t r0, int64_t r1, int nt)
{
    int64_t r;
#pragma omp parallel for num_threads(nt) schedule(guided) if (nt > 1)
    for (r = r0; r < r1; r++) {
        fn(j, r);
    }
}

samba_status
samba_rmsnorm_fwd(int64_t rows, int64_t n, const float *x, const float *residual,
                  float *residual_out, const float *weight, float eps, float *y,
                  const samba_ctx *ctx)
{
    norm_row_fn fn = norm_row_c;
    norm_job job;
    int64_t rchunk, r0;
    int threads;

    if (rows < 0 || n < 0) {
        return SAMBA_ERR_ARG;
    }
    if (rows == 0 || n == 0) {
        return SAMBA_OK;
    }
    if (x == NULL || weight == NULL || y == NULL || (residual != NULL && residual_out == NULL)) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = norm_row_avx512; break;
    case SAMBA_ISA_AVX2: fn = norm_row_avx2; break;
    default: break;
    }
#endif
    job.n = n;
    job.x = x;
    job.res = residual;
    job.weight = weight;
    job.res_out = residual_out;
    job.y = y;
    job.eps = eps;
    threads = samba_ctx_threads(ctx);
    rchunk = SAMBA_NORM_CHUNK / n;
    if (rchunk < 1) {
        rchunk = 1;
    }
    for (r0 = 0; r0 < rows; r0 += rchunk) {
        const int64_t r1 = r0 + rchunk < rows ? r0 + rchunk : rows;
        int nt = (r1 - r0) * n < SAMBA_NORM_PAR_MIN ? 1 : threads;
        if (nt > r1 - r0) {
            nt = (int)(r1 - r0);
        }
        if (r0 > 0 && samba_ctx_stop(ctx)) {
            return SAMBA_ERR_INTERRUPTED;
        }
        norm_chunk(fn, &job, r0, r1, nt);
    }
    return SAMBA_OK;
}
