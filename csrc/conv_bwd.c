/*
 * conv_bwd.c - backward pass of the depthwise causal conv1d (conv.c), fp32.
 *
 * Forward on the padded row xp = [initial_states (W-1) | x (L)], index s = -(W-1) .. L-1:
 *   p[t] = bias + sum_k w[k] xp[t - (W-1) + k];  y[t] = silu(p[t]) or p[t]
 *   final_states = xp[L-(W-1) .. L-1]
 * Backward, with gp[t] = dy[t] silu'(p[t]) (or dy[t]):
 *   dxp[s] = sum_k w[k] gp[s + (W-1) - k] (terms with 0 <= t < L) + dfinal_states[s - L + W-1]
 *   dx = dxp[0 .. L-1];  dinitial_states = dxp[-(W-1) .. -1]
 *   dw[k] = sum_{b,t} gp[t] xp[t - (W-1) + k];  dbias = sum_{b,t} gp[t]
 * With sequence ids (seq_idx, no states) a term with tap (t, k) exists only when its input
 * s = t - (W-1) + k has s >= 0 and seq_idx[s] == seq_idx[t], and y[t] = 0 where
 * seq_idx[t] < 0 (padding), so gp[t] = 0 there (cbwd_row_seq).
 * Rows are split over threads by channel (each thread owns dw[d] and dbias[d], batches run
 * inside), so no reduction is needed; ctx is polled between channel chunks.
 */
#include "samba.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */

#define CBWD_CHUNK ((int64_t)1 << 22) /* elements between stop polls */

/* One row (b, d). scratch: (2 L + 2 W) floats. Accumulates dw (W) and *db. */
SAMBA_ALWAYS_INLINE void
cbwd_row_body(const samba_conv1d_bwd_args *a, int64_t b, int64_t d, float *restrict scratch,
              float *restrict dw, float *db)
{
    const int64_t L = a->seqlen, W = a->width, wm1 = W - 1;
    const int64_t r = b * a->dim + d;
    const float *restrict x = a->x + r * L;
    const float *restrict dy = a->dy + r * L;
    const float *init = a->initial_states != NULL ? a->initial_states + r * wm1 : NULL;
    const float *restrict w = a->weight + d * W;
    const float bias = a->bias != NULL ? a->bias[d] : 0.0f;
    float *restrict dx = a->dx + r * L;
    /* xp (wm1 + L): [init | x];  gp (L + wm1): gp then wm1 zeros (taps past the end) */
    float *restrict xp = scratch;
    float *restrict gp = scratch + L + wm1;
    float sb = 0.0f;
    int64_t t, k;

    for (k = 0; k < wm1; k++) {
        xp[k] = init != NULL ? init[k] : 0.0f;
        gp[L + k] = 0.0f;
    }
    memcpy(xp + wm1, x, (size_t)L * sizeof(float));
    if (a->silu) {
        /* pre-activation p into gp, then gp = dy silu'(p) */
        if (W == 4) {
            const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
            for (t = 0; t < L; t++) {
                gp[t] = bias + w0 * xp[t] + w1 * xp[t + 1] + w2 * xp[t + 2] + w3 * xp[t + 3];
            }
        }
        else if (W == 3) {
            const float w0 = w[0], w1 = w[1], w2 = w[2];
            for (t = 0; t < L; t++) {
                gp[t] = bias + w0 * xp[t] + w1 * xp[t + 1] + w2 * xp[t + 2];
            }
        }
        else {
            const float w0 = w[0], w1 = w[1];
            for (t = 0; t < L; t++) {
                gp[t] = bias + w0 * xp[t] + w1 * xp[t + 1];
            }
        }
        for (t = 0; t < L; t++) {
            const float p = gp[t];
            const float e = samba_expf(-fabsf(p));
            const float rr = 1.0f / (1.0f + e);
            const float sg = p >= 0.0f ? rr : e * rr;
            gp[t] = dy[t] * sg * (1.0f + p * (1.0f - sg));
        }
    }
    else {
        memcpy(gp, dy, (size_t)L * sizeof(float));
    }
#pragma omp simd reduction(+ : sb)
    for (t = 0; t < L; t++) {
        sb += gp[t];
    }
    *db += sb;
    for (k = 0; k < W; k++) {
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (t = 0; t < L; t++) {
            acc += gp[t] * xp[t + k];
        }
        dw[k] += acc;
    }
    /* dxp[s] (s = t - wm1 .. in padded coordinates s + wm1 = t + k) = sum_k w[k] gp[t' ]
     * with t' = s + wm1 - k; for x positions t: dx[t] = sum_k w[k] gp[t + wm1 - k] */
    if (W == 4) {
        const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
        for (t = 0; t < L; t++) {
            dx[t] = w3 * gp[t] + w2 * gp[t + 1] + w1 * gp[t + 2] + w0 * gp[t + 3];
        }
    }
    else if (W == 3) {
        const float w0 = w[0], w1 = w[1], w2 = w[2];
        for (t = 0; t < L; t++) {
            dx[t] = w2 * gp[t] + w1 * gp[t + 1] + w0 * gp[t + 2];
        }
    }
    else {
        const float w0 = w[0], w1 = w[1];
        for (t = 0; t < L; t++) {
            dx[t] = w1 * gp[t] + w0 * gp[t + 1];
        }
    }
    if (a->dinitial_states != NULL) {
        float *di = a->dinitial_states + r * wm1;
        int64_t s;
        for (s = -wm1; s < 0; s++) {
            float acc = 0.0f;
            for (k = 0; k < W; k++) {
                const int64_t j = s + wm1 - k;
                if (j >= 0 && j < L) {
                    acc += w[k] * gp[j];
                }
            }
            di[s + wm1] = acc;
        }
    }
    if (a->dfinal_states != NULL) {
        const float *df = a->dfinal_states + r * wm1;
        int64_t i;
        for (i = 0; i < wm1; i++) {
            const int64_t s = L - wm1 + i;
            if (s >= 0) {
                dx[s] += df[i];
            }
            else if (a->dinitial_states != NULL) {
                a->dinitial_states[r * wm1 + wm1 + s] += df[i];
            }
        }
    }
}

