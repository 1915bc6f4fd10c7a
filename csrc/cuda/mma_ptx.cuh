// mma_ptx.cuh - thin wrappers over the PTX instructions of the tensor-core attention kernels
// (sm_80 and later): cp.async, ldmatrix, movmatrix and mma.sync m16n8k16 for bf16 / fp16.
// When the file is compiled for an older target (the default build also emits sm_75) the
// wrappers compile to a trap: the launchers never start these kernels on such a device
// (attn_tensor_cores_ok() checks which code the runtime picked for the device first).
#ifndef SAMBA_MMA_PTX_CUH
#define SAMBA_MMA_PTX_CUH

#include "cu_common.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define SAMBA_PTX_SM80 1
#else
#define SAMBA_PTX_SM80 0
#endif

namespace samba_ptx {

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// 16-byte global -> shared copy that bypasses L1; when !valid the 16 bytes are zero-filled
// and nothing is read (src is then any valid address).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
#else
    __trap();
#endif
}
// 4-byte global -> shared copy (zero-filled when !valid).
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid) {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(valid ? 4 : 0));
#else
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.commit_group;\n" ::);
#else
    __trap();
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
    __trap();
#endif
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and each lane
// receives in r[i] the pair (row lane/4, cols 2*(lane%4), +1) of matrix i (.trans: of its
// transpose).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
#if SAMBA_PTX_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#else
    __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p) {
#if SAMBA_PTX_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#else
    __trap();
#endif
}

// c (16x8 float32) += a (16x16, row major) * b (16x8, column major).
// Fragments (g = lane / 4, t = lane % 4): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
// a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); c0,c1 (g, 2t..2t+1),
// c2,c3 (g+8, 2t..2t+1).
template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
#if SAMBA_PTX_SM80
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
        __trap();
#endif
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};
template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
#if SAMBA_PTX_SM80
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
        __trap();
#endif
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};

// Transposes an 8x8 b16 matrix held one row pair per lane (lane holds row lane/4, cols
// 2*(lane%4), +1): afterwards the lane holds the same positions of the transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
    uint32_t y = 0;
#if SAMBA_PTX_SM80
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
#else
    __trap();
#endif
    return y;
}

// The same copies and loads addressed by 32-bit shared-memory addresses (smem_addr()), so a
// kernel can keep its tile offsets in 32-bit registers.
__device__ __forceinline__ void cp_async16_s(uint32_t dst, const void *src, bool valid) {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
#else
    __trap();
#endif
}
// cp_async16_s with valid = true known at compile time (no source-size operand)
__device__ __forceinline__ void cp_async16_s_full(uint32_t dst, const void *src) {
#if SAMBA_PTX_SM80
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#else
    __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_s(uint32_t (&r)[4], uint32_t addr) {
#if SAMBA_PTX_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
    __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_trans_s(uint32_t (&r)[4], uint32_t addr) {
#if SAMBA_PTX_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
    __trap();
#endif
}

}  // namespace samba_ptx

#endif
