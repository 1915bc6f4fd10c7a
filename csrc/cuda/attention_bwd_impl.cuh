// attention_bwd_impl.cuh - internal interface between the attention backward's driver
// (attention_bwd.cu: checks, preprocessing, the CUDA-core passes, dispatch), its tensor-core
// kernel (attention_bwd_mma.cu) and the forward with log-sum-exp (attention_fwd_lse.cu).
#ifndef SAMBA_ATTENTION_BWD_IMPL_CUH
#define SAMBA_ATTENTION_BWD_IMPL_CUH

#include "attention_impl.cuh"
#include "samba_cuda_bwd.h"

#define ABW_LOG2E 1.4426950408889634f

// Size and scalar checks of samba_cu_attn_fwd_lse / samba_cu_attn_bwd (message names `what`).
samba_status attn_ext_check(const char *what, const samba_cu_attn_ext_args *a);
// The tensor-core prefill's view of the arguments (q, k, v, out, strides; no window).
samba_cu_attn_args attn_ext_as_fwd(const samba_cu_attn_ext_args *a);
// The exact CUDA-core forward (attention_fwd_lse.cu): any dtype, float32 arithmetic, the
// general mask, lse written when a->lse is set; arguments checked by the caller; `what` names
// the call in errors.
samba_status attn_fwd_cuda_core(const samba_cu_attn_ext_args *a, const char *what,
                                cudaStream_t st);

// Scratch of one backward call (float32, from the pool).
struct attn_bwd_ws {
    float *delta;           // (B, H, Lq): dout . out per row
    float *lse2;            // (B, H, Lq): lse * log2(e); +inf for a row without keys
    float *dq_acc;          // (B, Lq, H, hd): sum_j dS_ij k_j (tensor-core path), zeroed
    float *dk_acc, *dv_acc; // (B, Lk, Hkv, hd), zeroed, when the group is split; else NULL
};

// Tensor-core backward: 1 when it handles these arguments (q, k, v, out, dout all bfloat16 or
// all float16, headdim a multiple of 8 up to 256, 16-byte aligned rows, its tiles fit the
// device's shared memory).
int attn_bwd_mma_applicable(const samba_cu_attn_ext_args *a);
// Number of blocks that share the query heads of one kv head (a divisor of H / Hkv; 1 = one
// block sums all of them and writes dk, dv directly). Enough blocks for the device.
int attn_bwd_mma_group_split(const samba_cu_attn_ext_args *a);
// Main kernel: dq_acc (+)= dS K; dk, dv written (split 1) or added to dk_acc / dv_acc (dk
// already scaled by softmax_scale).
samba_status attn_bwd_mma(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                          cudaStream_t stream);

#endif
