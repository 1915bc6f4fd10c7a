// attention_impl.cuh - internal interface between the attention launchers in attention.cu
// (argument checks, float32 exact path, dispatch) and the tensor-core prefill
// (attention_mma.cu, attention_mma_v2.cu) and split-KV decode (attention_decode.cu,
// attention_decode_v2.cu) implementations.
#ifndef SAMBA_ATTENTION_IMPL_CUH
#define SAMBA_ATTENTION_IMPL_CUH

#include "cu_common.cuh"

// 1 when the current device runs the sm_80+ machine code of the tensor-core kernels (the
// build may also hold sm_75 code, where they compile to a trap); cached per device.
int attn_tensor_cores_ok(void);
// Largest dynamic shared memory a block of the current device may opt in to (bytes; 0 when
// the query fails), cached per device. The tensor-core kernels are used only where their
// tiles fit (the H100/H200 and A100 allow 227/163 KB, sm_86/sm_89 cards 99 KB).
size_t attn_smem_optin(void);

// 1 when the tensor-core prefill handles these arguments: q, k, v and out all bfloat16 or all
// float16, headdim a multiple of 8 up to 256, 16-byte aligned pointers and strides that are
// multiples of 8 elements (so every row starts on a 16-byte boundary).
int attn_mma_applicable(const samba_cu_attn_args *a);
samba_status attn_mma_fwd(const samba_cu_attn_args *a, cudaStream_t stream);

// The general masking of samba_cu_attn_fwd_lse for the tensor-core prefill (a->window is
// ignored): query i at key position p = i + Lk - Lq sees keys p - left .. p + right (-1 =
// unbounded), scores softcap * tanh(s / softcap) when softcap > 0, then (alibi not NULL)
// s - alibi[b * alibi_bstride + h] |p - j|, and lse (B, H, Lq) float32 (natural log, -inf for a
// row without keys) is written when not NULL.
struct attn_gen {
    int64_t left, right;
    float softcap;
    float *lse;
    const float *alibi;     // device float32 ALiBi slopes or NULL
    int64_t alibi_bstride;  // elements between the slopes of two batch rows (0: shared)
};
samba_status attn_mma_fwd_gen(const samba_cu_attn_args *a, const attn_gen *g, cudaStream_t stream);

// 1 when the split-KV decode handles these arguments (same dtype and alignment rules).
int attn_decode_split_applicable(int64_t headdim, samba_cu_ref q, samba_cu_ref k_cache,
                                 samba_cu_ref v_cache, samba_cu_ref out);
samba_status attn_decode_split(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                               int64_t capacity, samba_cu_ref q, samba_cu_ref k_cache,
                               samba_cu_ref v_cache, samba_cu_ref pos, samba_cu_ref n_valid,
                               float softmax_scale, samba_cu_ref out, cudaStream_t stream);

// Variants 2 and 3 of the prefill (attention_mma_v2.cu): the same rules plus a positive,
// finite softmax_scale (the scale is folded into the exponent), seqlen_k < 2^30 and the
// variant's tiles fitting the shared memory.
int attn_mma_v2_applicable(const samba_cu_attn_args *a, int variant);
samba_status attn_mma_v2_fwd(const samba_cu_attn_args *a, int variant, cudaStream_t stream);

// Variant 4 of the prefill (attention_wgmma.cu, Hopper wgmma, sm_90a code only).
// attn_wgmma_device_ok(): 1 when this build holds sm_90a code for it (SAMBA_EXT_CUDA_ARCHS
// with 90) and the current device has compute capability 9.0; cached per device.
// attn_wgmma_applicable(): the rules of v2 / v3 (dtype, alignment, positive finite scale,
// seqlen_k < 2^30) for head dims up to 128, and its tiles fitting the shared memory.
// attn_wgmma_fwd(): with lse not NULL it also writes the log-sum-exp per row, (B, H, Lq)
// float32 as attn_gen's (the training forward of causal windows, attention_fwd_lse.cu).
// attn_prefill_picks_wgmma(): 1 when swa_attention would run v4 at this head dim (the
// prefill's variant setting, attention.cu, and attn_wgmma_device_ok()).
int attn_wgmma_device_ok(void);
int attn_wgmma_applicable(const samba_cu_attn_args *a);
samba_status attn_wgmma_fwd(const samba_cu_attn_args *a, cudaStream_t stream, float *lse);
int attn_prefill_picks_wgmma(int64_t headdim);

// Variant 2 of the split-KV decode (attention_decode_v2.cu): one launch, a stream-K division
// of the key tiles over one wave of blocks, the merge folded in. Same applicability rules
// (its tiles must fit the shared memory). *taken = 0 (and SAMBA_OK) when it declined: under
// stream capture without a large enough workspace for the stream; then run the first variant.
int attn_decode_v2_applicable(int64_t headdim, samba_cu_ref q, samba_cu_ref k_cache,
                              samba_cu_ref v_cache, samba_cu_ref out);
samba_status attn_decode_v2(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                            int64_t capacity, samba_cu_ref q, samba_cu_ref k_cache,
                            samba_cu_ref v_cache, samba_cu_ref pos, samba_cu_ref n_valid,
                            float softmax_scale, samba_cu_ref out, cudaStream_t stream,
                            int *taken);

// Shared by both: 2^x on the special-function unit (relative error ~2^-22; 2^-inf = +0).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static inline int is_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

#endif
