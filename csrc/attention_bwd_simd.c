/*
 * attention_bwd_simd.c - instantiates the attention backward tile kernels
 * (attention_bwd_tile.h) for
 *   avx512: x86-64 AVX-512, 16 floats a vector, 32 registers: blocks of 6 rows x 4 vectors;
 *   avx2:   x86-64 AVX2 + FMA, 8 floats, 16 registers: 6 x 2;
 *   vec:    portable GCC/Clang vector extensions, 4 floats (SSE2, NEON, ...): 4 x 2;
 *   scalar: plain C, one float a "vector" (any head dim): 4 x 4;
 * and picks one with samba_isa() (simd.h) and the head dim (a multiple of the width).
 */
#include "attention_bwd_impl.h"

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
#define SIMD_VOPS 1
#include "simd_vops.h"
#define ABT_SFX avx512
#define ABT_TGT SAMBA_TARGET_AVX512
#define ABT_V __m512
#define ABT_VW 16
#define ABT_R 6
#define ABT_NV 4
#include "attention_bwd_tile.h"

/* ---------------------------------------------------------------------------- AVX2 --- */
#define SIMD_VOPS 2
#include "simd_vops.h"
#define ABT_SFX avx2
#define ABT_TGT SAMBA_TARGET_AVX2
#define ABT_V __m256
#define ABT_VW 8
#define ABT_R 6
#define ABT_NV 2
#include "attention_bwd_tile.h"
#endif /* SAMBA_X86_DISPATCH */

/* ------------------------------------------------------------ portable vectors --- */
#if SAMBA_HAVE_VEC_EXT
#define SIMD_VOPS 3
#include "simd_vops.h"
#define ABT_SFX vec
#define ABT_TGT
#define ABT_V samba_v4
#define ABT_VW 4
#define ABT_R 4
#define ABT_NV 2
#include "attention_bwd_tile.h"
#endif /* SAMBA_HAVE_VEC_EXT */

/* -------------------------------------------------------------------------- scalar --- */
#define SIMD_VOPS 4
#include "simd_vops.h"
#define ABT_SFX scalar
#define ABT_TGT
#define ABT_V float
#define ABT_VW 1
#define ABT_R 4
#define ABT_NV 4
#include "attention_bwd_tile.h"

/* ------------------------------------------------------------------------ dispatch --- */
#define ABT_KERNELS(sfx) {abt_bwd_key_tile_##sfx, #sfx}

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
