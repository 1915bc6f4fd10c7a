// attention_bwd_impl.cuh - internal interface between the attention backward's driver
// (attention_bwd.cu: checks, preprocessing, the CUDA-core passes, dispatch), its tensor-core
// kernel (attention_bwd_mma.cu) and the forward with log-sum-exp (attention_fwd_lse.cu).
#ifndef SAMBA_ATTENTION_BWD_IMPL_CUH
#define SAMBA_ATTENTION_BWD_IMPL_CUH

#include "attention_impl.cuh"
#include "mma_ptx.cuh"
#include "samba_cuda_bwd.h"

#define ABW_LOG2E 1.4426950408889634f

// Rows r0 .. r0 + n - 1 of two (B, L, heads, hd) operands x and y (strides xs / ys; batch b,
// head `head`) into float32 shared rows sx / sy of pitch ld, x times xscale; rows at or past
// `limit` are zero. All threads of the block take part (the CUDA-core kernels' tile loads).
__device__ __forceinline__ void ab_load_rows2(float *sx, float *sy, int ld, samba_cu_ref x,
                                              const int64_t (&xs)[3], samba_cu_ref y,
                                              const int64_t (&ys)[3], int64_t b, int64_t head,
                                              int64_t r0, int n, int64_t limit, int hd,
                                              float xscale) {
    for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
        const int j = e / hd, c = e % hd;
        const int64_t r = r0 + j;
        float xv = 0.0f, yv = 0.0f;
        if (r < limit) {
            xv = ldf(x, b * xs[0] + r * xs[1] + head * xs[2] + c) * xscale;
            yv = ldf(y, b * ys[0] + r * ys[1] + head * ys[2] + c);
        }
        sx[j * ld + c] = xv;
        sy[j * ld + c] = yv;
    }
}

// float32 a (+)= (x, y) at an 8-byte aligned address (one vector atomic on sm_90)
__device__ __forceinline__ void atomic_add2(float *a, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2 *>(a), make_float2(x, y));
#else
    atomicAdd(a, x);
    atomicAdd(a + 1, y);
#endif
}

// The block order of the tensor-core backward grids: one linear index over (key block, head
// part, batch), in one of two orders, picked per call on the host (ab_pick_order). A block's work
// is the number of query tiles that see its key block, times the query heads of its part.
//   AB_KEYS_FASTEST (0): the key blocks fastest, then head parts, then batch (a (key block,
//     head part, batch) grid). Neighbouring blocks share the query tiles of one head part in L2;
//     but each part's light key blocks come before the next part's heavy ones, so where the work
//     per key block varies (windows near L, full causal masking) the grid can end on a tail of
//     heavy blocks.
//   AB_HEAVY_FIRST (1): the key blocks slowest, for every head part and batch at once, from
//     the first key block, or from the last where only the window's left side is bounded: the
//     heaviest first where Lq = Lk and the window is causal (a key sees the queries from its
//     own position on) or bounded on the left only (the mirror image). Elsewhere (two-sided
//     windows; Lq < Lk with a window, whose first key blocks no query sees) it need not be,
//     and the count below decides.
// On an H100 heaviest-first took 8-15% off the wgmma kernel at 4K keys with a 2048 window, full
// causal masking or head dim 128, and was 5% slower at 16K keys with a 2048 window, where the
// blocks are many and evenly loaded (benchmarks/results/gpu_backward_attention.md). ny: head
// parts (kv heads x split x column parts); the launch checks nkb x batch x ny < 2^31.
enum { AB_KEYS_FASTEST = 0, AB_HEAVY_FIRST = 1 };
// Whether AB_HEAVY_FIRST walks the key blocks from the last: only the window's left side bounded.
__host__ __device__ __forceinline__ bool ab_from_last(int64_t left, int64_t right) {
    return right < 0 && left >= 0;
}
struct AbBlock {
    int64_t kb;  // key block
    int64_t b;   // batch
    int y;       // head part, < ny
};
__device__ __forceinline__ AbBlock ab_block_of(int64_t id, int order, int ny, int64_t batch,
                                               int64_t nkb, int64_t left, int64_t right) {
    AbBlock r;
    if (order == AB_KEYS_FASTEST) {
        r.kb = id % nkb;
        id /= nkb;
        r.y = (int)(id % ny);
        r.b = id / ny;
        return r;
    }
    r.y = (int)(id % ny);
    id /= ny;
    r.b = id % batch;
    const int64_t i = id / batch;
    r.kb = ab_from_last(left, right) ? nkb - 1 - i : i;
    return r;
}

// The order of one launch (host): the two orders' ends in a list-scheduling count of the grid's
// blocks on `slots` resident blocks (multiprocessors x blocks per multiprocessor), a block's work
// (query tiles of bm rows that see its bn keys) x hpb + 1; heaviest-first where it ends more than
// 3% sooner, else keys-fastest (also for a grid of one wave or of more than 2^16 blocks, where
// the tail is short). SAMBA_EXT_ATTN_BWD_ORDER=keys / heavy forces one (tests, benchmarks).
// benchmarks/attn_bwd_block_order.py prints the same count for the benchmark's cases.
int ab_pick_order(const samba_cu_attn_ext_args *a, int bn, int bm, int64_t ny, int64_t hpb,
                  int64_t slots);

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
    float *dq_acc;          // (S, B, Lq, H, hd): sum_j dS_ij k_j (tensor-core path), zeroed
    float *dk_acc, *dv_acc; // (B, Lk, Hkv, hd), zeroed, when the group is split; else NULL
    // dq slices (deterministic mode): S = dq_slices copies of dq_acc, dq_slice_stride
    // (= B * Lq * H * hd) elements apart; the tensor-core kernel then runs S blocks along the
    // keys, block x adding the key tiles x, x + S, ... into copy x, and the store sums the
    // copies in order. dq_slices = 0 (and dq_slice_stride = 0): one copy, shared through the
    // atomics by one block per key tile (the default).
    int64_t dq_slices, dq_slice_stride;
};

