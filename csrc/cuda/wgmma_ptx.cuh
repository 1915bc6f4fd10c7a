// wgmma_ptx.cuh - wrappers over the Hopper warpgroup matrix instructions used by the sm_90a
// prefill (attention_wgmma.cu): wgmma.mma_async m64nNk16 (N = 64, 128) with float32
// accumulators for bfloat16 / float16 inputs, in the SS form (A and B from shared memory
// through matrix descriptors) and the RS form (A from registers, B from shared memory), plus
// wgmma.fence / commit_group / wait_group and fence.proxy.async.
//
// References followed (PTX ISA 8.x, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions", section 9.7.15 in the 8.5 numbering):
//   * 9.7.15.5.1 "Matrix Descriptor Format": 64-bit descriptor, bits 0-13 start address >> 4,
//     16-29 leading dimension byte offset >> 4, 32-45 stride dimension byte offset >> 4,
//     49-51 base offset, 62-63 swizzle mode (0 none, 1 128-byte, 2 64-byte, 3 32-byte);
//     the same encoding as cute::GmmaDescriptor in CUTLASS (cute/arch/mma_sm90_desc.hpp).
//   * 9.7.15.5 shared-memory layouts: for a 128-byte swizzle the canonical atom is 8 rows of
//     128 bytes (1024 bytes, 1024-byte aligned), 16-byte chunk c of row r stored at chunk
//     c ^ (r % 8). CUTLASS spells the canonical forms (make_gmma_desc in
//     cute/atom/mma_traits_sm90_gmma.hpp), in 16-byte units:
//       K-major, 128B : ((8,m),(8 elems x 2)) : ((8, SBO), (1, -)): LBO unused, SBO = 1024 B
//                       between groups of 8 rows;
//       MN-major, 128B: ((8,n),(8,k)) : ((1, LBO), (8, SBO)): 64 MN-elements per 128-byte
//                       row, LBO = bytes between 64-element MN blocks, SBO = 1024 B between
//                       groups of 8 K-rows.
//   * 9.7.15.5.1 register fragments: the m64nN accumulator of warp w of the warpgroup holds
//     rows 16w + lane/4 (+8) and columns 8j + 2(lane%4) (+1) in d[4j .. 4j+3], i.e. the
//     mma.sync m16n8k16 C fragment repeated over N/8 column tiles; the RS A operand of warp w
//     is the m16n8k16 A fragment of rows 16w .. 16w+15.
//   * 9.7.15.6-9.7.15.8 wgmma.mma_async operands: d, a-desc | {a0..a3}, b-desc, scale-d
//     (predicate, 1: d += A B), imm-scale-a, imm-scale-b (1: no negation), imm-trans-a (SS
//     only), imm-trans-b (0: K-major, 1: MN-major; allowed for .f16 / .bf16 only).
//   * wgmma.fence before the first wgmma.mma_async that touches registers written by other
//     instructions; commit_group / wait_group to wait for the results. The accumulator
//     registers are pinned around the asynchronous instructions with empty asm statements
//     (fence_operand) so that the compiler moves no read or write of them across the
//     fence / wait (CUTLASS's warpgroup_fence_operand does the same).
//   * Shared memory written through the generic proxy (cp.async, st.shared) is read by
//     wgmma through the async proxy: fence.proxy.async.shared::cta after the writes, before
//     the barrier that publishes them (PTX ISA "Proxies" / membar.proxy).
//
// The instructions exist only in sm_90a code (__CUDA_ARCH_FEAT_SM90_ALL); compiled for any
// other target the wrappers are a trap, and the launcher never starts the kernels there.
#ifndef SAMBA_WGMMA_PTX_CUH
#define SAMBA_WGMMA_PTX_CUH

#include "cu_common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SAMBA_WGMMA 1
#else
#define SAMBA_WGMMA 0
#endif

namespace samba_wgmma {

// Shared-memory matrix descriptor for a tile in the 128-byte swizzle layout (base offset 0:
// every swizzle atom of the tile is 1024-byte aligned). addr: shared address in bytes (the
// start of the operand, possibly 32/64/96 bytes into a 128-byte row for a K step of a
// K-major operand); lbo, sbo: bytes.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32) | ((uint64_t)1 << 62);
}
// The descriptor d moved by `bytes` (a multiple of 16) in shared memory: only the start-address
// field (bits 0-13, address / 16) changes, and it cannot carry into the next field because every
// shared address of sm_90 is below 256 KB. So the add is 32-bit and the high word stays what it
// was (a compile-time constant when d came from desc_sw128 with constant offsets).
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t bytes) {
    return (d & 0xFFFFFFFF00000000ull) | (uint32_t)((uint32_t)d + (bytes >> 4));
}

__device__ __forceinline__ void wg_fence() {
#if SAMBA_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void wg_commit() {
#if SAMBA_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}
template <int N> __device__ __forceinline__ void wg_wait() {
#if SAMBA_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
    __trap();
#endif
}
// generic-proxy writes to shared memory (cp.async, st.shared) -> visible to the async proxy
__device__ __forceinline__ void fence_proxy_async_smem() {
#if SAMBA_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
    __trap();
#endif
}
// keeps the compiler from moving accesses of r across the asynchronous matrix instructions
__device__ __forceinline__ void fence_operand(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }
template <int N> __device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) fence_operand(r[i]);
}

