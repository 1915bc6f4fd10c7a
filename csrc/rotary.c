/*
 * rotary.c - rotary position embedding (GPT-NeoX half split over the full head dim).
 *
 * x, y (B, L, H, hd); positions (B, L) int64; half = hd / 2; theta_i = base^(-2i/hd):
 *   y[..., i] = x1 cos(a) - x2 sin(a);  y[..., half + i] = x1 sin(a) + x2 cos(a)
 * with a = positions[b, t] * theta_i, x1 = x[..., i], x2 = x[..., half + i].
 *
 * Accuracy at large positions: a is formed in double (error ~1e-16 * a, i.e. ~1e-10 rad at
 * position 1e6, far below float32 resolution of the result).  cos/sin are evaluated with
 * libm in double at the first token of every block of SAMBA_ROPE_BLOCK tokens (and wherever
 * the position does not advance by exactly one); consecutive positions advance by a double
 * complex multiply with (cos theta_i, sin theta_i), which adds ~1e-16 error per step, so at
 * most ~1e-14 within a block.  The tables are rounded to float32 once and applied to all
 * heads of the token.
 */
#include "samba.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define SAMBA_ROPE_BLOCK 64                 /* tokens per work item (exact re-seed) */
#define SAMBA_ROPE_CHUNK ((int64_t)1 << 23) /* elements per stop poll */
#define SAMBA_ROPE_PAR_MIN ((int64_t)1 << 18)

typedef struct rope_job {
    int64_t seqlen, nheads, headdim;
    const float *x;
    const int64_t *pos;
    float *y;
    const double *theta;           /* (half) */
    const double *step_c, *step_s; /* cos/sin(theta_i) (half) */
} rope_job;

/* Work item `it` = (b, block of SAMBA_ROPE_BLOCK tokens). c, s (half) double scratch,
 * cf, sf (half) float scratch. */
SAMBA_ALWAYS_INLINE void
rope_item_body(const rope_job *j, int64_t it, double *c, double *s, float *cf, float *sf)
{
    const int64_t nblk = (j->seqlen + SAMBA_ROPE_BLOCK - 1) / SAMBA_ROPE_BLOCK;
    const int64_t b = it / nblk;
    const int64_t t0 = (it % nblk) * SAMBA_ROPE_BLOCK;
    const int64_t t1 = t0 + SAMBA_ROPE_BLOCK < j->seqlen ? t0 + SAMBA_ROPE_BLOCK : j->seqlen;
    const int64_t half = j->headdim / 2;
    const int64_t hd = j->headdim;
    int64_t t, h, i, prev = 0;

    for (t = t0; t < t1; t++) {
        const int64_t p = j->pos[b * j->seqlen + t];
        const int64_t row = (b * j->seqlen + t) * j->nheads * hd;
        const uint64_t adv = (uint64_t)p - (uint64_t)prev; /* no signed overflow */
        if (t == t0 || adv > 1u) {
            const double pd = (double)p;
            for (i = 0; i < half; i++) {
                const double a = pd * j->theta[i];
                c[i] = cos(a);
                s[i] = sin(a);
            }
        } else if (adv == 1u) {
            for (i = 0; i < half; i++) {
                const double cn = c[i] * j->step_c[i] - s[i] * j->step_s[i];
                const double sn = s[i] * j->step_c[i] + c[i] * j->step_s[i];
                c[i] = cn;
                s[i] = sn;
            }
        }
        if (t == t0 || adv != 0u) {
            for (i = 0; i < half; i++) {
                cf[i] = (float)c[i];
                sf[i] = (float)s[i];
            }
        }
        prev = p;
        for (h = 0; h < j->nheads; h++) {
            const float *x1 = j->x + row + h * hd;
            const float *x2 = x1 + half;
            float *y1 = j->y + row + h * hd;
            float *y2 = y1 + half;
            for (i = 0; i < half; i++) {
                const float a1 = x1[i], a2 = x2[i];
                y1[i] = a1 * cf[i] - a2 * sf[i];
                y2[i] = a1 * sf[i] + a2 * cf[i];
            }
        }
    }
}