// The exponent constants of the tensor-core kernels: raw scores times sl are in base-2 units; with
// softcap (capped) a score s becomes cap2 tanh(s cap_in), cap2 = softcap log2 e.
struct ab_exp {
    bool capped;
    float sl, cap_in, cap2;
};
__device__ __forceinline__ ab_exp ab_exp_of(const samba_cu_attn_ext_args &p) {
    const bool capped = p.softcap > 0.0f;
    return {capped, p.softmax_scale * ABW_LOG2E, capped ? p.softmax_scale / p.softcap : 0.0f,
            p.softcap * ABW_LOG2E};
}

// ALiBi slope of head h of batch row b in base-2 units (0 without ALiBi): the bias of a pair
// (query position i, key j) is -slope2 |i - j|, a constant in the score's derivative.
__device__ __forceinline__ float ab_slope2(const samba_cu_attn_ext_args &p, int64_t b, int64_t h) {
    return p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] * ABW_LOG2E : 0.0f;
}

// lse * log2 e and Delta of the BM query rows m0 .. of one (batch, head) - their rows of the
// (B, H, Lq) scratch start at element rb - into the shared rows sl and sd by cp.async (rows at
// or past Lq zero-filled), by the block's THREADS threads (the tensor-core kernels' tile loads).
template <int BM, int THREADS>
__device__ __forceinline__ void ab_load_lse_delta(float *sl, float *sd, const attn_bwd_ws &ws,
                                                  int64_t rb, int64_t m0, int64_t Lq) {
    for (int i = threadIdx.x; i < 2 * BM; i += THREADS) {
        const int r = i % BM;
        const bool ok = m0 + r < Lq;
        const float *src = (i < BM ? ws.lse2 : ws.delta) + (ok ? rb + m0 + r : 0);
        samba_ptx::cp_async4((i < BM ? sl : sd) + r, src, ok);
    }
}

// dk (times softmax_scale: k0v, k1v already are) and dv of two adjacent head dims of one key,
// element offset `at` of the (B, Lk, Hkv, hd) gradients: written to dk / dv, or, when the group
// of query heads is split over blocks (split: ws.dk_acc set), added to the float32 accumulators.
__device__ __forceinline__ void ab_store_dkdv2(const samba_cu_attn_ext_args &p,
                                               const attn_bwd_ws &ws, bool split, int64_t at,
                                               float k0v, float k1v, float v0v, float v1v) {
    if (split) {
        atomic_add2(ws.dk_acc + at, k0v, k1v);
        atomic_add2(ws.dv_acc + at, v0v, v1v);
    } else {
        stf(p.dk, at, k0v);
        stf(p.dk, at + 1, k1v);
        stf(p.dv, at, v0v);
        stf(p.dv, at + 1, v1v);
    }
}

// Tensor-core backward: 1 when it handles these arguments (q, k, v, out, dout all bfloat16 or
// all float16, headdim a multiple of 8 up to 256, 16-byte aligned rows, its tiles fit the
// device's shared memory).
int attn_bwd_mma_applicable(const samba_cu_attn_ext_args *a);
// Number of blocks that share the query heads of one kv head (a divisor of H / Hkv; 1 = one
// block sums all of them and writes dk, dv directly). Enough blocks for the device; always 1
// with a->deterministic. wgmma: for the blocks of attention_bwd_wgmma.cu.
int attn_bwd_mma_group_split(const samba_cu_attn_ext_args *a, int wgmma);
// Deterministic mode: the number S >= 1 of dq slices (attn_bwd_ws) for these arguments.
int64_t attn_bwd_mma_dq_slices(const samba_cu_attn_ext_args *a);
// The wgmma main kernel (attention_bwd_wgmma.cu): SAMBA_EXT_ATTN_BWD_WGMMA (read on every call)
// "0" keeps attention_bwd_mma.cu, "require" makes the call fail where the wgmma kernel does not
// apply, anything else (and unset) runs it where it applies (attn_bwd_wgmma_setting: 0, 2, 1).
// It applies to the arguments of attn_bwd_mma_applicable with head dims up to 128, sequences
// shorter than 2^29 (and query tiles x group size below 2^31), deterministic off and no ALiBi
// (attention_bwd_mma.cu takes those), on an sm_90
// device with the sm_90a build; its blocks hold attn_bwd_wgmma_bn() keys (128, or 64 with
// SAMBA_EXT_ATTN_BWD_WGMMA_WG=1, read on every call). Same scratch and results as attn_bwd_mma
// up to rounding order.
int attn_bwd_wgmma_setting(void);
int attn_bwd_wgmma_bn(void);
int attn_bwd_wgmma_applicable(const samba_cu_attn_ext_args *a);
samba_status attn_bwd_wgmma(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                            cudaStream_t stream);
// Main kernel: dq_acc (+)= dS K (into the slices when ws->dq_slices > 0); dk, dv written
// (split 1) or added to dk_acc / dv_acc (dk already scaled by softmax_scale).
samba_status attn_bwd_mma(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws, int split,
                          cudaStream_t stream);

#endif
