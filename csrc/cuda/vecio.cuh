// vecio.cuh - E consecutive elements of a float array of runtime dtype (float32 / float16 /
// bfloat16) loaded as float32 and stored from float32 with the widest aligned accesses:
// E * itemsize bytes in one access (two 16-byte accesses for 8 float32). Used by the
// element-wise kernels (norm.cu, swiglu.cu, rotary.cu) so that one kernel serves every dtype
// combination; the dtype branch is uniform over a launch.
//
// Requirement (checked on the host by vec_ok): the element index i is a multiple of E and the
// array's base address a multiple of vec_align(E, dtype) bytes.
#pragma once
#include "cu_common.cuh"

// bfloat16 / float16 bits <-> float32 (round to nearest even, as __float2bfloat16_rn /
// __float2half_rn).
__device__ __forceinline__ float h16_to_f(unsigned bits, int dt) {
    return dt == SAMBA_CU_BF16 ? __uint_as_float(bits << 16)
                               : __half2float(__ushort_as_half((unsigned short)bits));
}
__device__ __forceinline__ unsigned f_to_h16(float v, int dt) {
    return dt == SAMBA_CU_BF16 ? (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v))
                               : (unsigned)__half_as_ushort(__float2half_rn(v));
}

// Two 16-bit elements per 32-bit word, element 2k in the low half (little-endian).
template <int W>
__device__ __forceinline__ void pack_words(const float *v, int dt, unsigned (&w)[W]) {
#pragma unroll
    for (int k = 0; k < W; ++k) w[k] = f_to_h16(v[2 * k], dt) | (f_to_h16(v[2 * k + 1], dt) << 16);
}

// The raw bits of E elements (E words: room for E float32; 16-bit dtypes use the first
// E / 2 words, or the low half of word 0 for E = 1). Loading raw and converting later lets a
// kernel issue all its loads before the first one is waited for, whatever the dtypes.
template <int E> struct RawV {
    static_assert(E == 1 || E == 2 || E == 4 || E == 8, "E must be 1, 2, 4 or 8");
    unsigned w[E];
};

template <int E>
__device__ __forceinline__ void ldraw(const void *p, int dt, int64_t i, RawV<E> &r) {
    if (dt == SAMBA_CU_F32) {
        const unsigned *q = (const unsigned *)p + i;
        if constexpr (E >= 4) {
#pragma unroll
            for (int j = 0; j < E / 4; ++j) {
                const uint4 v = ((const uint4 *)q)[j];
                r.w[4 * j] = v.x, r.w[4 * j + 1] = v.y, r.w[4 * j + 2] = v.z, r.w[4 * j + 3] = v.w;
            }
        } else if constexpr (E == 2) {
            const uint2 v = *(const uint2 *)q;
            r.w[0] = v.x, r.w[1] = v.y;
        } else {
            r.w[0] = q[0];
        }
    } else {
        const unsigned short *q = (const unsigned short *)p + i;
        if constexpr (E == 8) {
            const uint4 v = *(const uint4 *)q;
            r.w[0] = v.x, r.w[1] = v.y, r.w[2] = v.z, r.w[3] = v.w;
        } else if constexpr (E == 4) {
            const uint2 v = *(const uint2 *)q;
            r.w[0] = v.x, r.w[1] = v.y;
        } else if constexpr (E == 2) {
            r.w[0] = *(const unsigned *)q;
        } else {
            r.w[0] = q[0];
        }
    }
}

template <int E>
__device__ __forceinline__ void cvt(const RawV<E> &r, int dt, float (&o)[E]) {
    if (dt == SAMBA_CU_F32) {
#pragma unroll
        for (int k = 0; k < E; ++k) o[k] = __uint_as_float(r.w[k]);
    } else if constexpr (E == 1) {
        o[0] = h16_to_f(r.w[0] & 0xffffu, dt);
    } else {
#pragma unroll
        for (int k = 0; k < E / 2; ++k) {
            o[2 * k] = h16_to_f(r.w[k] & 0xffffu, dt);
            o[2 * k + 1] = h16_to_f(r.w[k] >> 16, dt);
        }
    }
}

template <int E>
__device__ __forceinline__ void ldraw(samba_cu_ref a, int64_t i, RawV<E> &r) {
    ldraw<E>(a.ptr, a.dtype, i, r);
}

template <int E>
__device__ __forceinline__ void ldv(const void *p, int dt, int64_t i, float (&o)[E]) {
    RawV<E> r;
    ldraw<E>(p, dt, i, r);
    cvt<E>(r, dt, o);
}

template <int E>
__device__ __forceinline__ void stv(void *p, int dt, int64_t i, const float (&v)[E]) {
    if (dt == SAMBA_CU_F32) {
        float *q = (float *)p + i;
        if constexpr (E >= 4) {
#pragma unroll
            for (int j = 0; j < E / 4; ++j)
                ((float4 *)q)[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
        } else if constexpr (E == 2) {
            *(float2 *)q = make_float2(v[0], v[1]);
        } else {
            q[0] = v[0];
        }
    } else {
        unsigned short *q = (unsigned short *)p + i;
        if constexpr (E == 8) {
            unsigned w[4];
            pack_words<4>(v, dt, w);
            *(uint4 *)q = make_uint4(w[0], w[1], w[2], w[3]);
        } else if constexpr (E == 4) {
            unsigned w[2];
            pack_words<2>(v, dt, w);
            *(uint2 *)q = make_uint2(w[0], w[1]);
        } else if constexpr (E == 2) {
            unsigned w[1];
            pack_words<1>(v, dt, w);
            *(unsigned *)q = w[0];
        } else {
            q[0] = (unsigned short)f_to_h16(v[0], dt);
        }
    }
}

template <int E> __device__ __forceinline__ void ldv(samba_cu_ref r, int64_t i, float (&o)[E]) {
    ldv<E>(r.ptr, r.dtype, i, o);
}
template <int E>
__device__ __forceinline__ void stv(samba_cu_ref r, int64_t i, const float (&v)[E]) {
    stv<E>(r.ptr, r.dtype, i, v);
}

// Host side: the alignment (bytes) one access of E elements of dtype dt needs.
static inline int64_t vec_align(int E, int dt) {
    const int64_t b = (int64_t)E * (dt == SAMBA_CU_F32 ? 4 : 2);
    return b < 16 ? b : 16;
}
static inline int vec_float_dtype(int dt) {
    return dt == SAMBA_CU_F32 || dt == SAMBA_CU_F16 || dt == SAMBA_CU_BF16;
}
// Array r (absent: fine) can be accessed E elements at a time at element offsets that are
// multiples of E plus multiples of the row stride ld (elements).
static inline int vec_ok(int E, samba_cu_ref r, int64_t ld) {
    if (!r.ptr) return 1;
    if (!vec_float_dtype(r.dtype)) return 0;
    const int64_t a = vec_align(E, r.dtype), it = r.dtype == SAMBA_CU_F32 ? 4 : 2;
    return ((uintptr_t)r.ptr % (uintptr_t)a) == 0 && ((ld * it) % a) == 0;
}
