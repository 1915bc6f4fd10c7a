/*
 * simd_vops.h - the vector operations of one instruction set, as the macros that the kernel
 * templates (attention_tile.h, attention_bwd_tile.h) are written in. No include guard: a file
 * that instantiates a template once per instruction set sets SIMD_VOPS and includes this header
 * before each instantiation; every inclusion first clears the previous set.
 *
 *   SIMD_VOPS 1  AVX-512 (__m512, 16 floats)    3  portable vector extensions (samba_v4, 4)
 *             2  AVX2 + FMA (__m256, 8 floats)  4  scalar (float, 1)
 *
 * VLOAD/VSTORE need vector-aligned addresses, VLOADU/VSTOREU do not; VHSUM/VHMAX reduce the
 * lanes; VIOTA is (0, 1, 2, ...); VKEEP(x, c, lo, hi, f) keeps x in the lanes where
 * lo <= c < hi and takes f elsewhere; VDEADZERO maps -inf lanes to 0 (not in the scalar set).
 * The helpers they call are simd.h's.
 */
#undef VLOAD
#undef VLOADU
#undef VSTORE
#undef VSTOREU
#undef VSET1
#undef VZERO
#undef VFMA
#undef VMUL
#undef VADD
#undef VSUB
#undef VMAX
#undef VEXP2
#undef VDEADZERO
#undef VHSUM
#undef VHMAX
#undef VIOTA
#undef VKEEP

#if SIMD_VOPS == 1
#define VLOAD(p) _mm512_load_ps(p)
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_store_ps((p), (x))
#define VSTOREU(p, x) _mm512_storeu_ps((p), (x))
#define VSET1(s) _mm512_set1_ps(s)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VEXP2(x) samba_v512_exp2(x)
#define VDEADZERO(x) samba_v512_deadzero(x)
#define VHSUM(x) _mm512_reduce_add_ps(x)
#define VHMAX(x) _mm512_reduce_max_ps(x)
#define VIOTA()                                                                                \
    _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f,   \
                   12.0f, 13.0f, 14.0f, 15.0f)
#define VKEEP(x, c, lo, hi, f)                                                                 \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask((c), (lo), _CMP_GE_OQ) &                          \
                             _mm512_cmp_ps_mask((c), (hi), _CMP_LT_OQ),                        \
                         (f), (x))

#elif SIMD_VOPS == 2
#define VLOAD(p) _mm256_load_ps(p)
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_store_ps((p), (x))
#define VSTOREU(p, x) _mm256_storeu_ps((p), (x))
#define VSET1(s) _mm256_set1_ps(s)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VEXP2(x) samba_v256_exp2(x)
#define VDEADZERO(x) samba_v256_deadzero(x)
#define VHSUM(x) samba_v256_hsum(x)
#define VHMAX(x) samba_v256_hmax(x)
#define VIOTA() _mm256_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f)
#define VKEEP(x, c, lo, hi, f)                                                                 \
    _mm256_blendv_ps((f), (x),                                                                 \
                     _mm256_and_ps(_mm256_cmp_ps((c), (lo), _CMP_GE_OQ),                       \
                                   _mm256_cmp_ps((c), (hi), _CMP_LT_OQ)))

#elif SIMD_VOPS == 3
#define VLOAD(p) samba_v4_load(p)
#define VLOADU(p) samba_v4_load(p)
#define VSTORE(p, x) samba_v4_store((p), (x))
#define VSTOREU(p, x) samba_v4_store((p), (x))
#define VSET1(s) samba_v4_set1(s)
#define VZERO() samba_v4_set1(0.0f)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMAX(a, b) samba_v4_max((a), (b))
#define VEXP2(x) samba_v4_exp2(x)
#define VDEADZERO(x) samba_v4_deadzero(x)
#define VHSUM(x) ((x)[0] + (x)[1] + (x)[2] + (x)[3])
#define VHMAX(x) samba_v4_hmax(x)
#define VIOTA() ((samba_v4){0.0f, 1.0f, 2.0f, 3.0f})
#define VKEEP(x, c, lo, hi, f) samba_v4_select(((c) >= (lo)) & ((c) < (hi)), (x), (f))

#elif SIMD_VOPS == 4
#define VLOAD(p) (*(p))
#define VLOADU(p) (*(p))
#define VSTORE(p, x) (*(p) = (x))
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

#else
#error "simd_vops.h: set SIMD_VOPS to 1 (AVX-512), 2 (AVX2), 3 (vector extensions) or 4 (scalar)"
#endif
#undef SIMD_VOPS