// Wgmma<T, N>::ss / ::rs_t: one wgmma.mma_async m64nNk16 with float32 accumulators
// (N = 32, 64 and 128, bfloat16 and float16; one macro spells the six specialisations):
//   ss(d, da, db):  d (64 x N, accumulator fragment) += A (64 x 16, K-major, descriptor da) *
//                   B (16 x N, K-major, descriptor db)
//   ss_t(d, da, db): the same with B MN-major (tnspB = 1)
//   rs_t(d, a, db): d += A (64 x 16 in registers: each warp's 16 rows as the A fragment of
//                   mma.sync m16n8k16) * B (16 x N, MN-major: tnspB = 1, descriptor db)
template <typename T, int N> struct Wgmma;

#if SAMBA_WGMMA
#define SAMBA_WG_ASM(...) asm volatile(__VA_ARGS__)
#else
#define SAMBA_WG_ASM(...) __trap()
#endif

// the accumulator operands %0 .. %15 (N = 32), %0 .. %31 (N = 64) or %0 .. %63 (N = 128), as
// text and as bindings
#define SAMBA_WG_REGS16                                                                        \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define SAMBA_WG_REGS32                                                                        \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                   \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SAMBA_WG_REGS64                                                                        \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                   \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "         \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "         \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define SAMBA_WG_F8(d, i)                                                                      \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define SAMBA_WG_OUT16(d) SAMBA_WG_F8(d, 0), SAMBA_WG_F8(d, 8)
#define SAMBA_WG_OUT32(d) \
    SAMBA_WG_F8(d, 0), SAMBA_WG_F8(d, 8), SAMBA_WG_F8(d, 16), SAMBA_WG_F8(d, 24)
#define SAMBA_WG_OUT64(d) \
    SAMBA_WG_OUT32(d), SAMBA_WG_F8(d, 32), SAMBA_WG_F8(d, 40), SAMBA_WG_F8(d, 48), SAMBA_WG_F8(d, 56)

// One SS-form member NAME with tnspB = TB ("0" K-major, "1" MN-major B) of Wgmma<T, N> (the
// arguments after TB as in SAMBA_WG_SPEC).
#define SAMBA_WG_SS(NAME, TB, TY, N, NA, REGS, OUTS, SS_P, SS_AB)                             \
    static __device__ __forceinline__ void NAME(float (&d)[NA], uint64_t da, uint64_t db) {   \
        SAMBA_WG_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, " SS_P ", 0;\n"                        \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {"        \
                     REGS "}, " SS_AB ", p, 1, 1, 0, " TB ";\n}\n"                            \
                     : OUTS(d)                                                                \
                     : "l"(da), "l"(db), "r"(1));                                             \
    }
// T, its PTX type, N, accumulator registers NA, their operand text / bindings, then the
// operand numbers that follow the accumulators: SS predicate and descriptors, RS predicate and
// A registers + descriptor.
#define SAMBA_WG_SPEC(T, TY, N, NA, REGS, OUTS, SS_P, SS_AB, RS_P, RS_AB)                     \
    template <> struct Wgmma<T, N> {                                                          \
        SAMBA_WG_SS(ss, "0", TY, N, NA, REGS, OUTS, SS_P, SS_AB)                              \
        SAMBA_WG_SS(ss_t, "1", TY, N, NA, REGS, OUTS, SS_P, SS_AB)                            \
        static __device__ __forceinline__ void rs_t(float (&d)[NA], const uint32_t (&a)[4],   \
                                                    uint64_t db) {                            \
            SAMBA_WG_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, " RS_P ", 0;\n"                    \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {"    \
                         REGS "}, " RS_AB ", p, 1, 1, 1;\n}\n"                               \
                         : OUTS(d)                                                            \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));     \
        }                                                                                     \
    };

SAMBA_WG_SPEC(__nv_bfloat16, "bf16", 32, 16, SAMBA_WG_REGS16, SAMBA_WG_OUT16, "%18", "%16, %17",
              "%21", "{%16, %17, %18, %19}, %20")
SAMBA_WG_SPEC(__nv_bfloat16, "bf16", 64, 32, SAMBA_WG_REGS32, SAMBA_WG_OUT32, "%34", "%32, %33",
              "%37", "{%32, %33, %34, %35}, %36")
SAMBA_WG_SPEC(__nv_bfloat16, "bf16", 128, 64, SAMBA_WG_REGS64, SAMBA_WG_OUT64, "%66", "%64, %65",
              "%69", "{%64, %65, %66, %67}, %68")
SAMBA_WG_SPEC(__half, "f16", 32, 16, SAMBA_WG_REGS16, SAMBA_WG_OUT16, "%18", "%16, %17", "%21",
              "{%16, %17, %18, %19}, %20")
SAMBA_WG_SPEC(__half, "f16", 64, 32, SAMBA_WG_REGS32, SAMBA_WG_OUT32, "%34", "%32, %33", "%37",
              "{%32, %33, %34, %35}, %36")
SAMBA_WG_SPEC(__half, "f16", 128, 64, SAMBA_WG_REGS64, SAMBA_WG_OUT64, "%66", "%64, %65", "%69",
              "{%64, %65, %66, %67}, %68")

#undef SAMBA_WG_SPEC
#undef SAMBA_WG_SS
#undef SAMBA_WG_OUT64
#undef SAMBA_WG_OUT32
#undef SAMBA_WG_F8
#undef SAMBA_WG_REGS64
#undef SAMBA_WG_REGS32
#undef SAMBA_WG_ASM

}  // namespace samba_wgmma

#endif
