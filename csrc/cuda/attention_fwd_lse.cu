// attention_fwd_lse.cu - the attention forward that the backward needs: two-sided window,
// any Lq / Lk, softcap, ALiBi, GQA, and the log-sum-exp per row (samba_cu_attn_fwd_lse).
//
// bfloat16 / float16 with aligned rows run the tensor-core prefill of attention_mma.cu in its
// general-mask instantiation (attn_mma_fwd_gen), except causal windows without softcap or ALiBi
// where swa_attention runs Hopper's wgmma kernel (prefill v4, attention_wgmma.cu): those run
// that kernel, which writes the lse as well (causal_window_on_wgmma). Everything else -
// float32 in particular, which keeps exact float32 arithmetic - runs the CUDA-core kernel below
// (also swa_attention's, through attn_fwd_cuda_core): grid (ceil(Lq/16), H, B), 4 warps of 4
// queries; key tiles of 32 keys converted to float32 in shared memory (rows padded to an odd
// stride); lane j scores key j of the tile, online softmax in base 2, lane c accumulates head
// dims c, c+32, ...
#include "attention_bwd_impl.cuh"

#include <string.h>

#define FL_BQ 16
#define FL_BK 32
#define FL_WARPS 4
#define FL_QPW (FL_BQ / FL_WARPS)
#define FL_LOG2E ABW_LOG2E
#define FL_LN2 0.6931471805599453f

// Visible key range [*lo, *hi] (inclusive; empty when *hi < *lo) of query rows q0 .. q1.
__device__ __forceinline__ void fl_key_range(const samba_cu_attn_ext_args &p, int64_t q0,
                                             int64_t q1, int64_t *lo, int64_t *hi) {
    const int64_t off = p.seqlen_k - p.seqlen_q;
    int64_t a = p.window_left < 0 ? 0 : q0 + off - p.window_left;
    int64_t e = p.window_right < 0 ? p.seqlen_k - 1 : q1 + off + p.window_right;
    *lo = a < 0 ? 0 : a;
    *hi = e > p.seqlen_k - 1 ? p.seqlen_k - 1 : e;
}

template <int DCH>
__global__ void __launch_bounds__(FL_WARPS * 32)
attn_fwd_lse_kernel(samba_cu_attn_ext_args p) {
    extern __shared__ float smem[];
    const int hd = (int)p.headdim;
    const int ks = hd | 1;
    float *sQ = smem;             // [BQ][hd]
    float *sK = sQ + FL_BQ * hd;  // [BK][ks]
    float *sV = sK + FL_BK * ks;  // [BK][ks]
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * FL_BQ;
    const int64_t hkv = h / (p.nheads / p.nheads_kv);
    const int64_t Lq = p.seqlen_q, Lk = p.seqlen_k, off = Lk - Lq;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bool capped = p.softcap > 0.0f;
    // scores in base-2 units: s = q.k * scale * log2 e, or softcap * log2 e * tanh(q.k * scale / cap)
    const float qscale = capped ? p.softmax_scale / p.softcap : p.softmax_scale * FL_LOG2E;
    const float cap2 = p.softcap * FL_LOG2E;
    // ALiBi slope of this (batch, head) in base-2 units (0 without ALiBi)
    const float slope2 =
        p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] * FL_LOG2E : 0.0f;

    for (int e = tid; e < FL_BQ * hd; e += blockDim.x) {
        const int qi = e / hd, c = e % hd;
        const int64_t q = q0 + qi;
        sQ[e] = q < Lq ? ldf(p.q, b * p.q_stride[0] + q * p.q_stride[1] + h * p.q_stride[2] + c) *
                             qscale
                       : 0.0f;
    }
    const int64_t q_last = (q0 + FL_BQ < Lq ? q0 + FL_BQ : Lq) - 1;
    int64_t kmin, kmax;
    fl_key_range(p, q0, q_last, &kmin, &kmax);

    float m[FL_QPW], l[FL_QPW], o[FL_QPW][DCH];
