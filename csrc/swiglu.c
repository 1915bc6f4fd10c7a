/*
 * swiglu.c - SwiGLU activation y = silu(gate) * up, elementwise.
 *
 * gate, up, y (n); y may alias gate or up (each element is read before it is written).
 * Split into chunks of SAMBA_SWIGLU_CHUNK elements (ctx polled between chunks), each an
 * OpenMP loop over blocks of SAMBA_SWIGLU_BLOCK elements.
 */
#include "samba.h"
#include "simd.h"

#define SAMBA_SWIGLU_CHUNK ((int64_t)1 << 23)
#define SAMBA_SWIGLU_BLOCK ((int64_t)1 << 13)
#define SAMBA_SWIGLU_PAR_MIN ((int64_t)1 << 18)

typedef void (*swiglu_fn)(int64_t, int64_t, const float *, const float *, float *);

/* Elements [a, e). */
SAMBA_ALWAYS_INLINE void
swiglu_body(int64_t a, int64_t e, const float *gate, const float *up, float *y)
{
    int64_t i;
    for (i = a; i < e; i++) {
        const float g = gate[i];
        y[i] = samba_siluf(g) * up[i];
    }
}

SAMBA_VEC_FN static void
swiglu_c(int64_t a, int64_t e, const float *gate, const float *up, float *y)
{
    swiglu_body(a, e, gate, up, y);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
swiglu_avx2(int64_t a, int64_t e, const float *gate, const float *up, float *y)
{
    swiglu_body(a, e, gate, up, y);
}

/* Intrinsics: samba_v512_silu's reciprocal is rcp14 with a Newton step where the vectorised
 * body divides (vdivps, 10-16 cycles a vector on Intel cores). Remainder lanes masked; each
 * vector is loaded before it is stored, so y may alias gate or up. */
SAMBA_TARGET_AVX512 static void
swiglu_avx512(int64_t a, int64_t e, const float *gate, const float *up, float *y)
{
    int64_t i;
    for (i = a; i < e; i += 16) {
        const __mmask16 m = e - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (e - i)) - 1u);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(samba_v512_silu(g), u));
    }
}
#endif

static void
swiglu_chunk(swiglu_fn fn, int64_t i0, int64_t i1, const float *gate, const float *up, float *y,
             int nt)
{
    const int64_t nb = (i1 - i0 + SAMBA_SWIGLU_BLOCK - 1) / SAMBA_SWIGLU_BLOCK;
    int64_t blk;

#pragma omp parallel for num_threads(nt) schedule(guided) if (nt > 1)
    for (blk = 0; blk < nb; blk++) {
        const int64_t a = i0 + blk * SAMBA_SWIGLU_BLOCK;
        const int64_t e = a + SAMBA_SWIGLU_BLOCK < i1 ? a + SAMBA_SWIGLU_BLOCK : i1;
        fn(a, e, gate, up, y);
    }
}

samba_status
samba_swiglu_fwd(int64_t n, const float *gate, const float *up, float *y, const samba_ctx *ctx)
{
    swiglu_fn fn = swiglu_c;
    int threads;
    int64_t i0;

    if (n < 0) {
        return SAMBA_ERR_ARG;
    }
    if (n == 0) {
        return SAMBA_OK;
    }
    if (gate == NULL || up == NULL || y == NULL) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: fn = swiglu_avx512; break;
    case SAMBA_ISA_AVX2: fn = swiglu_avx2; break;
    default: break;
    }
#endif
    threads = samba_ctx_threads(ctx);
    for (i0 = 0; i0 < n; i0 += SAMBA_SWIGLU_CHUNK) {
        const int64_t i1 = i0 + SAMBA_SWIGLU_CHUNK < n ? i0 + SAMBA_SWIGLU_CHUNK : n;
        const int nt = i1 - i0 < SAMBA_SWIGLU_PAR_MIN ? 1 : threads;
        if (i0 > 0 && samba_ctx_stop(ctx)) {
            return SAMBA_ERR_INTERRUPTED;
        }
        swiglu_chunk(fn, i0, i1, gate, up, y, nt);
    }
    return SAMBA_OK;
}