typedef void (*cbwd_row_fn)(const samba_conv1d_bwd_args *, int64_t, int64_t, float *, float *,
                            float *);

/* One row (b, d) with sequence ids; scratch: gp (L). Accumulates dw (W) and *db. */
static void
cbwd_row_seq(const samba_conv1d_bwd_args *a, int64_t b, int64_t d, float *restrict gp,
             float *restrict dw, float *db)
{
    const int64_t L = a->seqlen, W = a->width, wm1 = W - 1;
    const int64_t r = b * a->dim + d;
    const float *x = a->x + r * L, *dy = a->dy + r * L, *w = a->weight + d * W;
    const int64_t *sid = a->seq_idx + b * L;
    const float bias = a->bias != NULL ? a->bias[d] : 0.0f;
    float *dx = a->dx + r * L;
    float sb = 0.0f;
    int64_t t, k;

    for (t = 0; t < L; t++) {
        float g = sid[t] < 0 ? 0.0f : dy[t]; /* padding: a constant 0 output */
        if (a->silu && sid[t] >= 0) {
            float p = bias;
            for (k = 0; k < W; k++) {
                const int64_t s = t - wm1 + k;
                if (s >= 0 && sid[s] == sid[t]) {
                    p += w[k] * x[s];
                }
            }
            const float e = samba_expf(-fabsf(p));
            const float rr = 1.0f / (1.0f + e);
            const float sg = p >= 0.0f ? rr : e * rr;
            g *= sg * (1.0f + p * (1.0f - sg));
        }
        gp[t] = g;
        sb += g;
        dx[t] = 0.0f;
    }
    *db += sb;
    for (t = 0; t < L; t++) {
        for (k = 0; k < W; k++) {
            const int64_t s = t - wm1 + k;
            if (s >= 0 && sid[s] == sid[t]) {
                dw[k] += gp[t] * x[s];
                dx[s] += w[k] * gp[t];
            }
        }
    }
}

