// swiglu_bwd.cu - SwiGLU backward (the CUDA side of csrc/swiglu_bwd.c), element-wise:
//   dgate = dy up sigmoid(g) (1 + g (1 - sigmoid(g))),  dup = dy g sigmoid(g)
// float32 arithmetic; sigmoid from exp(-|g|) (no overflow). A 16-byte vector per thread when
// every array shares one dtype and rows are aligned; element by element otherwise.
#include "pack16.cuh"
#include "samba_cuda_bwd.h"

__device__ __forceinline__ void swiglu_grad(float x, float u, float g, float *dg, float *du) {
    const float e = expf(-fabsf(x));
    const float r = 1.0f / (1.0f + e);
    const float sg = x >= 0.0f ? r : e * r;
    *dg = g * u * sg * (1.0f + x * (1.0f - sg));
    *du = g * x * sg;
}

__global__ void swiglu_bwd_kernel(int64_t rows, int64_t cols, samba_cu_ref gate, int64_t ldg,
                                  samba_cu_ref up, int64_t ldu, samba_cu_ref dy, int64_t ldd,
                                  samba_cu_ref dgate, samba_cu_ref dup) {
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        float dg, du;
        swiglu_grad(ldf(gate, r * ldg + c), ldf(up, r * ldu + c), ldf(dy, r * ldd + c), &dg, &du);
        stf(dgate, i, dg);
        stf(dup, i, du);
    }
}

template <typename T>
__global__ void swiglu_bwd_vec_kernel(int64_t rows, int64_t cols, samba_cu_ref gate, int64_t ldg,
                                      samba_cu_ref up, int64_t ldu, samba_cu_ref dy, int64_t ldd,
                                      samba_cu_ref dgate, samba_cu_ref dup) {
    constexpr int V = Pack16<T>::N;
    const int64_t vpr = cols / V, n = rows * vpr;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / vpr, c = (i % vpr) * V;
        Pack16<T> a, b, g, og, ou;
        a.load(gate.ptr, r * ldg + c);
        b.load(up.ptr, r * ldu + c);
        g.load(dy.ptr, r * ldd + c);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float dg, du;
            swiglu_grad(a.get(k), b.get(k), g.get(k), &dg, &du);
            og.set(k, dg);
            ou.set(k, du);
        }
        og.store(dgate.ptr, r * cols + c);
        ou.store(dup.ptr, r * cols + c);
    }
}

extern "C" samba_status samba_cu_swiglu_bwd(int64_t rows, int64_t cols, samba_cu_ref gate,
                                            int64_t ld_gate, samba_cu_ref up, int64_t ld_up,
                                            samba_cu_ref dy, int64_t ld_dy, samba_cu_ref dgate,
                                            samba_cu_ref dup, void *stream) {
    const int64_t n = rows * cols;
    if (n == 0) return SAMBA_OK;
    const int dt = gate.dtype;
    const int64_t it = item_size(dt), V = 16 / it;
    cudaStream_t st = (cudaStream_t)stream;
    const bool vec = up.dtype == dt && dy.dtype == dt && dgate.dtype == dt && dup.dtype == dt &&
                     cols % V == 0 && (ld_gate * it) % 16 == 0 && (ld_up * it) % 16 == 0 &&
                     (ld_dy * it) % 16 == 0 && is_aligned16(gate.ptr) && is_aligned16(up.ptr) &&
                     is_aligned16(dy.ptr) && is_aligned16(dgate.ptr) && is_aligned16(dup.ptr);
    if (vec) {
        const unsigned grid = grid_1d(n / V, 256);
        if (dt == SAMBA_CU_BF16)
            swiglu_bwd_vec_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, dy, ld_dy, dgate, dup);
        else if (dt == SAMBA_CU_F16)
            swiglu_bwd_vec_kernel<__half><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, dy, ld_dy, dgate, dup);
        else
            swiglu_bwd_vec_kernel<float><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, dy, ld_dy, dgate, dup);
    } else {
        swiglu_bwd_kernel<<<grid_1d(n, 256), 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, dy,
                                                          ld_dy, dgate, dup);
    }
    return samba_cu_check_launch("swiglu_bwd", st);
}
