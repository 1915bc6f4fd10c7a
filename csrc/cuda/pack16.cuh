// pack16.cuh - 16 bytes of one element type (4 float32 or 8 float16 / bfloat16), loaded and
// stored whole: the vector type of the element-wise kernels (norm.cu, swiglu.cu, conv.cu).
#pragma once
#include "cu_common.cuh"

// 16 bytes of one dtype (4 float32 or 8 float16 / bfloat16), loaded and stored whole.
template <typename T> struct Pack16 {
    static constexpr int N = 16 / (int)sizeof(T);
    union {
        uint4 raw;
        float f[4];
        __nv_bfloat16 b[8];
        __half h[8];
    } v;
    __device__ __forceinline__ void load(const void *p, int64_t i) {
        v.raw = *(const uint4 *)((const T *)p + i);
    }
    __device__ __forceinline__ void store(void *p, int64_t i) const {
        *(uint4 *)((T *)p + i) = v.raw;
    }
    __device__ __forceinline__ float get(int k) const;
    __device__ __forceinline__ void set(int k, float x);
};
template <> __device__ __forceinline__ float Pack16<float>::get(int k) const { return v.f[k]; }
template <> __device__ __forceinline__ void Pack16<float>::set(int k, float x) { v.f[k] = x; }
template <> __device__ __forceinline__ float Pack16<__nv_bfloat16>::get(int k) const {
    return __bfloat162float(v.b[k]);
}
template <> __device__ __forceinline__ void Pack16<__nv_bfloat16>::set(int k, float x) {
    v.b[k] = __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ float Pack16<__half>::get(int k) const {
    return __half2float(v.h[k]);
}
template <> __device__ __forceinline__ void Pack16<__half>::set(int k, float x) {
    v.h[k] = __float2half_rn(x);
}

static inline int is_aligned16(const void *p) { return ((uintptr_t)p % 16) == 0; }
static inline int64_t item_size(int dt) { return dt == SAMBA_CU_F32 ? 4 : 2; }