SAMBA_VEC_FN static void
cbwd_row_c(const samba_conv1d_bwd_args *a, int64_t b, int64_t d, float *s, float *dw,
           float *db)
{
    cbwd_row_body(a, b, d, s, dw, db);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
cbwd_row_avx2(const samba_conv1d_bwd_args *a, int64_t b, int64_t d, float *s, float *dw,
              float *db)
{
    cbwd_row_body(a, b, d, s, dw, db);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
cbwd_row_avx512(const samba_conv1d_bwd_args *a, int64_t b, int64_t d, float *s, float *dw,
                float *db)
{
    cbwd_row_body(a, b, d, s, dw, db);
}
#endif

samba_status
samba_conv1d_bwd(const samba_conv1d_bwd_args *a, const samba_ctx *ctx)
{
    int64_t dchunk, d0;
    int nt;
    float *gbuf;
    cbwd_row_fn fn;
    int64_t rowbuf;

    if (a == NULL || a->batch < 0 || a->dim < 0 || a->seqlen < 0 || a->width < 2 ||
        a->width > 4) {
        return SAMBA_ERR_ARG;
    }
    if (a->dim == 0) {
        return SAMBA_OK;
    }
    if (a->weight == NULL || a->dweight == NULL ||
        (a->batch > 0 && (a->x == NULL || a->dy == NULL || a->dx == NULL)) ||
        (a->bias != NULL && a->dbias == NULL)) {
        return SAMBA_ERR_ARG;
    }
    if (a->seq_idx != NULL && (a->initial_states != NULL || a->dfinal_states != NULL ||
                               a->dinitial_states != NULL)) {
        return SAMBA_ERR_ARG; /* sequence ids come without states */
    }
    memset(a->dweight, 0, (size_t)(a->dim * a->width) * sizeof(float));
    if (a->dbias != NULL) {
        memset(a->dbias, 0, (size_t)a->dim * sizeof(float));
    }
    if (a->batch == 0) {
        return SAMBA_OK;
    }
    nt = samba_ctx_threads(ctx);
    if ((int64_t)nt > a->dim) {
        nt = (int)a->dim;
    }
    if (a->batch * a->dim * a->seqlen < ((int64_t)1 << 16)) {
        nt = 1;
    }
    fn = cbwd_row_c;
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = cbwd_row_avx512; break;
    case SAMBA_ISA_AVX2: fn = cbwd_row_avx2; break;
    default: break;
    }
#endif
    if (a->seq_idx != NULL) {
        fn = cbwd_row_seq;
    }
    rowbuf = 2 * a->seqlen + 2 * a->width;
    gbuf = (float *)malloc((size_t)nt * (size_t)rowbuf * sizeof(float));
    if (gbuf == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    dchunk = CBWD_CHUNK / (a->batch * (a->seqlen > 0 ? a->seqlen : 1));
    if (dchunk < 1) {
        dchunk = 1;
    }
    for (d0 = 0; d0 < a->dim; d0 += dchunk) {
        const int64_t d1 = d0 + dchunk < a->dim ? d0 + dchunk : a->dim;
        int64_t d;
        if (samba_ctx_stop(ctx)) {
            free(gbuf);
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (d = d0; d < d1; d++) {
            int tid = 0;
            float db = 0.0f;
            int64_t b;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            for (b = 0; b < a->batch; b++) {
                fn(a, b, d, gbuf + (size_t)tid * (size_t)rowbuf,
                         a->dweight + d * a->width, &db);
            }
            if (a->dbias != NULL) {
                a->dbias[d] = db;
            }
        }
    }
    free(gbuf);
    return SAMBA_OK;
}
