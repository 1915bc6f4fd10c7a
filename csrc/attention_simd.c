/*
 * attention_simd.c - instantiates the attention tile kernel (attention_tile.h) for
 *   avx512: x86-64 AVX-512, 16 floats a vector, 32 registers: blocks 6 x 4 vectors;
 *   avx2:   x86-64 AVX2 + FMA, 8 floats, 16 registers: blocks 6 x 2;
 *   vec:    portable GCC/Clang vector extensions, 4 floats (SSE2, NEON, ...): blocks 4 x 2;
 * and picks one with samba_isa() (simd.h). The vector operations are simd_vops.h's.
 */
#include "attention_impl.h"
#include "simd.h"

/* ------------------------------------------------------------------------ AVX-512 --- */
#if SAMBA_X86_DISPATCH
#define SIMD_VOPS 1
#include "simd_vops.h"
#define ATTN_SFX avx512
#define ATTN_TGT SAMBA_TARGET_AVX512
#define ATTN_V __m512
#define ATTN_VW 16
#define ATTN_QK_R 6
#define ATTN_QK_NV 4
#define ATTN_PV_R 6
#define ATTN_PV_NV 4
#include "attention_tile.h"

/* ---------------------------------------------------------------------------- AVX2 --- */
#define SIMD_VOPS 2
#include "simd_vops.h"
#define ATTN_SFX avx2
#define ATTN_TGT SAMBA_TARGET_AVX2
#define ATTN_V __m256
#define ATTN_VW 8
#define ATTN_QK_R 6
#define ATTN_QK_NV 2
#define ATTN_PV_R 6
#define ATTN_PV_NV 2
#include "attention_tile.h"
#endif /* SAMBA_X86_DISPATCH */

/* ------------------------------------------------------------ portable vectors --- */
#if SAMBA_HAVE_VEC_EXT
#define SIMD_VOPS 3
#include "simd_vops.h"
#define ATTN_SFX vec
#define ATTN_TGT
#define ATTN_V samba_v4
#define ATTN_VW 4
#define ATTN_QK_R 4
#define ATTN_QK_NV 2
#define ATTN_PV_R 4
#define ATTN_PV_NV 2
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
