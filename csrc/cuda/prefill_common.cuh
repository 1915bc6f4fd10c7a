// prefill_common.cuh - pieces shared by the tensor-core prefill kernels (attention_mma.cu v1,
// attention_mma_v2.cu v2 / v3, attention_wgmma.cu v4): packing the probabilities into the A
// fragment of the P V product, the epilogue that normalises and stores a warp's rows, and
// the launcher (grid heads x query tiles x batch, shared-memory opt-in).
//
// Fragment layout (mma.sync m16n8k16, and the wgmma accumulator per warp): a 16-row tile of
// N columns is N / 8 column tiles of 4 floats; lane (g = lane / 4, tq = lane % 4) holds rows
// g and g + 8 (r = 0, 1), columns 8 i + 2 tq and + 1 in x[i][2 r], x[i][2 r + 1].
#ifndef SAMBA_PREFILL_COMMON_CUH
#define SAMBA_PREFILL_COMMON_CUH

#include "attention_impl.cuh"
#include "mma_ptx.cuh"

namespace samba_prefill {
using namespace samba_ptx;

// The A fragment (16 rows x 16 keys) of P V from the two 8-key column tiles s0, s1 of P,
// rounded to T.
template <typename T>
__device__ __forceinline__ void pack_p(uint32_t (&a)[4], const float (&s0)[4], const float (&s1)[4]) {
    a[0] = Mma<T>::pack(s0[0], s0[1]);
    a[1] = Mma<T>::pack(s0[2], s0[3]);
    a[2] = Mma<T>::pack(s1[0], s1[1]);
    a[3] = Mma<T>::pack(s1[2], s1[3]);
}

// A row's softmax sum over the 4 lanes that hold it, and the factor that normalises the
// output: 1 / l, 0 for a row without keys, NaN kept.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}
__device__ __forceinline__ float row_inv(float l) {
    return l > 0.0f ? 1.0f / l : (l == 0.0f ? 0.0f : l);
}

// Row r (0: g, 1: g + 8) of the 16-row output tile o, times inv, into orow (hd columns of T;
// columns at or past hd are padding and not stored).
template <typename T, int NT>
__device__ __forceinline__ void store_o_row(T *orow, const float (&o)[NT][4], int r, float inv,
                                            int hd, int tq) {
#pragma unroll
    for (int i = 0; i < NT; ++i) {
        const int col = i * 8 + 2 * tq;
        if (col < hd) {
            const uint32_t v = Mma<T>::pack(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
            *reinterpret_cast<uint32_t *>(orow + col) = v;
        }
    }
}

// Grid (heads, ceil(Lq / bq), batch) of `threads` threads with `smem` bytes of dynamic shared
// memory; `what` names the call in errors.
template <typename... Extra>
samba_status launch_prefill(void (*kernel)(samba_cu_attn_args, int, Extra...), int bq,
                            int threads, size_t smem, const char *what,
                            const samba_cu_attn_args *a, cudaStream_t st, Extra... extra) {
    const int64_t n_qtiles = cdiv(a->seqlen_q, bq);
    if (n_qtiles > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "swa_attention: seqlen_q above %lld on the tensor-core path",
                                 (long long)65535 * bq);
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return samba_cu_fail("swa_attention (shared memory opt-in)", e);
    dim3 grid((unsigned)a->nheads, (unsigned)n_qtiles, (unsigned)a->batch);
    kernel<<<grid, threads, smem, st>>>(*a, (int)n_qtiles, extra...);
    return samba_cu_check_launch(what, st);
}

}  // namespace samba_prefill

#endif
