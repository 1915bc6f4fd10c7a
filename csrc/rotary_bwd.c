/*
 * rotary_bwd.c - backward pass of the NeoX rotary embedding (rotary.c), fp32.
 *
 * The forward rotates each pair (x1[i], x2[i]) by a = pos * theta_i; a rotation's adjoint
 * is the rotation by -a:  dx1 = dy1 cos a + dy2 sin a;  dx2 = -dy1 sin a + dy2 cos a.
 * cos/sin are computed in double per token (angle formed in double as in the forward),
 * rounded to float once and applied to every head of the token. dy, dx (B, L, H, hd);
 * dx may alias dy.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define RBWD_CHUNK ((int64_t)1 << 22) /* elements between stop polls */

samba_status
samba_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                 const float *dy, const int64_t *positions, double base, float *dx,
                 const samba_ctx *ctx)
{
    const int64_t half = headdim / 2;
    const int64_t tokens = batch * seqlen;
    int64_t tchunk, t0, i;
    double *theta;
    float *cs;
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
    nt = samba_ctx_threads(ctx);
    if (tokens * nheads * headdim < ((int64_t)1 << 16)) {
        nt = 1;
    }
    theta = (double *)malloc((size_t)half * sizeof(double));
    cs = (float *)malloc((size_t)nt * (size_t)(2 * half) * sizeof(float));
    if (theta == NULL || cs == NULL) {
        free(theta);
        free(cs);
        return SAMBA_ERR_ALLOC;
    }
    for (i = 0; i < half; i++) {
        theta[i] = pow(base, -2.0 * (double)i / (double)headdim);
    }
    tchunk = RBWD_CHUNK / (nheads * headdim);
    if (tchunk < 1) {
        tchunk = 1;
    }
    for (t0 = 0; t0 < tokens; t0 += tchunk) {
        const int64_t t1 = t0 + tchunk < tokens ? t0 + tchunk : tokens;
        int64_t t;
        if (samba_ctx_stop(ctx)) {
            free(theta);
            free(cs);
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (t = t0; t < t1; t++) {
            int tid = 0;
            float *c, *s;
            const double p = (double)positions[t];
            int64_t h, k;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            c = cs + (size_t)tid * (size_t)(2 * half);
            s = c + half;
            for (k = 0; k < half; k++) {
                const double a = p * theta[k];
                c[k] = (float)cos(a);
                s[k] = (float)sin(a);
            }
            for (h = 0; h < nheads; h++) {
                const float *g = dy + (t * nheads + h) * headdim;
                float *o = dx + (t * nheads + h) * headdim;
                for (k = 0; k < half; k++) {
                    const float g1 = g[k], g2 = g[half + k];
                    o[k] = g1 * c[k] + g2 * s[k];
                    o[half + k] = g2 * c[k] - g1 * s[k];
                }
            }
        }
    }
    free(theta);
    free(cs);
    return SAMBA_OK;
}
