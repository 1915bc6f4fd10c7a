/*
 * samba_cuda_bwd.h - C interface of the CUDA backward kernels of attention, RMSNorm, SwiGLU
 * and rotary (attention_bwd.cu, attention_bwd_mma.cu, attention_fwd_lse.cu, norm_bwd.cu,
 * swiglu_bwd.cu, rotary.cu). Conventions as in samba_cuda.h: launchers return a
 * samba_status (message in samba_cuda_last_error()), arrays are device pointers with a
 * dtype code each (float32 / float16 / bfloat16 read and written; float32 arithmetic and
 * accumulation), streams are cudaStream_t passed as void*. Where a launcher needs scratch
 * memory it takes it stream-ordered from the device's pool (samba_cu_malloc / samba_cu_free
 * on the same stream), as noted.
 */
#ifndef SAMBA_CUDA_BWD_H
#define SAMBA_CUDA_BWD_H
#include "samba_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------ attention_fwd_lse.cu, attention_bwd*.cu */
/*
 * Attention with a two-sided window, GQA and softcap (flash-attn masking; samba.h
 * samba_attn_fwd_lse / samba_attn_bwd semantics). Query i sits at key position
 * p = i + Lk - Lq and sees keys j with p - left <= j <= p + right (window_left /
 * window_right, -1 = unbounded); any Lq, Lk >= 0. Scores s = scale q.k, then
 * softcap * tanh(s / softcap) when softcap > 0, then (ALiBi, alibi_slopes set)
 * s - slope |p - j| with slope = alibi_slopes[b * alibi_batch_stride + h] (a float32 device
 * array; stride 0 = the same slopes for every batch row). A query that sees no key: out = 0,
 * lse = -inf, zero gradients.
 *
 * q, out, dout: (B, Lq, H, hd); k, v: (B, Lk, Hkv, hd); each with element strides
 * (*_stride[0..2] for batch, position, head; the last dim contiguous). lse: (B, H, Lq)
 * float32 contiguous. dq (B, Lq, H, hd), dk, dv (B, Lk, Hkv, hd): C-contiguous outputs of
 * any float dtype. headdim 1..256.
 *
 * samba_cu_attn_fwd_lse writes out (C-contiguous, any float dtype) and lse; dout / dq / dk /
 * dv are not used. bfloat16 / float16 inputs with hd a multiple of 8 and 16-byte aligned
 * rows run the tensor-core prefill of attention_mma.cu (general-mask instantiation).
 * samba_cu_attn_bwd reads q, k, v, out, dout, lse and writes dq, dk, dv; scratch: float32
 * Delta (B, H, Lq) and dq accumulator (B, Lq, H, hd), plus float32 dk / dv accumulators
 * (B, Lk, Hkv, hd) when the query heads of a group are split over blocks (tensor-core
 * path), taken from the pool and freed on the stream. bfloat16 / float16 with hd a
 * multiple of 8 up to 256 and aligned rows: tensor cores (attention_bwd_wgmma.cu on Hopper
 * up to hd 128 without ALiBi, else attention_bwd_mma.cu), dq and
 * (with the group split) dk / dv summed with float32 atomics, so their last bits depend on
 * the order of the additions. Otherwise (float32 in particular): exact float32 arithmetic
 * on the CUDA cores, two deterministic passes (query rows, then key rows).
 *
 * deterministic (backward only; 0 = off, the fast default, as flash-attn's flag): the
 * tensor-core path gives bit-identical dq / dk / dv on every call with the same inputs and
 * device: no group split (dk / dv written directly), and dq summed into S float32 copies
 * (B, Lq, H, hd) of its accumulator, each owned by one block that adds its key tiles in a
 * fixed order, then added up in copy order (S at most the number of key tiles and
 * max(1, 512 MiB / one copy); attention_bwd_mma.cu). Costs that scratch and some speed. The
 * CUDA-core path is deterministic either way.
 */
typedef struct samba_cu_attn_ext_args {
    int64_t batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim;
    int64_t window_left, window_right;
    float softmax_scale, softcap;
    samba_cu_ref q, k, v, out, dout;
    int64_t q_stride[3], k_stride[3], v_stride[3], o_stride[3], do_stride[3];
    float *lse;
    samba_cu_ref dq, dk, dv;
    int deterministic; /* samba_cu_attn_bwd: 1 = bit-reproducible gradients (see above) */
    const float *alibi_slopes;  /* NULL: no ALiBi; else device float32, finite (see above) */
    int64_t alibi_batch_stride; /* >= 0 */
} samba_cu_attn_ext_args;
samba_status samba_cu_attn_fwd_lse(const samba_cu_attn_ext_args *a, void *stream);
samba_status samba_cu_attn_bwd(const samba_cu_attn_ext_args *a, void *stream);

/* ------------------------------------------------ norm_bwd.cu, swiglu_bwd.cu, rotary.cu ---- */
/*
 * RMSNorm backward (samba.h samba_rmsnorm_bwd semantics): x, dy (rows, n) with row strides
 * ldx / ldy; residual, dresidual_out (rows, n, row strides ldr / ldro) or absent; weight (n).
 * With a residual the normalised sum s = x + residual is rounded to res_dtype first (the
 * dtype of the forward's residual_out), as the forward does. Writes dx (rows, n) contiguous
 * and dweight (n) (reduced over rows in a fixed order: per-block float32 partial sums in a
 * pool scratch of min(rows, 4 x SMs) x n floats, then summed block by block).
 */
samba_status samba_cu_rmsnorm_bwd(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx,
                                  samba_cu_ref residual, int64_t ldr, int res_dtype,
                                  samba_cu_ref weight, float eps, samba_cu_ref dy, int64_t ldy,
                                  samba_cu_ref dresidual_out, int64_t ldro, samba_cu_ref dx,
                                  samba_cu_ref dweight, void *stream);
/* SwiGLU backward: gate, up, dy (rows, cols) with row strides; dgate, dup (rows, cols)
 * contiguous. dgate = dy up sigmoid(g) (1 + g (1 - sigmoid(g))), dup = dy silu(g). */
samba_status samba_cu_swiglu_bwd(int64_t rows, int64_t cols, samba_cu_ref gate, int64_t ld_gate,
                                 samba_cu_ref up, int64_t ld_up, samba_cu_ref dy, int64_t ld_dy,
                                 samba_cu_ref dgate, samba_cu_ref dup, void *stream);
/* Rotary backward: dx = dy rotated by the negative angles (samba_cu_rotary's arguments,
 * dy in place of x; angles in float64). dx may alias dy. */
samba_status samba_cu_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                                 samba_cu_ref dy, const int64_t *dy_s, samba_cu_ref positions,
                                 int pos_batched, int64_t offset, double base, samba_cu_ref dx,
                                 const int64_t *dx_s, void *stream);

#ifdef __cplusplus
}
#endif
#endif
