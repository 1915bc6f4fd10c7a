// swiglu.cu - SwiGLU, silu(gate) * up (the CUDA side of csrc/swiglu.c).
#include "pack16.cuh"

__global__ void swiglu_kernel(int64_t rows, int64_t cols, samba_cu_ref g, int64_t ldg,
                              samba_cu_ref u, int64_t ldu, samba_cu_ref y, int64_t ldy) {
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        const float gv = ldf(g, r * ldg + c);
        stf(y, r * ldy + c, silu_f(gv) * ldf(u, r * ldu + c));
    }
}

// Vectorised SwiGLU: one 16-byte vector of gate, up and y per thread and iteration.
template <typename T>
__global__ void swiglu_vec_kernel(int64_t rows, int64_t cols, samba_cu_ref g, int64_t ldg,
                                  samba_cu_ref u, int64_t ldu, samba_cu_ref y, int64_t ldy) {
    constexpr int V = Pack16<T>::N;
    const int64_t vpr = cols / V, n = rows * vpr;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / vpr, c = (i % vpr) * V;
        Pack16<T> a, b, o;
        a.load(g.ptr, r * ldg + c);
        b.load(u.ptr, r * ldu + c);
#pragma unroll
        for (int k = 0; k < V; ++k) o.set(k, silu_f(a.get(k)) * b.get(k));
        o.store(y.ptr, r * ldy + c);
    }
}

extern "C" samba_status samba_cu_swiglu(int64_t rows, int64_t cols, samba_cu_ref gate,
                                        int64_t ld_gate, samba_cu_ref up, int64_t ld_up,
                                        samba_cu_ref y, int64_t ld_y, void *stream) {
    const int64_t n = rows * cols;
    if (n == 0) return SAMBA_OK;
    const int dt = gate.dtype;
    const int64_t it = item_size(dt), V = 16 / it;
    cudaStream_t st = (cudaStream_t)stream;
    if (up.dtype == dt && y.dtype == dt && cols % V == 0 && (ld_gate * it) % 16 == 0 &&
        (ld_up * it) % 16 == 0 && (ld_y * it) % 16 == 0 && is_aligned16(gate.ptr) &&
        is_aligned16(up.ptr) && is_aligned16(y.ptr)) {
        const unsigned grid = grid_1d(n / V, 256);
        if (dt == SAMBA_CU_BF16)
            swiglu_vec_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        else if (dt == SAMBA_CU_F16)
            swiglu_vec_kernel<__half><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        else
            swiglu_vec_kernel<float><<<grid, 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
        return samba_cu_check_launch("swiglu", stream);
    }
    swiglu_kernel<<<grid_1d(n, 256), 256, 0, st>>>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y);
    return samba_cu_check_launch("swiglu", stream);
}