typedef void (*rope_item_fn)(const rope_job *, int64_t, double *, double *, float *, float *);

SAMBA_VEC_FN static void
rope_item_c(const rope_job *j, int64_t it, double *c, double *s, float *cf, float *sf)
{
    rope_item_body(j, it, c, s, cf, sf);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
rope_item_avx2(const rope_job *j, int64_t it, double *c, double *s, float *cf, float *sf)
{
    rope_item_body(j, it, c, s, cf, sf);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
rope_item_avx512(const rope_job *j, int64_t it, double *c, double *s, float *cf, float *sf)
{
    rope_item_body(j, it, c, s, cf, sf);
}
#endif

/* Items [i0, i1); returns 0, or -1 when a thread could not allocate its scratch. */
static int
rope_chunk(rope_item_fn fn, const rope_job *j, int64_t i0, int64_t i1, int nt)
{
    int failed = 0;
    const int64_t half = j->headdim / 2;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        double *c = (double *)malloc((size_t)half * 2 * sizeof(double) + 1);
        float *cf = (float *)malloc((size_t)half * 2 * sizeof(float) + 1);
        int64_t it;
        if (c == NULL || cf == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(guided)
        for (it = i0; it < i1; it++) {
            if (c != NULL && cf != NULL) {
                fn(j, it, c, c + half, cf, cf + half);
            }
        }
        free(c);
        free(cf);
    }
    return failed ? -1 : 0;
}

samba_status
samba_rotary_fwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim, const float *x,
                 const int64_t *positions, double base, float *y, const samba_ctx *ctx)
{
    rope_item_fn fn = rope_item_c;
    const int64_t half = headdim / 2;
    rope_job job;
    double *tab;
    int64_t nblk, items, per_item, ichunk, i0, i;
    int threads;
    samba_status st = SAMBA_OK;

    if (batch < 0 || seqlen < 0 || nheads < 0 || headdim < 0 || headdim % 2 != 0) {
        return SAMBA_ERR_ARG;
    }
    if (!(base > 0.0) || isinf(base)) {
        return SAMBA_ERR_ARG;
    }
    if (batch == 0 || seqlen == 0 || nheads == 0 || headdim == 0) {
        return SAMBA_OK;
    }
    if (x == NULL || positions == NULL || y == NULL) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = rope_item_avx512; break;
    case SAMBA_ISA_AVX2: fn = rope_item_avx2; break;
    default: break;
    }
#endif
    tab = (double *)malloc((size_t)half * 3 * sizeof(double));
    if (tab == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    for (i = 0; i < half; i++) {
        tab[i] = pow(base, -2.0 * (double)i / (double)headdim);
        tab[half + i] = cos(tab[i]);
        tab[2 * half + i] = sin(tab[i]);
    }
    job.seqlen = seqlen;
    job.nheads = nheads;
    job.headdim = headdim;
    job.x = x;
    job.pos = positions;
    job.y = y;
    job.theta = tab;
    job.step_c = tab + half;
    job.step_s = tab + 2 * half;

    threads = samba_ctx_threads(ctx);
    nblk = (seqlen + SAMBA_ROPE_BLOCK - 1) / SAMBA_ROPE_BLOCK;
    items = batch * nblk;
    per_item = SAMBA_ROPE_BLOCK * nheads * headdim;
    ichunk = SAMBA_ROPE_CHUNK / per_item;
    if (ichunk < 1) {
        ichunk = 1;
    }
    for (i0 = 0; i0 < items; i0 += ichunk) {
        const int64_t i1 = i0 + ichunk < items ? i0 + ichunk : items;
        int nt = (i1 - i0) * per_item < SAMBA_ROPE_PAR_MIN ? 1 : threads;
        if (nt > i1 - i0) {
            nt = (int)(i1 - i0);
        }
        if (i0 > 0 && samba_ctx_stop(ctx)) {
            st = SAMBA_ERR_INTERRUPTED;
            break;
        }
        if (rope_chunk(fn, &job, i0, i1, nt) != 0) {
            st = SAMBA_ERR_ALLOC;
            break;
        }
    }
    free(tab);
    return st;
}
