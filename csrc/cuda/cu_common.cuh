// cu_common.cuh - device helpers shared by the kernel files: dtype-generic loads/stores,
// warp reductions, launch checking.
#ifndef SAMBA_CU_COMMON_CUH
#define SAMBA_CU_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "samba_cuda.h"

// Load element i of a float array of runtime dtype as float32. The dtype is the same for
// every thread of a launch, so the branch never diverges.
__device__ __forceinline__ float ldf(const void *p, int dt, int64_t i) {
    if (dt == SAMBA_CU_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == SAMBA_CU_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

// Typed load (compile-time dtype) for hot inner loops.
template <typename T> __device__ __forceinline__ float ldt(const void *p, int64_t i);
template <> __device__ __forceinline__ float ldt<float>(const void *p, int64_t i) {
    return ((const float *)p)[i];
}
template <> __device__ __forceinline__ float ldt<__half>(const void *p, int64_t i) {
    return __half2float(((const __half *)p)[i]);
}
template <> __device__ __forceinline__ float ldt<__nv_bfloat16>(const void *p, int64_t i) {
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

__device__ __forceinline__ float ldf(samba_cu_ref r, int64_t i) { return ldf(r.ptr, r.dtype, i); }

// Optional input: `dflt` when absent.
__device__ __forceinline__ float ldf_opt(samba_cu_ref r, int64_t i, float dflt) {
    return r.ptr ? ldf(r.ptr, r.dtype, i) : dflt;
}

// Store v (float32) rounded to nearest even into element i.
__device__ __forceinline__ void stf(void *p, int dt, int64_t i, float v) {
    if (dt == SAMBA_CU_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (dt == SAMBA_CU_F16)
        ((__half *)p)[i] = __float2half_rn(v);
    else
        ((float *)p)[i] = v;
}

__device__ __forceinline__ void stf(samba_cu_ref r, int64_t i, float v) { stf(r.ptr, r.dtype, i, v); }

// v rounded to the dtype and back (what a store followed by a load would give).
__device__ __forceinline__ float round_to(int dt, float v) {
    if (dt == SAMBA_CU_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == SAMBA_CU_F16) return __half2float(__float2half_rn(v));
    return v;
}

__device__ __forceinline__ int64_t ldi(const void *p, int dt, int64_t i) {
    return dt == SAMBA_CU_I32 ? (int64_t)((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Multiprocessors of the current device (cached per device; 100 if the query fails, which only
// sizes grids, never changes results).
static inline int samba_sm_count(void) {
    static int cached[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        cudaGetLastError();
        return 100;
    }
    if (cached[dev] == 0) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            v < 1) {
            cudaGetLastError();
            v = 100;
        }
        cached[dev] = v;
    }
    return cached[dev];
}

// Grid size for a 1-D launch over n items with `threads` per block (capped; kernels use
// grid-stride loops).
static inline unsigned grid_1d(int64_t n, int threads) {
    int64_t g = cdiv(n, threads);
    if (g < 1) g = 1;
    if (g > 65535LL * 32) g = 65535LL * 32;
    return (unsigned)g;
}

#endif
