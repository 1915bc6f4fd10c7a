// wgmma_tile.cuh - the shared-memory tile layout of the wgmma kernels (attention_wgmma.cu,
// attention_bwd_wgmma.cu) and the copies and matrix descriptors that go with it.
//
// Layout: a tile of ROWS rows and D columns (bf16 / fp16, D a multiple of 64) is stored as D / 64
// column blocks of ROWS x 128 bytes; 16-byte chunk c (of 8) of row r of a block sits at
// r * 128 + ((c ^ (r % 8)) * 16): the 128-byte swizzle (descriptor layout type 1), with every
// 8-row atom 1024-byte aligned when the tile is. The same tile serves as either operand form
// of wgmma (wgmma_ptx.cuh has the ISA sections):
//   K-major (the rows are M or N, the columns K): k-step ks (16 columns) starts at column block
//     ks / 4, (ks % 4) * 32 bytes into the row; SBO = 1024 (8 rows x 128 bytes), LBO unused (16);
//   MN-major (the rows are K, the columns M or N; tnsp = 1, bf16 / fp16 only): k-step kk (16
//     rows) starts kk * 16 * 128 bytes in; SBO = 1024 (8 rows), LBO = ROWS * 128 (the next 64
//     columns).
#ifndef SAMBA_WGMMA_TILE_CUH
#define SAMBA_WGMMA_TILE_CUH

#include "mma_ptx.cuh"
#include "wgmma_ptx.cuh"

namespace samba_wgmma {

// rows [r0, r0 + ROWS) of a (rows, hd) global matrix with row stride rs into the swizzled
// tile of D columns at shared address s (1024-byte aligned), by the block's THREADS threads;
// rows >= rlimit and columns >= hd are zero-filled (cp.async with src-size 0).
template <int D, int THREADS, int ROWS, typename T>
__device__ __forceinline__ void load_tile_sw(uint32_t s, const T *g, int64_t rs, int r0,
                                             int rlimit, int hd) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    constexpr int ITERS = (ROWS * CH + THREADS - 1) / THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int i = it * THREADS + threadIdx.x;
        if (ROWS * CH % THREADS != 0 && i >= ROWS * CH) break;
        const int r = i / CH, c = i % CH;
        const bool ok = r0 + r < rlimit && c * 8 < hd;
        const uint32_t dst = s + (uint32_t)((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
        samba_ptx::cp_async16_s(dst, ok ? g + (int64_t)(r0 + r) * rs + c * 8 : g, ok);
    }
}

// Descriptor of k-step ks of a K-major operand: the tile of ROWS rows at shared address s.
// Built as the tile's descriptor moved by the step's offset (desc_add), so that in an unrolled
// loop over the steps the tile's descriptor is computed once and each step costs one 32-bit
// add instead of the whole encoding.
template <int ROWS> __device__ __forceinline__ uint64_t desc_kmajor(uint32_t s, int ks) {
    return desc_add(desc_sw128(s, 16, 1024), (uint32_t)((ks >> 2) * ROWS * 128 + (ks & 3) * 32));
}
// Descriptor of k-step kk of an MN-major operand: the tile of ROWS (= K) rows at s.
template <int ROWS> __device__ __forceinline__ uint64_t desc_mnmajor(uint32_t s, int kk) {
    return desc_add(desc_sw128(s, ROWS * 128, 1024), (uint32_t)(kk * 16 * 128));
}

}  // namespace samba_wgmma

#endif
