/*
 * attention_simd.c - instantiates the attention tile kernel (attention_tile.h) for
 *   avx512: x86-64 AVX-512, 16 floats a vector, 32 registers: blocks 6 x 4 vectors;
 *   avx2:   x86-64 AVX2 + FMA, 8 floats, 16 registers: blocks 6 x 2;
 *   vec:    portable GCC/Clang vector extensions, 4 floats (SSE2, NEON, ...): blocks 4 x 2;
 * and picks one with samba_isa() (simd.h). The vector helpers (exp2, max, ...) are simd.h's.
 */
#include "attention_impl.h"
#include "simd.h"

/* ------------------------------------------------------------------------ AVX-512 --- */
#if SAMBA_X86_DISPATCH
#define ATTN_SFX avx512
#define ATTN_TGT SAMBA_TARGET_AVX512
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
#define VEXP2(x) samba_v512_exp2(x)
#define VDEADZERO(x) samba_v512_deadzero(x)
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
#define ATTN_SFX avx2
#define ATTN_TGT SAMBA_TARGET_AVX2
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
#define VEXP2(x) samba_v256_exp2(x)
#define VDEADZERO(x) samba_v256_deadzero(x)
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
#endif /* SAMBA_X86_DISPATCH */

/* ------------------------------------------------------------ portable vectors --- */
#if SAMBA_HAVE_VEC_EXT
#define ATTN_SFX vec
#define ATTN_TGT
#define ATTN_V samba_v4
#define ATTN_VW 4
#define ATTN_QK_R 4
#define ATTN_QK_NV 2
#define ATTN_PV_R 4
#define ATTN_PV_NV 2
#define VLOAD(p) samba_v4_load(p)
#define VLOADU(p) samba_v4_load(p)
#define VSTORE(p, x) samba_v4_store((p), (x))
#define VSET1(s) samba_v4_set1(s)
#define VZERO() samba_v4_set1(0.0f)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMAX(a, b) samba_v4_max((a), (b))
#define VEXP2(x) samba_v4_exp2(x)
#define VDEADZERO(x) samba_v4_deadzero(x)
#include "attention_tile.h"
#endif /* SAMBA_HAVE_VEC_EXT */

/* ------------------------------------------------------------------------ dispatch --- */
attn_tile_fn
samba_attn_pick_simd(int64_t hd, const char **name)
{
    const int isa = samba_isa();
    (void)isa;
#if SAMBA_X86_DISPATCH
    if (isa >= SAMBA_ISA_AVX512 && hd % 16 == 0) {
        *name = "avx512";
        return attn_tile_avx512;
    }
    if (isa >= SAMBA_ISA_AVX2 && hd % 8 == 0) {
        *name = "avx2";
        return attn_tile_avx2;
    }
#endif
#if SAMBA_HAVE_VEC_EXT
    if (isa >= SAMBA_ISA_VEC && hd % 4 == 0) {
        *name = "vec";
        return attn_tile_vec;
    }
#endif
    *name = "scalar";
    return NULL;
}
