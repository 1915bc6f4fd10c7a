// tma_ptx.cuh - wrappers over Hopper's tensor-memory copies and shared-memory barriers, used by
// the TMA variant of the sm_90a prefill (attention_wgmma.cu, SAMBA_EXT_ATTN_V4_TMA=1):
//   * mbarrier.init / arrive / arrive.expect_tx / try_wait.parity on a 64-bit barrier in
//     shared memory (PTX ISA "Parallel Synchronization and Communication Instructions:
//     mbarrier"): a barrier counts arrivals and, with expect_tx, the bytes that asynchronous
//     copies still have to deliver; a phase completes when both reach zero, and waiting on
//     the parity of phase k returns once phase k has completed (phases alternate parity, so a
//     waiter must never fall two phases behind, which the callers' ring discipline ensures);
//   * cp.async.bulk.tensor.4d (TMA) from global to shared memory through a tensor map (a
//     CUtensorMap made on the host with cuTensorMapEncodeTiled and passed as a
//     __grid_constant__ kernel parameter), completing its bytes on an mbarrier; rows and
//     columns outside the tensor arrive as zeros;
//   * fence.mbarrier_init, which makes the initialised barriers visible to the async proxy
//     before the first copy signals them.
// As for wgmma, the instructions exist only in sm_90a code; elsewhere the wrappers trap.
#ifndef SAMBA_TMA_PTX_CUH
#define SAMBA_TMA_PTX_CUH

#include <cuda.h>  // CUtensorMap (a type only: the driver is reached through an entry point)

#include "wgmma_ptx.cuh"

namespace samba_tma {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if SAMBA_WGMMA
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#else
    __trap();
#endif
}
// after the mbarrier.init of a block, before the barrier that publishes them
__device__ __forceinline__ void mbar_init_fence() {
#if SAMBA_WGMMA
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if SAMBA_WGMMA
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
    __trap();
#endif
}
// one arrival that also announces `bytes` to be delivered by asynchronous copies
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if SAMBA_WGMMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
#else
    __trap();
#endif
}
// waits until the phase of the given parity has completed
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if SAMBA_WGMMA
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            " selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
#else
    __trap();
#endif
}
// the box at coordinates (c0, c1, c2, c3) (innermost first) of the tensor map into shared
// address dst, its bytes completed on barrier bar
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                            int c0, int c1, int c2, int c3) {
#if SAMBA_WGMMA
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
#else
    __trap();
#endif
}

}  // namespace samba_tma

#endif
