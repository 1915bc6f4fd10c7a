// l2_prefetch.cu - pull a buffer into the L2 cache ahead of the kernel that reads it.
//
// Used by the model's recorded decode step (samba_ext/cuda/prefetch.py): on a side branch of
// the step's CUDA graph, the weights of the next GEMM are fetched while the element-wise
// kernels before it run, so that DRAM keeps streaming between the GEMMs instead of waiting
// for each GEMM's launch and ramp-up. Nothing is written; results never depend on it.
//
// mode 1 (bulk): sm_90 and later issue cp.async.bulk.prefetch.L2 (the copy engine fetches
//   `chunk` bytes per instruction; the block exits at once, the fetch goes on); earlier
//   architectures issue one prefetch.global.L2 per 128-byte line.
// mode 2 (touch): every 16 bytes are loaded with ld.global.cg (L2 only) and folded into a
//   value that is never stored; the kernel runs until the data has arrived.
#include "cu_common.cuh"

#define L2P_CHUNK 16384  // bytes per bulk prefetch instruction (a multiple of 16)
#define L2P_LINE 128

__global__ void l2_prefetch_bulk_kernel(const char *base, int64_t bytes) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
#if __CUDA_ARCH__ >= 900
    for (int64_t c = t; c * L2P_CHUNK < bytes; c += stride) {
        const int64_t off = c * L2P_CHUNK;
        const int64_t left = bytes - off;
        const unsigned n = (unsigned)(left < L2P_CHUNK ? left : L2P_CHUNK);  // bytes % 16 == 0
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off), "r"(n)
                     : "memory");
    }
#else
    for (int64_t l = t; l * L2P_LINE < bytes; l += stride)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + l * L2P_LINE) : "memory");
#endif
}

#define L2P_TOUCH_UNROLL 8
__global__ void __launch_bounds__(512) l2_prefetch_touch_kernel(const uint4 *base, int64_t n16,
                                                                 int64_t never) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + (L2P_TOUCH_UNROLL - 1) * stride < n16; i += L2P_TOUCH_UNROLL * stride) {
        uint4 v[L2P_TOUCH_UNROLL];
#pragma unroll
        for (int u = 0; u < L2P_TOUCH_UNROLL; ++u) v[u] = __ldcg(base + i + u * stride);
#pragma unroll
        for (int u = 0; u < L2P_TOUCH_UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n16; i += stride) {
        const uint4 v = __ldcg(base + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    // `never` is -1 at every call: the loads cannot be removed, nothing is written.
    if ((int64_t)acc == never) ((uint4 *)base)[0].x = acc;
}

extern "C" samba_status samba_cu_l2_prefetch(const void *ptr, int64_t bytes, int mode,
                                             int sm_count, void *stream) {
    if (bytes < 0 || (mode != 1 && mode != 2) || sm_count < 1)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "l2_prefetch: bytes >= 0, mode 1 or 2, "
                                                "sm_count >= 1");
    if (bytes == 0 || ptr == NULL) return SAMBA_OK;
    // Whole 16-byte units around [ptr, ptr + bytes): never outside the pages the buffer is in.
    const uintptr_t lo = (uintptr_t)ptr & ~(uintptr_t)15;
    const uintptr_t hi = ((uintptr_t)ptr + (uintptr_t)bytes + 15) & ~(uintptr_t)15;
    const int64_t n = (int64_t)(hi - lo);
    cudaStream_t st = (cudaStream_t)stream;
    if (mode == 1) {
        // One chunk per thread, one warp per block, at most one block per multiprocessor.
        const int64_t chunks = cdiv(n, L2P_CHUNK);
        int64_t blocks = cdiv(chunks, 32);
        const int64_t cap = sm_count > 1 ? sm_count : 1;
        if (blocks > cap) blocks = cap;
        l2_prefetch_bulk_kernel<<<(unsigned)blocks, 32, 0, st>>>((const char *)lo, n);
    } else {
        const int64_t n16 = n / 16;
        int64_t blocks = cdiv(n16, 512 * L2P_TOUCH_UNROLL);
        const int64_t cap = sm_count / 2 > 0 ? sm_count / 2 : 1;
        if (blocks > cap) blocks = cap;
        l2_prefetch_touch_kernel<<<(unsigned)blocks, 512, 0, st>>>((const uint4 *)lo, n16, -1);
    }
    return samba_cu_check_launch("l2_prefetch", stream);
}