#pragma unroll
    for (int qq = 0; qq < FL_QPW; ++qq) {
        m[qq] = -INFINITY;
        l[qq] = 0.0f;
#pragma unroll
        for (int c = 0; c < DCH; ++c) o[qq][c] = 0.0f;
    }

    for (int64_t kbase = kmin; kbase <= kmax; kbase += FL_BK) {
        __syncthreads();
        ab_load_rows2(sK, sV, ks, p.k, p.k_stride, p.v, p.v_stride, b, hkv, kbase, FL_BK, Lk, hd,
                      1.0f);
        __syncthreads();
#pragma unroll
        for (int qq = 0; qq < FL_QPW; ++qq) {
            const int qi = warp * FL_QPW + qq;
            const int64_t q = q0 + qi;
            if (q >= Lq) continue;  // warp-uniform
            const int64_t qpos = q + off;
            const int64_t key = kbase + lane;
            const bool valid = key < Lk && (p.window_right < 0 || key <= qpos + p.window_right) &&
                               (p.window_left < 0 || key >= qpos - p.window_left);
            float s = -INFINITY;
            if (valid) {
                const float *qr = sQ + qi * hd;
                const float *kr = sK + lane * ks;
                float acc = 0.0f;
                for (int c = 0; c < hd; ++c) acc += qr[c] * kr[c];
                s = (capped ? cap2 * tanhf(acc) : acc) - slope2 * fabsf((float)(qpos - key));
            }
            float mt = warp_max(s);  // fmaxf drops NaN: a NaN score is tracked on its own
            const bool nan_score = __any_sync(0xffffffffu, isnan(s));
            if (mt == -INFINITY && !nan_score) continue;  // warp-uniform: no visible key here
            if (nan_score) mt = NAN;
            const float mnew = isnan(mt) ? mt : fmaxf(m[qq], mt);
            const float corr = exp2f(m[qq] - mnew);
            const float pj = valid ? exp2f(s - mnew) : 0.0f;
            l[qq] = l[qq] * corr + warp_sum(pj);
#pragma unroll
            for (int c = 0; c < DCH; ++c) o[qq][c] *= corr;
            for (int j = 0; j < FL_BK; ++j) {
                const float pjj = __shfl_sync(0xffffffffu, pj, j);
                if (pjj == 0.0f) continue;  // masked key (warp-uniform): its value row may be NaN
                const float *vr = sV + j * ks;
#pragma unroll
                for (int c = 0; c < DCH; ++c) {
                    const int col = lane + 32 * c;
                    if (col < hd) o[qq][c] += pjj * vr[col];
                }
            }
            m[qq] = mnew;
        }
    }
#pragma unroll
    for (int qq = 0; qq < FL_QPW; ++qq) {
        const int64_t q = q0 + warp * FL_QPW + qq;
        if (q >= Lq) continue;
        const float inv = l[qq] > 0.0f ? 1.0f / l[qq] : (l[qq] == 0.0f ? 0.0f : l[qq]);
        const int64_t ob = ((b * Lq + q) * p.nheads + h) * hd;
#pragma unroll
        for (int c = 0; c < DCH; ++c) {
            const int col = lane + 32 * c;
            if (col < hd) stf(p.out, ob + col, o[qq][c] * inv);
        }
        if (lane == 0 && p.lse)
            p.lse[(b * p.nheads + h) * Lq + q] =
                l[qq] > 0.0f ? FL_LN2 * (m[qq] + log2f(l[qq])) : (l[qq] == 0.0f ? -INFINITY : l[qq]);
    }
}

template <int DCH>
static samba_status launch_fwd_lse(const samba_cu_attn_ext_args *a, const char *what,
                                   cudaStream_t stream) {
    const int hd = (int)a->headdim;
    const size_t smem = (size_t)(FL_BQ * hd + 2 * FL_BK * (hd | 1)) * sizeof(float);
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attn_fwd_lse_kernel<DCH>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return samba_cu_fail_msg(SAMBA_ERR_CUDA, "%s (shared memory opt-in): %s", what,
                                     cudaGetErrorString(e));
    }
    dim3 grid((unsigned)cdiv(a->seqlen_q, FL_BQ), (unsigned)a->nheads, (unsigned)a->batch);
    attn_fwd_lse_kernel<DCH><<<grid, FL_WARPS * 32, smem, stream>>>(*a);
    return samba_cu_check_launch(what, stream);
}

