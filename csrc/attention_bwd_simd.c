/*
 * attention_bwd_simd.c - instantiates the attention forward/backward tile kernels
 * (attention_bwd_tile.h) for
 *   avx512: x86-64 AVX-512, 16 floats a vector, 32 registers: blocks of 6 rows x 4 vectors;
 *   avx2:   x86-64 AVX2 + FMA, 8 floats, 16 registers: 6 x 2;
 *   vec:    portable GCC/Clang vector extensions, 4 floats (SSE2, NEON, ...): 4 x 2;
 *   scalar: plain C, one float a "vector" (any head dim): 4 x 4;
 * and picks one with samba_isa() (simd.h) and the head dim (a multiple of the width).
 */
#include "attention_bwd_impl.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */
/* the products are chains of multiply-adds: let the compiler fuse them where the target has
 * FMA (rounds once: never less accurate) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* ------------------------------------------------------------------------ AVX-512 --- */
#if SAMBA_X86_DISPATCH
#define ABT_SFX avx512
#define ABT_TGT SAMBA_TARGET_AVX512
#define ABT_V __m512
#define ABT_VW 16
#define ABT_R 6
#define ABT_NV 4
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTOREU(p, x) _mm512_storeu_ps((p), (x))
#define VSET1(s) _mm512_set1_ps(s)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VEXP2(x) samba_v512_exp2(x)
#define VHSUM(x) _mm512_reduce_add_ps(x)
#define VHMAX(x) _mm512_reduce_max_ps(x)
#define VIOTA()                                                                                \
    _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f,   \
                   12.0f, 13.0f, 14.0f, 15.0f)
#define VKEEP(x, c, lo, hi, f)                                                                 \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask((c), (lo), _CMP_GE_OQ) &                          \
                             _mm512_cmp_ps_mask((c), (hi), _CMP_LT_OQ),                        \
                         (f), (x))
#include "attention_bwd_tile.h"
#include "attention_bwd_undef.h"

/* ---------------------------------------------------------------------------- AVX2 --- */
SAMBA_V256 float
abt_v256_hsum(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

SAMBA_V256 float
abt_v256_hmax(__m256 x)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define ABT_SFX avx2
#define ABT_TGT SAMBA_TARGET_AVX2
#define ABT_V __m256
#define ABT_VW 8
#define ABT_R 6
#define ABT_NV 2
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, x) _mm256_storeu_ps((p), (x))
#define VSET1(s) _mm256_set1_ps(s)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VEXP2(x) samba_v256_exp2(x)
#define VHSUM(x) abt_v256_hsum(x)
#define VHMAX(x) abt_v256_hmax(x)
#define VIOTA() _mm256_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f)
#define VKEEP(x, c, lo, hi, f)                                                                 \
    _mm256_blendv_ps((f), (x),                                                                 \
                     _mm256_and_ps(_mm256_cmp_ps((c), (lo), _CMP_GE_OQ),                       \
                                   _mm256_cmp_ps((c), (hi), _CMP_LT_OQ)))
#include "attention_bwd_tile.h"
#include "attention_bwd_undef.h"
#endif /* SAMBA_X86_DISPATCH */

/* ------------------------------------------------------------ portable vectors --- */
#if SAMBA_HAVE_VEC_EXT
SAMBA_ALWAYS_INLINE float
abt_v4_hmax(samba_v4 x)
{
    const float a = x[0] > x[1] ? x[0] : x[1], b = x[2] > x[3] ? x[2] : x[3];
    return a > b ? a : b;
}

#define ABT_SFX vec
#define ABT_TGT
#define ABT_V samba_v4
#define ABT_VW 4
#define ABT_R 4
#define ABT_NV 2
#define VLOADU(p) samba_v4_load(p)
#define VSTOREU(p, x) samba_v4_store((p), (x))
#define VSET1(s) samba_v4_set1(s)
#define VZERO() samba_v4_set1(0.0f)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMAX(a, b) samba_v4_max((a), (b))
#define VEXP2(x) samba_v4_exp2(x)
#define VHSUM(x) ((x)[0] + (x)[1] + (x)[2] + (x)[3])
#define VHMAX(x) abt_v4_hmax(x)
#define VIOTA() ((samba_v4){0.0f, 1.0f, 2.0f, 3.0f})
#define VKEEP(x, c, lo, hi, f) samba_v4_select(((c) >= (lo)) & ((c) < (hi)), (x), (f))
#include "attention_bwd_tile.h"
#include "attention_bwd_undef.h"
#endif /* SAMBA_HAVE_VEC_EXT */

/* -------------------------------------------------------------------------- scalar --- */
#define ABT_SFX scalar
#define ABT_TGT
#define ABT_V float
#define ABT_VW 1
#define ABT_R 4
#define ABT_NV 4
#define VLOADU(p) (*(p))
#define VSTOREU(p, x) (*(p) = (x))
#define VSET1(s) ((float)(s))
#define VZERO() 0.0f
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMAX(a, b) ((a) > (b) ? (a) : (b))
#define VEXP2(x) samba_exp2f(x)
#define VHSUM(x) (x)
#define VHMAX(x) (x)
#define VIOTA() 0.0f
#define VKEEP(x, c, lo, hi, f) ((c) >= (lo) && (c) < (hi) ? (x) : (f))
#include "attention_bwd_tile.h"

/* ------------------------------------------------------------------------ dispatch --- */
#define ABT_KERNELS(sfx) {abt_bwd_key_tile_##sfx, abt_fwd_tile_##sfx, #sfx}

const abwd_kernels *
samba_abwd_pick(int64_t hd)
{
#if SAMBA_X86_DISPATCH
    static const abwd_kernels k512 = ABT_KERNELS(avx512), k256 = ABT_KERNELS(avx2);
#endif
#if SAMBA_HAVE_VEC_EXT
    static const abwd_kernels kvec = ABT_KERNELS(vec);
#endif
    static const abwd_kernels kscalar = ABT_KERNELS(scalar);
    const int isa = samba_isa();
    (void)isa;
#if SAMBA_X86_DISPATCH
    if (isa >= SAMBA_ISA_AVX512 && hd % 16 == 0) {
        return &k512;
    }
    if (isa >= SAMBA_ISA_AVX2 && hd % 8 == 0) {
        return &k256;
    }
#endif
#if SAMBA_HAVE_VEC_EXT
    if (isa >= SAMBA_ISA_VEC && hd % 4 == 0) {
        return &kvec;
    }
#endif
    return &kscalar;
}
