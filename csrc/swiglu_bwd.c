/*
 * swiglu_bwd.c - backward pass of y = silu(gate) * up (swiglu.c), fp32, elementwise:
 *   dgate = dy up sigmoid(gate) (1 + gate (1 - sigmoid(gate)));  dup = dy silu(gate)
 * Vectorised per ISA as in swiglu.c (simd.h), threads over blocks, ctx polled between chunks.
 */
#include "samba.h"
#include "simd.h"

#define GBWD_CHUNK ((int64_t)1 << 22)   /* elements between stop polls */
#define GBWD_BLOCK ((int64_t)1 << 14)   /* elements per work item */
#define GBWD_PAR_MIN ((int64_t)1 << 16) /* fewer: one thread */

SAMBA_ALWAYS_INLINE void
gbwd_body(int64_t i0, int64_t i1, const float *restrict g, const float *restrict u,
          const float *restrict dy, float *restrict dg, float *restrict du)
{
    int64_t i;
    for (i = i0; i < i1; i++) {
        const float x = g[i];
        const float e = samba_expf(-fabsf(x));
        const float r = 1.0f / (1.0f + e);
        const float sg = x >= 0.0f ? r : e * r;
        dg[i] = dy[i] * u[i] * sg * (1.0f + x * (1.0f - sg));
        du[i] = dy[i] * x * sg;
    }
}

typedef void (*gbwd_fn)(int64_t, int64_t, const float *, const float *, const float *,
                        float *, float *);

SAMBA_VEC_FN static void
gbwd_c(int64_t i0, int64_t i1, const float *g, const float *u, const float *dy, float *dg,
       float *du)
{
    gbwd_body(i0, i1, g, u, dy, dg, du);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
gbwd_avx2(int64_t i0, int64_t i1, const float *g, const float *u, const float *dy, float *dg,
          float *du)
{
    gbwd_body(i0, i1, g, u, dy, dg, du);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
gbwd_avx512(int64_t i0, int64_t i1, const float *g, const float *u, const float *dy,
            float *dg, float *du)
{
    gbwd_body(i0, i1, g, u, dy, dg, du);
}
#endif

samba_status
samba_swiglu_bwd(int64_t n, const float *gate, const float *up, const float *dy, float *dgate,
                 float *dup, const samba_ctx *ctx)
{
    gbwd_fn fn = gbwd_c;
    int64_t c0;
    int nt;

    if (n < 0) {
        return SAMBA_ERR_ARG;
    }
    if (n == 0) {
        return SAMBA_OK;
    }
    if (gate == NULL || up == NULL || dy == NULL || dgate == NULL || dup == NULL) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = gbwd_avx512; break;
    case SAMBA_ISA_AVX2: fn = gbwd_avx2; break;
    default: break;
    }
#endif
    nt = n < GBWD_PAR_MIN ? 1 : samba_ctx_threads(ctx);
    for (c0 = 0; c0 < n; c0 += GBWD_CHUNK) {
        const int64_t c1 = c0 + GBWD_CHUNK < n ? c0 + GBWD_CHUNK : n;
        int64_t blk;
        if (samba_ctx_stop(ctx)) {
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (blk = c0; blk < c1; blk += GBWD_BLOCK) {
            fn(blk, blk + GBWD_BLOCK < c1 ? blk + GBWD_BLOCK : c1, gate, up, dy, dgate, dup);
        }
    }
    return SAMBA_OK;
}
