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

/* Written out with intrinsics: the vectorised body divides (vdivps, 10-16 cycles a vector on
 * Intel cores), samba_v512_sigmoid takes 1 / (1 + e) as rcp14 with one Newton step; NaN and
 * infinities as the body. Remainder lanes masked. */
SAMBA_TARGET_AVX512 static void
gbwd_avx512(int64_t i0, int64_t i1, const float *g, const float *u, const float *dy, float *dg,
            float *du)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i;
    for (i = i0; i < i1; i += 16) {
        const __mmask16 m = i1 - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (i1 - i)) - 1u);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 d = _mm512_maskz_loadu_ps(m, dy + i);
        const __m512 up = _mm512_maskz_loadu_ps(m, u + i);
        const __m512 sg = samba_v512_sigmoid(x);
        const __m512 dsg = _mm512_mul_ps(d, sg);
        /* dgate = dy up sg (1 + x (1 - sg)), dup = dy x sg */
        const __m512 t = _mm512_fmadd_ps(x, _mm512_sub_ps(one, sg), one);
        _mm512_mask_storeu_ps(dg + i, m, _mm512_mul_ps(_mm512_mul_ps(dsg, up), t));
        _mm512_mask_storeu_ps(du + i, m, _mm512_mul_ps(dsg, x));
    }
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