// Size and argument checks shared with the backward (attention_bwd.cu).
samba_status attn_ext_check(const char *what, const samba_cu_attn_ext_args *a) {
    if (a->nheads_kv < 1 || a->nheads % a->nheads_kv != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: nheads %lld not divisible by nheads_kv %lld",
                                 what, (long long)a->nheads, (long long)a->nheads_kv);
    if (a->headdim < 1 || a->headdim > 256)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "%s: headdim must be in 1..256 on CUDA, got %lld", what,
                                 (long long)a->headdim);
    if (a->nheads > 65535 || a->batch > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "%s: more than 65535 heads or batches",
                                 what);
    if (a->batch < 0 || a->seqlen_q < 0 || a->seqlen_k < 0 || a->seqlen_q > (1LL << 30) ||
        a->seqlen_k > (1LL << 30))
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "%s: sequence lengths must be in 0..2^30",
                                 what);
    if (!(a->softcap >= 0.0f) || isinf(a->softcap) || !isfinite(a->softmax_scale))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: softcap must be finite and >= 0, "
                                 "softmax_scale finite", what);
    if (a->alibi_slopes != NULL && a->alibi_batch_stride < 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: alibi_batch_stride must be >= 0", what);
    return SAMBA_OK;
}

// The tensor-core prefill's view of the arguments (window unused: the general mask is in gx).
samba_cu_attn_args attn_ext_as_fwd(const samba_cu_attn_ext_args *a) {
    samba_cu_attn_args f;
    memset(&f, 0, sizeof f);
    f.batch = a->batch;
    f.seqlen_q = a->seqlen_q;
    f.seqlen_k = a->seqlen_k;
    f.nheads = a->nheads;
    f.nheads_kv = a->nheads_kv;
    f.headdim = a->headdim;
    f.softmax_scale = a->softmax_scale;
    f.q = a->q;
    f.k = a->k;
    f.v = a->v;
    f.out = a->out;
    for (int i = 0; i < 3; ++i) {
        f.q_stride[i] = a->q_stride[i];
        f.k_stride[i] = a->k_stride[i];
        f.v_stride[i] = a->v_stride[i];
    }
    return f;
}

// The CUDA-core kernel for any dtype and layout (samba_cu_attn_fwd's fallback too).
samba_status attn_fwd_cuda_core(const samba_cu_attn_ext_args *a, const char *what,
                                cudaStream_t st) {
    if (a->headdim <= 64) return launch_fwd_lse<2>(a, what, st);
    if (a->headdim <= 128) return launch_fwd_lse<4>(a, what, st);
    return launch_fwd_lse<8>(a, what, st);
}

// A causal window (right 0, any left) without softcap or ALiBi, Lq <= Lk, where swa_attention
// runs its Hopper kernel (prefill v4) at this head dim: the same kernel, which then also
// writes the lse, instead of the general kernel; sets f's window (keys p - left .. p) when so.
static bool causal_window_on_wgmma(const samba_cu_attn_ext_args *a, samba_cu_attn_args *f) {
    if (a->window_right != 0 || a->softcap > 0.0f || a->alibi_slopes != NULL ||
        a->seqlen_q > a->seqlen_k || !attn_prefill_picks_wgmma(a->headdim))
        return false;
    f->window = (a->window_left < 0 || a->window_left >= a->seqlen_k) ? 0 : a->window_left + 1;
    return attn_wgmma_applicable(f) != 0;
}

extern "C" samba_status samba_cu_attn_fwd_lse(const samba_cu_attn_ext_args *a, void *stream) {
    samba_status s = attn_ext_check("attention_fwd", a);
    if (s != SAMBA_OK) return s;
    if (a->batch == 0 || a->seqlen_q == 0 || a->nheads == 0) return SAMBA_OK;
    cudaStream_t st = (cudaStream_t)stream;
    samba_cu_attn_args f = attn_ext_as_fwd(a);
    if (a->seqlen_k > 0 && causal_window_on_wgmma(a, &f)) return attn_wgmma_fwd(&f, st, a->lse);
    if (a->seqlen_k > 0 && attn_mma_applicable(&f)) {
        const attn_gen gx = {a->window_left, a->window_right, a->softcap, a->lse,
                             a->alibi_slopes, a->alibi_batch_stride};
        return attn_mma_fwd_gen(&f, &gx, st);
    }
    return attn_fwd_cuda_core(a, "attention_fwd", st);
}
