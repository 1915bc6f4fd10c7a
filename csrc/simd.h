/*
 * simd.h - the vector helpers of the CPU kernels and the one instruction-set dispatch.
 *
 * Every kernel that has several instruction-set variants asks samba_isa() which one to run
 * (simd.c): the best level the CPU supports, capped by the environment variable
 * SAMBA_EXT_ISA=avx512|avx2|vec|scalar (the tests run every variant this way). The levels:
 *
 *   SAMBA_ISA_AVX512  x86-64 AVX-512 F + DQ + VL with FMA (16 floats a vector)
 *   SAMBA_ISA_AVX2    x86-64 AVX2 + FMA (8 floats)
 *   SAMBA_ISA_VEC     portable C for the compiler's vectoriser or GCC/Clang vector extensions
 *                     (SSE2 on x86-64, NEON on arm64)
 *   SAMBA_ISA_SCALAR  plain C, no vector code at all
 *
 * Variants are compiled with target attributes (SAMBA_TARGET_AVX512 / SAMBA_TARGET_AVX2), so no
 * -march flag is needed and one binary runs everywhere. A kernel whose variants are the same C
 * body compiled three times declares them with SAMBA_VEC_FN and picks with samba_isa(); the
 * OpenMP loop stays in ordinary code (an OpenMP region inside an inlined body would be outlined
 * once, at the baseline ISA).
 *
 * Helpers, one implementation of each function per vector width:
 *   scalar / auto-vectorised  samba_exp2f, samba_expf, samba_siluf, samba_softplusf, samba_sel
 *   GCC vector extension      samba_v4 type: samba_v4_exp2, samba_v4_max, ...
 *   AVX2                      samba_v256_exp2
 *   AVX-512                   samba_v512_exp2, _exp, _recip, _softplus, _sigmoid, _silu
 *
 * Every exponential is 2^t = 2^round(t) * P(t - round(t)) with the one degree-6 polynomial P of
 * SAMBA_EXP2_P1..P6 on [-1/2, 1/2] (relative error 1.9e-9 in exact arithmetic, about 1e-7 after
 * float32 rounding); e^x reduces x * log2(e) with the ln 2 split in two floats (Cody-Waite).
 * Results below 2^-126 are flushed to 0 (no denormals reach the vector loops), above 2^127 they are
 * inf; NaN propagates.
 */
#ifndef SAMBA_SIMD_H
#define SAMBA_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------- dispatch --- */
enum { SAMBA_ISA_SCALAR = 0, SAMBA_ISA_VEC = 1, SAMBA_ISA_AVX2 = 2, SAMBA_ISA_AVX512 = 3 };

/* The instruction-set level to run now: min(what the CPU supports, SAMBA_EXT_ISA). */
int samba_isa(void);
/* Name of a level ("avx512", "avx2", "vec", "scalar"). */
const char *samba_isa_name(int level);

#if defined(__GNUC__)
#define SAMBA_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define SAMBA_ALWAYS_INLINE static inline
#endif

/* x86-64 (or i386) with GCC/Clang: AVX2 and AVX-512 variants can be compiled. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SAMBA_NO_SIMD)
#define SAMBA_X86_DISPATCH 1
#include <immintrin.h>
#define SAMBA_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define SAMBA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SAMBA_X86_DISPATCH 0
#endif

/* GCC/Clang vector extensions (the SAMBA_ISA_VEC level of the hand-vectorised kernels). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SAMBA_NO_SIMD)
#define SAMBA_HAVE_VEC_EXT 1
#else
#define SAMBA_HAVE_VEC_EXT 0
#endif

/* Loops calling the scalar helpers only vectorise when the compiler may assume FP operations
 * do not trap (GCC otherwise jump-threads the clamps into branches before inlining); NaN/Inf
 * semantics are unaffected. The pragma applies to every function defined after this header in
 * the including file (include it last). Clang already defaults to -fno-trapping-math. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#define SAMBA_VEC_FN

/* ------------------------------------------------------------------ the polynomials --- */
/* 2^f for |f| <= 1/2 (near-minimax for relative error). */
#define SAMBA_EXP2_P6 1.534581242594868e-04f
#define SAMBA_EXP2_P5 1.3399930903688073e-03f
#define SAMBA_EXP2_P4 9.618489071726799e-03f
#define SAMBA_EXP2_P3 5.550328642129898e-02f
#define SAMBA_EXP2_P2 2.4022646248340607e-01f
#define SAMBA_EXP2_P1 6.931471824645996e-01f
#define SAMBA_LOG2E 1.44269504088896340736f
#define SAMBA_LN2_HI 0.693145751953125f /* ln 2 = HI + LO, HI with 16 bits */
#define SAMBA_LN2_LO 1.428606765330187e-06f
#define SAMBA_LOG2E_LO 1.925963033500011e-08f /* log2(e) - (float)log2(e) */
#define SAMBA_ROUND_MAGIC 12582912.0f         /* 1.5 * 2^23: (x + M) - M rounds to an integer */

