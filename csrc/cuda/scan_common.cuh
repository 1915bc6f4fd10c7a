// scan_common.cuh - device helpers shared by the selective scan's forward (scan.cu) and
// backward (scan_bwd_kernels.cuh) kernels and the conv backward (conv_bwd_kernels.cuh): the
// group length, fast softplus / SiLU / sigmoid / exp2 on the exp unit, and Vec8, eight
// consecutive elements of a row loaded as one 16-byte vector.
#ifndef SAMBA_SCAN_COMMON_CUH
#define SAMBA_SCAN_COMMON_CUH

#include "cu_common.cuh"

#define SPLIT_T 8
#define LOG2E_F 1.4426950408889634f

// softplus and SiLU of the split kernel with the exp unit's approximations: log1p(e) is
// log(u) * e / (u - 1) with u = 1 + e rounded (exact to a few ulp for every e >= 0, as the
// rounding of u cancels), and x * sigmoid(x) with a fast division (MUFU reciprocal; 0 where
// exp(-x) overflows). Both are within float32 rounding of the accurate versions, about a
// third of their instructions.
__device__ __forceinline__ float softplus_fast(float x) {
    if (x > 20.0f) return x;
    const float e = __expf(x), u = 1.0f + e;
    return u == 1.0f ? e : __logf(u) * __fdividef(e, u - 1.0f);
}

__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// 1 / (1 + exp(-x)) with the same fast exp and division (0 where exp(-x) overflows).
__device__ __forceinline__ float sigmoid_fast(float x) {
    return __fdividef(1.0f, 1.0f + __expf(-x));
}

__device__ __forceinline__ float ex2_ftz(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else  // a host build of the device code (exp2 rounded, subnormal results flushed)
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
#endif
}

// 8 consecutive elements of one row, kept in their storage type until used.
template <typename T> struct Vec8;
template <> struct Vec8<float> {
    float v[8];
    __device__ __forceinline__ void vload(const void *p, int64_t i) {
        const float4 a = *(const float4 *)((const float *)p + i);
        const float4 b = *(const float4 *)((const float *)p + i + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
    __device__ __forceinline__ void sload(const void *p, int64_t i, int64_t st, int n) {
#pragma unroll
        for (int s = 0; s < 8; ++s) v[s] = s < n ? ((const float *)p)[i + s * st] : 0.0f;
    }
    __device__ __forceinline__ float get(int s) const { return v[s]; }
};
template <typename T> struct Vec8h {  // 16-bit storage (bf16 / f16)
    uint32_t w[4];
    __device__ __forceinline__ void vload(const void *p, int64_t i) {
        const uint4 a = *(const uint4 *)((const uint16_t *)p + i);
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    }
    __device__ __forceinline__ void sload(const void *p, int64_t i, int64_t st, int n) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t lo = 2 * k < n ? ((const uint16_t *)p)[i + 2 * k * st] : 0u;
            const uint32_t hi = 2 * k + 1 < n ? ((const uint16_t *)p)[i + (2 * k + 1) * st] : 0u;
            w[k] = lo | (hi << 16);
        }
    }
    __device__ __forceinline__ uint16_t bits(int s) const {
        return (uint16_t)(w[s >> 1] >> ((s & 1) * 16));
    }
};
template <> struct Vec8<__nv_bfloat16> : Vec8h<__nv_bfloat16> {
    __device__ __forceinline__ float get(int s) const {
        return __uint_as_float((uint32_t)bits(s) << 16);
    }
};
template <> struct Vec8<__half> : Vec8h<__half> {
    __device__ __forceinline__ float get(int s) const {
        return __half2float(__ushort_as_half(bits(s)));
    }
};

// Element s (a run-time index) of v without indexing a register array at run time.
template <typename T> __device__ __forceinline__ float pick(const Vec8<T> &v, int s) {
    float x = v.get(0);
#pragma unroll
    for (int i = 1; i < SPLIT_T; ++i) x = s == i ? v.get(i) : x;
    return x;
}

// Start state of chunk c >= 1 of a two-pass chunked scan, for the NPL states n0 .. of row idx
// (16 states per row, B*D = BD rows): pass 1 left each chunk's end state from a zero start
// (chunk 0's from the true initial state, so exact) in ends and its sum of dt in sums;
// h = end(0), then h = exp(A * sum_dt(c')) * h + end(c') for c' = 1 .. c - 1.
template <int NPL>
__device__ __forceinline__ void chunk_start_state(const float *ends, const float *sums,
                                                  int64_t BD, int64_t idx, int n0, int chunk,
                                                  const float (&a2)[NPL], float (&h)[NPL]) {
#pragma unroll
    for (int k = 0; k < NPL; ++k) h[k] = ends[idx * 16 + n0 + k];
    for (int c = 1; c < chunk; ++c) {
        const float sdt = sums[c * BD + idx];
        const float *e = ends + (c * BD + idx) * 16 + n0;
#pragma unroll
        for (int k = 0; k < NPL; ++k) h[k] = fmaf(ex2_ftz(sdt * a2[k]), h[k], e[k]);
    }
}

#endif
