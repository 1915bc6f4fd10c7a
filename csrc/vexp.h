/*
 * vexp.h - a vectorisable float exp / SiLU for the small elementwise kernels, and the
 * per-ISA variant macro used with runtime dispatch.
 *
 * Pattern used by the kernels: a SAMBA_ALWAYS_INLINE body holding the inner loops is
 * wrapped by three SAMBA_VEC_FN functions (portable, SAMBA_TARGET_AVX2, SAMBA_TARGET_AVX512);
 * the OpenMP loop lives in ordinary code and calls the wrapper chosen by samba_simd_level()
 * (an OpenMP region inside the inlined body would be outlined once, at the portable ISA).
 *
 * samba_vexpf: Cephes-style expf (range reduction by ln2, degree-6 polynomial), max error
 * about 2 ulp over [-87.3, 88.3]; arguments outside are clamped (exp(-inf) -> ~1e-38
 * instead of 0, exp(+inf) -> ~2e38 instead of inf), which changes silu/sigmoid results only
 * below 1e-37 in absolute value.  NaN propagates.  Written in plain C without float->int
 * conversions (the round-to-nearest "magic number" trick), so GCC/Clang auto-vectorise
 * loops that call it at whatever ISA the enclosing function is compiled for.
 */
#ifndef SAMBA_VEXP_H
#define SAMBA_VEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define SAMBA_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define SAMBA_ALWAYS_INLINE static inline
#endif

/* x86-64 with GCC/Clang: build AVX-512 and AVX2 variants of a body, pick one at run time. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SAMBA_X86_DISPATCH 1
#define SAMBA_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define SAMBA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SAMBA_X86_DISPATCH 0
#endif

/* Loops calling samba_vexpf only vectorise when the compiler may assume FP operations do not
 * trap (GCC otherwise jump-threads the clamps into branches before inlining); NaN/Inf
 * semantics are unaffected.  The pragma applies to every function defined after this header
 * in the including file (include it last).  Clang already defaults to -fno-trapping-math. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#define SAMBA_VEC_FN

/* 0: portable C, 1: AVX2+FMA, 2: AVX-512F (+DQ/VL). */
static inline int
samba_simd_level(void)
{
#if SAMBA_X86_DISPATCH
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
        return 2;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return 1;
    }
#endif
    return 0;
}

SAMBA_ALWAYS_INLINE float
samba_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

SAMBA_ALWAYS_INLINE uint32_t
samba_bits_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

SAMBA_ALWAYS_INLINE float
samba_vexpf(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float k, r, p, scale;
    uint32_t ki;

    x = x < -87.3f ? -87.3f : x; /* comparisons are false for NaN: NaN passes through */
    x = x > 88.3f ? 88.3f : x;
    k = x * 1.44269504088896341f + magic;
    ki = samba_bits_from_f32(k) - samba_bits_from_f32(magic); /* round(x / ln2), mod 2^32 */
    k = k - magic;
    r = x - k * 0.693359375f;        /* ln2 split hi/lo (Cephes) */
    r = r - k * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    scale = samba_f32_from_bits((ki + 127u) << 23); /* 2^k, k in [-126, 127] */
    return p * scale;
}

/* exp(a) for a <= 0 (or NaN): same polynomial, 2^k applied as two factors so that results
 * underflow gradually to denormals and 0 like expf; a < -110 gives exactly 0. */
SAMBA_ALWAYS_INLINE float
samba_vexpf_neg(float a)
{
    const float magic = 12582912.0f;
    float k, r, p;
    uint32_t m, m1;

    a = a < -110.0f ? -110.0f : a; /* exp(-110) < 2^-149 rounds to 0 */
    k = a * 1.44269504088896341f - magic; /* -(1.5*2^23 + round(-a/ln2)) */
    m = samba_bits_from_f32(k) - samba_bits_from_f32(-magic); /* round(-a/ln2), 0..159 */
    k = k + magic;                                             /* -m as a float */
    r = a - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    m1 = m >> 1; /* 2^-m = 2^-m1 * 2^-(m - m1), each factor a normal float */
    return (p * samba_f32_from_bits((127u - m1) << 23)) *
           samba_f32_from_bits((127u - (m - m1)) << 23);
}

/* silu(x) = x * sigmoid(x), with e = exp(-|x|) in (0, 1] (never overflows):
 * sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise.  No intermediate is
 * denormal unless the result is (|x| > ~87), which keeps vector loops free of slow
 * denormal assists.  NaN propagates; silu(+inf) = inf, silu(-inf) = NaN (-inf * 0). */
SAMBA_ALWAYS_INLINE float
samba_vsiluf(float x)
{
    const float e = samba_vexpf_neg(-fabsf(x));
    const float r = 1.0f / (1.0f + e);
    return x * (x >= 0.0f ? r : e * r);
}

#endif /* SAMBA_VEXP_H */