/* log1p(w) = 2 atanh(s), s = w / (2 + w) in (0, 1/3]: 2 atanh(s) = s Q(s^2), Q of degree 4
 * near-minimax on [0, 1/9] (relative error 4e-9, ~7e-8 after float32 rounding). */
#define SAMBA_L1P_Q4 0.2817833423614502f
#define SAMBA_L1P_Q3 0.27960604429244995f
#define SAMBA_L1P_Q2 0.40024909377098083f
#define SAMBA_L1P_Q1 0.6666631698608398f
#define SAMBA_L1P_Q0 2.0f

/* -------------------------------------------------- scalar, for auto-vectorisation --- */
/* Written with +, *, comparisons and bit operations only (no libm, no branches the vectoriser
 * cannot if-convert), so loops that call them vectorise at the ISA of the enclosing function. */

/* c ? a : b as bit operations (both sides evaluated: the loop stays branch-free even under
 * -ftrapping-math). */
SAMBA_ALWAYS_INLINE float
samba_sel(int c, float a, float b)
{
    const int32_t m = -(int32_t)(c != 0);
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    ia = (ia & m) | (ib & ~m);
    memcpy(&a, &ia, sizeof a);
    return a;
}

/* 2^k for integer-valued k: 0 below -126, inf above 127; NaN k gives 0 (the callers multiply by
 * a NaN polynomial value then, so NaN still propagates). */
SAMBA_ALWAYS_INLINE float
samba_pow2i(float k)
{
    int32_t bits;
    float r;
    k = k > -127.0f ? k : -127.0f;
    k = k < 128.0f ? k : 128.0f;
    bits = ((int32_t)k + 127) * (1 << 23);
    memcpy(&r, &bits, sizeof r);
    return r;
}

SAMBA_ALWAYS_INLINE float
samba_exp2_poly(float f)
{
    float p = SAMBA_EXP2_P6;
    p = p * f + SAMBA_EXP2_P5;
    p = p * f + SAMBA_EXP2_P4;
    p = p * f + SAMBA_EXP2_P3;
    p = p * f + SAMBA_EXP2_P2;
    p = p * f + SAMBA_EXP2_P1;
    return p * f + 1.0f;
}

/* 2^t */
SAMBA_ALWAYS_INLINE float
samba_exp2f(float t)
{
    float k;
    t = t < -150.0f ? -150.0f : t; /* keeps t - k finite for t = -inf; NaN passes */
    k = (t + SAMBA_ROUND_MAGIC) - SAMBA_ROUND_MAGIC;
    return samba_exp2_poly(t - k) * samba_pow2i(k);
}

/* e^x */
SAMBA_ALWAYS_INLINE float
samba_expf(float x)
{
    float k, r;
    x = x < -104.0f ? -104.0f : x; /* e^-104 < 2^-149: flushed to 0 below; NaN passes */
    x = x > 89.0f ? 89.0f : x;     /* e^89 > FLT_MAX: inf below */
    k = (x * SAMBA_LOG2E + SAMBA_ROUND_MAGIC) - SAMBA_ROUND_MAGIC;
    r = (x - k * SAMBA_LN2_HI) - k * SAMBA_LN2_LO;
    return samba_exp2_poly(r * SAMBA_LOG2E) * samba_pow2i(k);
}

/* silu(x) = x sigmoid(x) from e = e^-|x| in [0, 1] (no overflow, no cancellation):
 * sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise. NaN propagates;
 * silu(+inf) = inf, silu(-inf) = NaN (-inf * 0). */
SAMBA_ALWAYS_INLINE float
samba_siluf(float x)
{
    const float e = samba_expf(-fabsf(x));
    const float s = 1.0f / (1.0f + e);
    return x * samba_sel(x >= 0.0f, s, e * s);
}

/* softplus with threshold 20 (PyTorch's and mamba_ssm's): x > 20 ? x : log1p(e^x), computed as
 * max(x, 0) + log1p(w) with w = e^-|x|. NaN propagates. */
SAMBA_ALWAYS_INLINE float
samba_softplusf(float x)
{
    const float w = samba_expf(-fabsf(x));
    const float s = w / (2.0f + w);
    const float q = s * s;
    float p = SAMBA_L1P_Q4;
    p = p * q + SAMBA_L1P_Q3;
    p = p * q + SAMBA_L1P_Q2;
    p = p * q + SAMBA_L1P_Q1;
    p = p * q + SAMBA_L1P_Q0;
    p = samba_sel(x > 0.0f, x, 0.0f) + s * p;
    return samba_sel(x > 20.0f, x, p);
}

