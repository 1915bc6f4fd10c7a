/*
 * attention_simd.c - instantiates the attention tile kernel (attention_tile.h) for
 *   avx512: x86-64 AVX-512F, 16 floats a vector, 32 registers: blocks 6 x 4 vectors;
 *   avx2:   x86-64 AVX2 + FMA, 8 floats, 16 registers: blocks 6 x 2;
 *   vec:    portable GCC/Clang vector extensions, 4 floats (SSE2, NEON, ...): blocks 4 x 2;
 * and picks one at run time (__builtin_cpu_supports).  No -march flags are needed: the x86
 * variants carry target attributes.
 */
#include "attention_impl.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define ATTN_HAVE_X86 1
#include <immintrin.h>
#endif
#if defined(__GNUC__) || defined(__clang__)
#define ATTN_HAVE_VEC 1
#endif

/* exp2 polynomial: 2^f on [-0.5, 0.5], degree 6, max relative error ~1e-7 (fit by least
 * squares on Chebyshev nodes in float64). */
#define ATTN_P6 1.5337576830683796e-04f
#define ATTN_P5 1.3399860363037684e-03f
#define ATTN_P4 9.618519534356884e-03f
#define ATTN_P3 5.5503289975178886e-02f
#define ATTN_P2 2.402264660871389e-01f
#define ATTN_P1 6.931472056005106e-01f

/* ------------------------------------------------------------------------ AVX-512 --- */
#ifdef ATTN_HAVE_X86
#define ATTN_T512 __attribute__((target("avx512f,fma")))

ATTN_T512 static inline __attribute__((always_inline)) __m512
attn_exp2_512(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    __m512 xi, f, p;
    x = _mm512_max_ps(_mm512_set1_ps(-127.0f), x); /* NaN x passes through */
    xi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm512_sub_ps(x, xi);
    p = _mm512_fmadd_ps(_mm512_set1_ps(ATTN_P6), f, _mm512_set1_ps(ATTN_P5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_P4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_P3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_P2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_P1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, xi);
}

ATTN_T512 static inline __attribute__((always_inline)) __m512
attn_deadzero_512(__m512 x)
{
    const __mmask16 dead = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(x, dead, _mm512_setzero_ps());
}

#define ATTN_SFX avx512
#define ATTN_TGT ATTN_T512
#define ATTN_V __m512
#define ATTN_VW 16
#define ATTN_QK_R 6
#define ATTN_QK_NV 4
#define ATTN_PV_R 6
#define ATTN_PV_NV 4
#define VLOAD(p) _mm512_load_ps(p)
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_store_ps((p), (x))
#define VSET1(s) _mm512_set1_ps(s)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VEXP2(x) attn_exp2_512(x)
#define VDEADZERO(x) attn_deadzero_512(x)
#include "attention_tile.h"
#undef ATTN_SFX
#undef ATTN_TGT
#undef ATTN_V
#undef ATTN_VW
#undef ATTN_QK_R
#undef ATTN_QK_NV
#undef ATTN_PV_R
#undef ATTN_PV_NV
#undef VLOAD
#undef VLOADU
#undef VSTORE
#undef VSET1
#undef VZERO
#undef VFMA
#undef VMUL
#undef VADD
#undef VSUB
#undef VMAX
#undef VEXP2
#undef VDEADZERO

/* ---------------------------------------------------------------------------- AVX2 --- */
#define ATTN_T256 __attribute__((target("avx2,fma")))

ATTN_T256 static inline __attribute__((always_inline)) __m256
attn_exp2_256(__m256 x)
{
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    __m256 xi, f, p, scale;
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x); /* NaN x passes through */
    xi = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm256_sub_ps(x, xi);
    p = _mm256_fmadd_ps(_mm256_set1_ps(ATTN_P6), f, _mm256_set1_ps(ATTN_P5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_P4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_P3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_P2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_P1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    /* 2^xi for -126 <= xi <= 0 from its exponent bits (NaN: p is NaN, any scale keeps it) */
    scale = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)), 23));
    return _mm256_and_ps(_mm256_mul_ps(p, scale), keep);
}

ATTN_T256 static inline __attribute__((always_inline)) __m256
attn_deadzero_256(__m256 x)
{
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ), x);
}

#define ATTN_SFX avx2
#define ATTN_TGT ATTN_T256
#define ATTN_V __m256
#define ATTN_VW 8
#define ATTN_QK_R 6
#define ATTN_QK_NV 2
#define ATTN_PV_R 6
#define ATTN_PV_NV 2
#define VLOAD(p) _mm256_load_ps(p)
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_store_ps((p), (x))
#define VSET1(s) _mm256_set1_ps(s)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VEXP2(x) attn_exp2_256(x)
#define VDEADZERO(x) attn_deadzero_256(x)
#include "attention_tile.h"
#undef ATTN_SFX
#undef ATTN_TGT
#undef ATTN_V
#undef ATTN_VW
#undef ATTN_QK_R
#undef ATTN_QK_NV
#undef ATTN_PV_R
#undef ATTN_PV_NV
#undef VLOAD
#undef VLOADU
#undef VSTORE
#undef VSET1
#undef VZERO
#undef VFMA
#undef VMUL
#undef VADD
#undef VSUB
#undef VMAX
#undef VEXP2
#undef VDEADZERO
#endif /* ATTN_HAVE_X86 */

