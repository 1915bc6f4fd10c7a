// pdl.cuh - programmatic dependent launch (Hopper and later): a kernel launched with
// samba_launch may start while the kernel before it in the stream is still running; it must
// call pdl_wait() before its first load or store of global memory. Before it, only L2
// prefetches are allowed (they return no data, and the L2 is where the previous kernel's
// stores land, so the loads after the wait see them). pdl_trigger(), called after the wait,
// lets the next such kernel start (so at most two kernels of a stream overlap). Both are
// no-ops before sm_90 and when the kernel was launched without the attribute, so a kernel
// written this way may be launched either way. On by default where the device runs sm_90+
// code (pdl.cu); SAMBA_EXT_PDL=0 (read once) or samba_cu_pdl_set(0) launches every kernel in
// plain stream order.
#ifndef SAMBA_PDL_CUH
#define SAMBA_PDL_CUH

#include <cuda_runtime.h>

#include <utility>

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

extern "C" int samba_cu_pdl_enabled(void);

// kernel<<<grid, block, smem, st>>>(args...), with the programmatic-serialization attribute
// when PDL is on. Only for kernels that follow the rule above. Launch errors are left for
// cudaGetLastError (samba_cu_check_launch), as with <<<...>>>.
template <typename... KArgs, typename... Args>
static inline void samba_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t st, Args &&...args) {
    if (!samba_cu_pdl_enabled()) {
        kernel<<<grid, block, smem, st>>>(std::forward<Args>(args)...);
        return;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

#endif