/* --------------------------------------------------- GCC/Clang vector extensions --- */
#if SAMBA_HAVE_VEC_EXT
typedef float samba_v4 __attribute__((vector_size(16)));
typedef int32_t samba_v4i __attribute__((vector_size(16)));

SAMBA_ALWAYS_INLINE samba_v4
samba_v4_set1(float s)
{
    return (samba_v4){s, s, s, s};
}

SAMBA_ALWAYS_INLINE samba_v4
samba_v4_load(const float *p)
{
    samba_v4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

SAMBA_ALWAYS_INLINE void
samba_v4_store(float *p, samba_v4 v)
{
    memcpy(p, &v, sizeof v);
}

/* where m (all-ones lanes) then a else b */
SAMBA_ALWAYS_INLINE samba_v4
samba_v4_select(samba_v4i m, samba_v4 a, samba_v4 b)
{
    return (samba_v4)(((samba_v4i)a & m) | ((samba_v4i)b & ~m));
}

/* b when either is NaN, like x86 max */
SAMBA_ALWAYS_INLINE samba_v4
samba_v4_max(samba_v4 a, samba_v4 b)
{
    return samba_v4_select(a > b, a, b);
}

/* 2^x for x <= 127 (the softmax calls it with x <= 0); lanes below -126 give 0; NaN
 * propagates */
SAMBA_ALWAYS_INLINE samba_v4
samba_v4_exp2(samba_v4 x)
{
    const samba_v4i below = x < samba_v4_set1(-126.0f); /* false for NaN */
    const samba_v4 magic = samba_v4_set1(SAMBA_ROUND_MAGIC);
    samba_v4 xi, f, p, scale;
    samba_v4i n;
    x = samba_v4_select(x < samba_v4_set1(-127.0f), samba_v4_set1(-127.0f), x);
    xi = (x + magic) - magic;
    f = x - xi;
    p = samba_v4_set1(SAMBA_EXP2_P6) * f + samba_v4_set1(SAMBA_EXP2_P5);
    p = p * f + samba_v4_set1(SAMBA_EXP2_P4);
    p = p * f + samba_v4_set1(SAMBA_EXP2_P3);
    p = p * f + samba_v4_set1(SAMBA_EXP2_P2);
    p = p * f + samba_v4_set1(SAMBA_EXP2_P1);
    p = p * f + samba_v4_set1(1.0f);
    /* 2^xi from its exponent bits; NaN lanes convert 0 instead (no undefined conversion) and
     * stay NaN through p */
    n = __builtin_convertvector(samba_v4_select(x != x, samba_v4_set1(0.0f), xi), samba_v4i);
    scale = (samba_v4)((n + 127) << 23);
    return (samba_v4)((samba_v4i)(p * scale) & ~below);
}

/* -inf lanes to 0 */
SAMBA_ALWAYS_INLINE samba_v4
samba_v4_deadzero(samba_v4 x)
{
    return (samba_v4)((samba_v4i)x & ~(x == samba_v4_set1(-INFINITY)));
}
/* largest lane */
SAMBA_ALWAYS_INLINE float
samba_v4_hmax(samba_v4 x)
{
    const float a = x[0] > x[1] ? x[0] : x[1], b = x[2] > x[3] ? x[2] : x[3];
    return a > b ? a : b;
}
#endif /* SAMBA_HAVE_VEC_EXT */

#if SAMBA_X86_DISPATCH
/* --------------------------------------------------------------------------- AVX2 --- */
#define SAMBA_V256 SAMBA_TARGET_AVX2 static inline __attribute__((always_inline))

/* 2^x for x <= 127, as samba_v4_exp2 */
SAMBA_V256 __m256
samba_v256_exp2(__m256 x)
{
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    __m256 xi, f, p, scale;
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x); /* NaN x passes through */
    xi = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm256_sub_ps(x, xi);
    p = _mm256_fmadd_ps(_mm256_set1_ps(SAMBA_EXP2_P6), f, _mm256_set1_ps(SAMBA_EXP2_P5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(SAMBA_EXP2_P4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(SAMBA_EXP2_P3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(SAMBA_EXP2_P2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(SAMBA_EXP2_P1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    /* 2^xi from its exponent bits (-127 <= xi <= 127; NaN: p is NaN, any scale keeps it) */
    scale = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)), 23));
    return _mm256_and_ps(_mm256_mul_ps(p, scale), keep);
}

/* -inf lanes to 0 */
SAMBA_V256 __m256
samba_v256_deadzero(__m256 x)
{
    const __m256 dead = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm256_andnot_ps(dead, x);
}

/* sum and largest of the lanes */
SAMBA_V256 float
samba_v256_hsum(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

SAMBA_V256 float
samba_v256_hmax(__m256 x)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ------------------------------------------------------------------------ AVX-512 --- */
#define SAMBA_V512 SAMBA_TARGET_AVX512 static inline __attribute__((always_inline))

SAMBA_V512 __m512
samba_v512_exp2_poly(__m512 f)
{
    __m512 p = _mm512_set1_ps(SAMBA_EXP2_P6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SAMBA_EXP2_P5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SAMBA_EXP2_P4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SAMBA_EXP2_P3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SAMBA_EXP2_P2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SAMBA_EXP2_P1));
    return _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
}

/* 2^x; lanes below -126 give 0, above 127 inf (vscalefps); NaN propagates */
SAMBA_V512 __m512
samba_v512_exp2(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    const __m512 xi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_maskz_scalef_ps(keep, samba_v512_exp2_poly(_mm512_sub_ps(x, xi)), xi);
}

/* e^x with the reduction in extra precision: x log2(e) = hi + lo (log2(e) split in two floats,
 * an FMA for the product's rounding error); results below 2^-126 give 0 */
SAMBA_V512 __m512
samba_v512_exp(__m512 x)
{
    const __m512 l2e = _mm512_set1_ps(SAMBA_LOG2E);
    const __m512 hi = _mm512_mul_ps(x, l2e);
    const __mmask16 keep = _mm512_cmp_ps_mask(hi, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    const __m512 xi = _mm512_roundscale_ps(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 lo = _mm512_fmsub_ps(x, l2e, hi);
    lo = _mm512_fmadd_ps(x, _mm512_set1_ps(SAMBA_LOG2E_LO), lo);
    return _mm512_maskz_scalef_ps(
        keep, samba_v512_exp2_poly(_mm512_add_ps(_mm512_sub_ps(hi, xi), lo)), xi);
}

/* 1/x to ~1e-8 relative for finite nonzero x: rcp14 + one Newton step */
SAMBA_V512 __m512
samba_v512_recip(__m512 x)
{
    const __m512 r = _mm512_rcp14_ps(x);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}

/* -|x| (sign bit set) */
SAMBA_V512 __m512
samba_v512_negabs(__m512 x)
{
    return _mm512_or_ps(x, _mm512_set1_ps(-0.0f));
}

/* softplus with threshold 20, as samba_softplusf */
SAMBA_V512 __m512
samba_v512_softplus(__m512 x)
{
    const __m512 w = samba_v512_exp(samba_v512_negabs(x));
    const __m512 s = _mm512_mul_ps(w, samba_v512_recip(_mm512_add_ps(_mm512_set1_ps(2.0f), w)));
    const __m512 q = _mm512_mul_ps(s, s);
    __m512 p = _mm512_set1_ps(SAMBA_L1P_Q4);
    __m512 r;
    p = _mm512_fmadd_ps(p, q, _mm512_set1_ps(SAMBA_L1P_Q3));
    p = _mm512_fmadd_ps(p, q, _mm512_set1_ps(SAMBA_L1P_Q2));
    p = _mm512_fmadd_ps(p, q, _mm512_set1_ps(SAMBA_L1P_Q1));
    p = _mm512_fmadd_ps(p, q, _mm512_set1_ps(SAMBA_L1P_Q0));
    r = _mm512_fmadd_ps(s, p, _mm512_max_ps(x, _mm512_setzero_ps()));
    /* x > 20 (false for NaN, which then propagates through r) */
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ), r, x);
}

/* sigmoid as in samba_siluf: s = 1 / (1 + e^-|x|), and e^-|x| s for negative x */
SAMBA_V512 __m512
samba_v512_sigmoid(__m512 x)
{
    const __m512 e = samba_v512_exp(samba_v512_negabs(x));
    const __m512 s = samba_v512_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mul_ps(s, neg, s, e);
}

/* silu, as samba_siluf */
SAMBA_V512 __m512
samba_v512_silu(__m512 x)
{
    return _mm512_mul_ps(x, samba_v512_sigmoid(x));
}

/* -inf lanes to 0 */
SAMBA_V512 __m512
samba_v512_deadzero(__m512 x)
{
    const __mmask16 dead = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(x, dead, _mm512_setzero_ps());
}

#endif /* SAMBA_X86_DISPATCH */

#endif /* SAMBA_SIMD_H */
