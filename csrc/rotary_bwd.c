/*
 * rotary_bwd.c - backward pass of the NeoX rotary embedding (rotary.c), fp32.
 *
 * The forward rotates each pair (x1[i], x2[i]) by a = pos * theta_i; a rotation's adjoint
 * is the rotation by -a:  dx1 = dy1 cos a + dy2 sin a;  dx2 = -dy1 sin a + dy2 cos a.
 * cos/sin as in the forward: in double, from libm at the first token of each block of
 * RBWD_BLOCK tokens and wherever the position does not move by exactly +-1, otherwise
 * advanced by a complex multiply with (cos theta_i, +-sin theta_i) (~1e-16 error per step);
 * rounded to float once per token and applied to all its heads. dx may alias dy.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */

#define RBWD_BLOCK 64                  /* tokens per work item (exact re-seed) */
#define RBWD_CHUNK ((int64_t)1 << 22)  /* elements between stop polls */

typedef struct rbwd_job {
    int64_t tokens, nheads, headdim;
    const float *dy;
    const int64_t *pos;
    float *dx;
    const double *theta, *step_c, *step_s;
} rbwd_job;

/* tokens [t0, t1); c, s (half) double scratch; cf, sf (half) float scratch */
SAMBA_ALWAYS_INLINE void
rbwd_block_body(const rbwd_job *j, int64_t t0, int64_t t1, double *c, double *s, float *cf,
                float *sf)
{
    const int64_t half = j->headdim / 2, hd = j->headdim;
    int64_t t, h, i, prev = 0;

    for (t = t0; t < t1; t++) {
        const int64_t p = j->pos[t];
        const uint64_t adv = (uint64_t)p - (uint64_t)prev; /* no signed overflow */
        if (t > t0 && adv == 1u) {
            for (i = 0; i < half; i++) {
                const double cn = c[i] * j->step_c[i] - s[i] * j->step_s[i];
                s[i] = s[i] * j->step_c[i] + c[i] * j->step_s[i];
                c[i] = cn;
            }
        }
        else if (t > t0 && adv == (uint64_t)-1) {
            for (i = 0; i < half; i++) {
                const double cn = c[i] * j->step_c[i] + s[i] * j->step_s[i];
                s[i] = s[i] * j->step_c[i] - c[i] * j->step_s[i];
                c[i] = cn;
            }
        }
        else {
            const double pd = (double)p;
            for (i = 0; i < half; i++) {
                c[i] = cos(pd * j->theta[i]);
                s[i] = sin(pd * j->theta[i]);
            }
        }
        prev = p;
        for (i = 0; i < half; i++) {
            cf[i] = (float)c[i];
            sf[i] = (float)s[i];
        }
        for (h = 0; h < j->nheads; h++) {
            const float *restrict g = j->dy + (t * j->nheads + h) * hd;
            float *restrict o = j->dx + (t * j->nheads + h) * hd;
            for (i = 0; i < half; i++) {
                const float g1 = g[i], g2 = g[half + i];
                o[i] = g1 * cf[i] + g2 * sf[i];
                o[half + i] = g2 * cf[i] - g1 * sf[i];
            }
        }
    }
}

typedef void (*rbwd_fn)(const rbwd_job *, int64_t, int64_t, double *, double *, float *,
                        float *);

SAMBA_VEC_FN static void
rbwd_block_c(const rbwd_job *j, int64_t t0, int64_t t1, double *c, double *s, float *cf,
             float *sf)
{
    rbwd_block_body(j, t0, t1, c, s, cf, sf);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
rbwd_block_avx2(const rbwd_job *j, int64_t t0, int64_t t1, double *c, double *s, float *cf,
                float *sf)
{
    rbwd_block_body(j, t0, t1, c, s, cf, sf);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
rbwd_block_avx512(const rbwd_job *j, int64_t t0, int64_t t1, double *c, double *s, float *cf,
                  float *sf)
{
    rbwd_block_body(j, t0, t1, c, s, cf, sf);
}
#endif

samba_status
samba_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                 const float *dy, const int64_t *positions, double base, float *dx,
                 const samba_ctx *ctx)
{
    const int64_t half = headdim / 2;
    const int64_t tokens = batch * seqlen;
    const int64_t per_item = 2 * half * (int64_t)(sizeof(double) + sizeof(float));
    int64_t bchunk, nblk, b0, i;
    double *tab;
    char *scratch;
    rbwd_fn fn = rbwd_block_c;
    rbwd_job job;
    int nt;

    if (batch < 0 || seqlen < 0 || nheads < 0 || headdim < 0 || headdim % 2 != 0 ||
        !(base > 0.0) || isinf(base)) {
        return SAMBA_ERR_ARG;
    }
    if (tokens == 0 || nheads == 0 || headdim == 0) {
        return SAMBA_OK;
    }
    if (dy == NULL || positions == NULL || dx == NULL) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = rbwd_block_avx512; break;
    case SAMBA_ISA_AVX2: fn = rbwd_block_avx2; break;
    default: break;
    }
#endif
    nt = samba_ctx_threads(ctx);
    if (tokens * nheads * headdim < ((int64_t)1 << 16)) {
        nt = 1;
    }
    tab = (double *)malloc((size_t)(3 * half) * sizeof(double));
    scratch = (char *)malloc((size_t)nt * (size_t)per_item);
    if (tab == NULL || scratch == NULL) {
        free(tab);
        free(scratch);
        return SAMBA_ERR_ALLOC;
    }
    for (i = 0; i < half; i++) {
        tab[i] = pow(base, -2.0 * (double)i / (double)headdim);
        tab[half + i] = cos(tab[i]);
        tab[2 * half + i] = sin(tab[i]);
    }
    job.tokens = tokens;
    job.nheads = nheads;
    job.headdim = headdim;
    job.dy = dy;
    job.pos = positions;
    job.dx = dx;
    job.theta = tab;
    job.step_c = tab + half;
    job.step_s = tab + 2 * half;
    nblk = (tokens + RBWD_BLOCK - 1) / RBWD_BLOCK;
    bchunk = RBWD_CHUNK / (RBWD_BLOCK * nheads * headdim);
    if (bchunk < 1) {
        bchunk = 1;
    }
    for (b0 = 0; b0 < nblk; b0 += bchunk) {
        const int64_t b1 = b0 + bchunk < nblk ? b0 + bchunk : nblk;
        int64_t blk;
        if (samba_ctx_stop(ctx)) {
            free(tab);
            free(scratch);
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (blk = b0; blk < b1; blk++) {
            int tid = 0;
            double *c, *s;
            const int64_t t0 = blk * RBWD_BLOCK;
            const int64_t t1 = t0 + RBWD_BLOCK < tokens ? t0 + RBWD_BLOCK : tokens;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            c = (double *)(scratch + (size_t)tid * (size_t)per_item);
            s = c + half;
            fn(&job, t0, t1, c, s, (float *)(s + half), (float *)(s + half) + half);
        }
    }
    free(tab);
    free(scratch);
    return SAMBA_OK;
}