/* ------------------------------------------------------------ portable vectors --- */
#ifdef ATTN_HAVE_VEC
typedef float attn_v4 __attribute__((vector_size(16)));
typedef int32_t attn_v4i __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) attn_v4
attn_v4_load(const float *p)
{
    attn_v4 x;
    memcpy(&x, p, sizeof(x));
    return x;
}

static inline __attribute__((always_inline)) void
attn_v4_store(float *p, attn_v4 x)
{
    memcpy(p, &x, sizeof(x));
}

static inline __attribute__((always_inline)) attn_v4
attn_v4_set1(float s)
{
    const attn_v4 x = {s, s, s, s};
    return x;
}

/* where m (all-ones lanes) then a else b */
static inline __attribute__((always_inline)) attn_v4
attn_v4_select(attn_v4i m, attn_v4 a, attn_v4 b)
{
    return (attn_v4)(((attn_v4i)a & m) | ((attn_v4i)b & ~m));
}

static inline __attribute__((always_inline)) attn_v4
attn_v4_max(attn_v4 a, attn_v4 b) /* b when either is NaN, like x86 max */
{
    return attn_v4_select(a > b, a, b);
}

static inline __attribute__((always_inline)) attn_v4
attn_v4_exp2(attn_v4 x)
{
    const attn_v4i below = x < attn_v4_set1(-126.0f); /* false for NaN */
    const attn_v4 magic = attn_v4_set1(12582912.0f);  /* 1.5 * 2^23: round to nearest */
    attn_v4 xi, f, p, scale;
    attn_v4i n;
    x = attn_v4_select(x < attn_v4_set1(-127.0f), attn_v4_set1(-127.0f), x);
    xi = (x + magic) - magic;
    f = x - xi;
    p = attn_v4_set1(ATTN_P6) * f + attn_v4_set1(ATTN_P5);
    p = p * f + attn_v4_set1(ATTN_P4);
    p = p * f + attn_v4_set1(ATTN_P3);
    p = p * f + attn_v4_set1(ATTN_P2);
    p = p * f + attn_v4_set1(ATTN_P1);
    p = p * f + attn_v4_set1(1.0f);
    /* 2^xi from its exponent bits; lanes below -126 are zeroed; NaN lanes convert 0 instead
     * (no undefined conversion) and stay NaN through p */
    n = __builtin_convertvector(attn_v4_select(x != x, attn_v4_set1(0.0f), xi), attn_v4i);
    scale = (attn_v4)((n + 127) << 23);
    return (attn_v4)((attn_v4i)(p * scale) & ~below);
}

static inline __attribute__((always_inline)) attn_v4
attn_v4_deadzero(attn_v4 x)
{
    return (attn_v4)((attn_v4i)x & ~(x == attn_v4_set1(-INFINITY)));
}

#define ATTN_SFX vec
#define ATTN_TGT
#define ATTN_V attn_v4
#define ATTN_VW 4
#define ATTN_QK_R 4
#define ATTN_QK_NV 2
#define ATTN_PV_R 4
#define ATTN_PV_NV 2
#define VLOAD(p) attn_v4_load(p)
#define VLOADU(p) attn_v4_load(p)
#define VSTORE(p, x) attn_v4_store((p), (x))
#define VSET1(s) attn_v4_set1(s)
#define VZERO() attn_v4_set1(0.0f)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMAX(a, b) attn_v4_max((a), (b))
#define VEXP2(x) attn_v4_exp2(x)
#define VDEADZERO(x) attn_v4_deadzero(x)
#include "attention_tile.h"
#endif /* ATTN_HAVE_VEC */

/* ------------------------------------------------------------------------ dispatch --- */

/* Rank of the ISA cap from SAMBA_EXT_ATTN_ISA: 3 avx512 (default), 2 avx2, 1 vec, 0 scalar. */
static int
attn_isa_cap(void)
{
    const char *e = getenv("SAMBA_EXT_ATTN_ISA");
    if (e == NULL || e[0] == '\0') {
        return 3;
    }
    if (strcmp(e, "avx2") == 0) {
        return 2;
    }
    if (strcmp(e, "vec") == 0) {
        return 1;
    }
    if (strcmp(e, "scalar") == 0) {
        return 0;
    }
    return 3;
}

attn_tile_fn
samba_attn_pick_simd(int64_t hd, const char **name)
{
    const int cap = attn_isa_cap();
    (void)cap;
#ifdef ATTN_HAVE_X86
    if (cap >= 3 && hd % 16 == 0 && __builtin_cpu_supports("avx512f")) {
        *name = "avx512";
        return attn_tile_avx512;
    }
    if (cap >= 2 && hd % 8 == 0 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma")) {
        *name = "avx2";
        return attn_tile_avx2;
    }
#endif
#ifdef ATTN_HAVE_VEC
    if (cap >= 1 && hd % 4 == 0) {
        *name = "vec";
        return attn_tile_vec;
    }
#endif
    *name = "scalar";
    return NULL;
}
