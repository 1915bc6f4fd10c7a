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
// (written out for N = 64 and 128, bfloat16 and float16).
template <typename T, int N> struct Wgmma;

template <> struct Wgmma<__nv_bfloat16, 64> {
    // d (64 x 64, float32 accumulator fragment) += A (64 x 16, K-major, descriptor da) *
    // B (16 x 64, K-major, descriptor db)
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t da, uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
            "}, "
            "%32, %33, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "l"(da), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
    // d += A (64 x 16 in registers: each warp's 16 rows as the A fragment of mma.sync
    // m16n8k16) * B (16 x 64, MN-major: tnspB = 1, descriptor db)
    static __device__ __forceinline__ void rs_t(float (&d)[32], const uint32_t (&a)[4],
                                                uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
            "}, "
            "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
};
template <> struct Wgmma<__nv_bfloat16, 128> {
    // d (64 x 128, float32 accumulator fragment) += A (64 x 16, K-major, descriptor da) *
    // B (16 x 128, K-major, descriptor db)
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t da, uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
            "}, "
            "%64, %65, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(da), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
    // d += A (64 x 16 in registers: each warp's 16 rows as the A fragment of mma.sync
    // m16n8k16) * B (16 x 128, MN-major: tnspB = 1, descriptor db)
    static __device__ __forceinline__ void rs_t(float (&d)[64], const uint32_t (&a)[4],
                                                uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
            "}, "
            "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
};
template <> struct Wgmma<__half, 64> {
    // d (64 x 64, float32 accumulator fragment) += A (64 x 16, K-major, descriptor da) *
    // B (16 x 64, K-major, descriptor db)
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t da, uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
            "}, "
            "%32, %33, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "l"(da), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
    // d += A (64 x 16 in registers: each warp's 16 rows as the A fragment of mma.sync
    // m16n8k16) * B (16 x 64, MN-major: tnspB = 1, descriptor db)
    static __device__ __forceinline__ void rs_t(float (&d)[32], const uint32_t (&a)[4],
                                                uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
            "}, "
            "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
};
template <> struct Wgmma<__half, 128> {
    // d (64 x 128, float32 accumulator fragment) += A (64 x 16, K-major, descriptor da) *
    // B (16 x 128, K-major, descriptor db)
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t da, uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
            "}, "
            "%64, %65, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(da), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
    // d += A (64 x 16 in registers: each warp's 16 rows as the A fragment of mma.sync
    // m16n8k16) * B (16 x 128, MN-major: tnspB = 1, descriptor db)
    static __device__ __forceinline__ void rs_t(float (&d)[64], const uint32_t (&a)[4],
                                                uint64_t db) {
#if SAMBA_WGMMA
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
            "}, "
            "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#else
        __trap();
#endif
    }
};

}  // namespace samba_wgmma

#endif
