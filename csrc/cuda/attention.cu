// attention.cu - causal sliding-window attention (prefill) and ring-buffer decode attention:
// argument checks, dispatch, and the exact float32 decode kernel (the exact prefill kernel is
// attention_fwd_lse.cu's).
//
// Dispatch: bfloat16 / float16 inputs with a head dim that is a multiple of 8 (<= 256) and
// 16-byte aligned rows go to the tensor-core prefill (attention_mma.cu) and to the split-KV
// decode (attention_decode.cu). Everything else - float32 inputs in particular, which keep
// exact float32 arithmetic (no TF32), mixed dtypes, odd head dims, unaligned views - runs the
// CUDA-core kernels (the prefill's in attention_fwd_lse.cu, the decode's below).
//
// Prefill on the CUDA cores: the kernel of attention_fwd_lse.cu (launch_fwd below maps the
// window to its mask): grid (ceil(Lq/16), H, B), 4 warps. The block's 16 queries sit in shared
// memory; key/value tiles of 32 keys are converted to float32 into shared memory (rows padded to
// an odd stride: the per-lane key rows hit distinct banks). Only the tiles inside the block's
// window are visited. Each warp owns 4 queries: lane j scores key j of the tile, the warp keeps
// the running max / sum (online softmax in base 2) and each lane accumulates head dims lane,
// lane+32, ...
//
// Variants of the tensor-core kernels (bfloat16 / float16): prefill v1 = attention_mma.cu,
// v2 and v3 = attention_mma_v2.cu (two block shapes), v4 = attention_wgmma.cu (Hopper wgmma,
// sm_90a; auto for head dims 64 and 128 where it can run); decode v1 = attention_decode.cu (split kernel + merge kernel),
// v2 = attention_decode_v2.cu (one launch). SAMBA_EXT_ATTN_PREFILL / SAMBA_EXT_ATTN_DECODE =
// v1 | v2 | v3 | v4 (prefill only) | auto (read once; default auto: the per-head-dim choice in auto_prefill() /
// auto_decode()); samba_cu_attn_variant() overrides them at run time (tests, benchmarks).
// A variant that does not apply to a call (shared memory, scale, capture) falls back to v1;
// v4 runs v2/v3 for head dims above 128, and an explicit v4 on a device without its sm_90a
// code (not compute capability 9.0, or a build without 90) fails with SAMBA_ERR_UNSUPPORTED
// naming the requirement (auto then picks v2/v3 instead).
//
// Decode (attn_decode_kernel): grid (H, B), 4 warps splitting the n_valid cached keys;
// lanes over head dims, 8 keys per step (8 independent warp reductions in flight); the four
// partial softmax states are merged through shared memory at the end.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "attention_bwd_impl.cuh"

#define ATT_WARPS 4
#define LOG2E 1.4426950408889634f

// The causal (window) prefill of any dtype on the CUDA cores: attention_fwd_lse.cu's kernel with
// window_left = window - 1 (unbounded for window <= 0), window_right = 0, no softcap, no lse.
static samba_status launch_fwd(const samba_cu_attn_args *a, cudaStream_t stream) {
    samba_cu_attn_ext_args e;
    memset(&e, 0, sizeof e);
    e.batch = a->batch;
    e.seqlen_q = a->seqlen_q;
    e.seqlen_k = a->seqlen_k;
    e.nheads = a->nheads;
    e.nheads_kv = a->nheads_kv;
    e.headdim = a->headdim;
    e.window_left = a->window > 0 ? a->window - 1 : -1;
    e.window_right = 0;
    e.softmax_scale = a->softmax_scale;
    e.q = a->q;
    e.k = a->k;
    e.v = a->v;
    e.out = a->out;
    for (int i = 0; i < 3; ++i) {
        e.q_stride[i] = a->q_stride[i];
        e.k_stride[i] = a->k_stride[i];
        e.v_stride[i] = a->v_stride[i];
    }
    return attn_fwd_cuda_core(&e, "swa_attention", stream);
}

// ------------------------------------------------------------------ variants -----------
// Which tensor-core variant runs when the setting is "auto", by head dim.
// The defaults follow benchmarks/results/gpu_attention*.md (bf16, 2026-12-05): v4 (wgmma,
// compute capability 9.0 with sm_90a code) was the fastest prefill at head dims 64 and 128
// (H200 and H100), and at 96 (its 128 instantiation with zero-filled columns: 0.353 / 3.103 ms
// against v2's 0.372 / 3.282 at 4K / 32K in one H100 run, gpu_attention_decode.md; v2 and v3
// were within 3% of each other at 96 in an H200 run, gpu_attention_notes.md); head dims
// 104..120 run v4's 128 instantiation as v2 / v3 run their 128 one. Below 96 (other than 64) v4
// is not measured and v2 runs. Without wgmma, v2 below head dim 128 and v3 from 128. Decode v2
// was faster from 16K keys on and within 8% of v1 at 4K.
static int mma_fallback(int64_t hd) {
    return hd >= 128 ? 3 : 2;
}
static int auto_prefill(int64_t hd) {
    if ((hd == 64 || (hd >= 96 && hd <= 128)) && attn_wgmma_device_ok()) return 4;
    return mma_fallback(hd);
}
static int auto_decode(int64_t hd) {
    (void)hd;
    return 2;
}

static std::atomic<int> attn_variant_setting[2] = {{-1}, {-1}};  // -1: not read yet

static int variant_from_env(int which, const char *name) {
    const char *s = getenv(name);
    if (!s || !*s || !strcmp(s, "auto")) return 0;
    if (!strcmp(s, "v1") || !strcmp(s, "1")) return 1;
    if (!strcmp(s, "v2") || !strcmp(s, "2")) return 2;
    if (which == 0 && (!strcmp(s, "v3") || !strcmp(s, "3"))) return 3;
    if (which == 0 && (!strcmp(s, "v4") || !strcmp(s, "4"))) return 4;
    fprintf(stderr, "samba_ext: %s=%s not understood (%s or auto); using auto\n", name, s,
            which == 0 ? "v1, v2, v3, v4" : "v1, v2");
    return 0;
}

extern "C" int samba_cu_attn_variant(int which, int value) {
    if (which < 0 || which > 1 || value < -1 || value > (which == 0 ? 4 : 2)) return -1;
    std::atomic<int> &v = attn_variant_setting[which];
    if (value >= 0) {
        v.store(value);
    } else if (v.load() < 0) {
        v.store(variant_from_env(which, which == 0 ? "SAMBA_EXT_ATTN_PREFILL" : "SAMBA_EXT_ATTN_DECODE"));
    }
    return v.load();
}

// The variant (1, 2 or, for the prefill, 3 or 4) for this call's head dim.
static int attn_variant(int which, int64_t hd) {
    const int v = samba_cu_attn_variant(which, -1);
    if (v > 0) return v;
    return which == 0 ? auto_prefill(hd) : auto_decode(hd);
}

int attn_prefill_picks_wgmma(int64_t headdim) {
    return headdim <= 128 && attn_variant(0, headdim) == 4 && attn_wgmma_device_ok();
}

static samba_status check_heads(const char *what, int64_t nheads, int64_t nheads_kv,
                                 int64_t headdim) {
    if (nheads_kv < 1 || nheads % nheads_kv != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: nheads %lld not divisible by nheads_kv %lld",
                                 what, (long long)nheads, (long long)nheads_kv);
    if (headdim < 1 || headdim > 256)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "%s: headdim must be in 1..256 on CUDA, got %lld", what,
                                 (long long)headdim);
    if (nheads > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "%s: more than 65535 heads", what);
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_attn_fwd(const samba_cu_attn_args *a, void *stream) {
    samba_status s = check_heads("swa_attention", a->nheads, a->nheads_kv, a->headdim);
    if (s != SAMBA_OK) return s;
    if (a->seqlen_k < a->seqlen_q)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "swa_attention: seqlen_k %lld < seqlen_q %lld",
                                 (long long)a->seqlen_k, (long long)a->seqlen_q);
    if (a->batch == 0 || a->seqlen_q == 0 || a->nheads == 0) return SAMBA_OK;
    if (a->batch > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "swa_attention: batch above 65535");
    cudaStream_t st = (cudaStream_t)stream;
    int var = attn_variant(0, a->headdim);
    if (var == 4) {
        if (a->headdim <= 128 && attn_mma_applicable(a)) {
            if (!attn_wgmma_device_ok())
                return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                         "swa_attention: prefill variant v4 (wgmma) needs a compute "
                                         "capability 9.0 GPU and a build with 90 in "
                                         "SAMBA_EXT_CUDA_ARCHS (sm_90a code)");
            if (attn_wgmma_applicable(a)) return attn_wgmma_fwd(a, st, nullptr);
        }
        var = mma_fallback(a->headdim);  // calls v4 cannot take (and those v2/v3 cannot, v1)
    }
    if (var >= 2 && attn_mma_v2_applicable(a, var)) return attn_mma_v2_fwd(a, var, st);
    if (attn_mma_applicable(a)) return attn_mma_fwd(a, st);
    return launch_fwd(a, st);
}

// ------------------------------------------------------------------ decode -------------
#define DEC_KEYS 8

template <int DCH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attn_decode_kernel(int64_t nheads, int64_t nheads_kv, int hd, int64_t C, samba_cu_ref q,
                   samba_cu_ref kc, samba_cu_ref vc, samba_cu_ref pos, samba_cu_ref n_valid,
                   float scale, samba_cu_ref out) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_o[ATT_WARPS][32 * DCH];
    const int64_t b = blockIdx.y, h = blockIdx.x;
    const int64_t hkv = h / (nheads / nheads_kv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t nv = ldi(n_valid.ptr, n_valid.dtype, b);
    nv = nv < 0 ? 0 : (nv > C ? C : nv);
    const int64_t p = ldi(pos.ptr, pos.dtype, b);
    const int64_t newest = ((p % C) + C) % C;
    const float qs = scale * LOG2E;
    float qv[DCH], o[DCH];
#pragma unroll
    for (int c = 0; c < DCH; ++c) {
        const int col = lane + 32 * c;
        qv[c] = col < hd ? ldf(q, (b * nheads + h) * hd + col) * qs : 0.0f;
        o[c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t r0 = (int64_t)warp * DEC_KEYS; r0 < nv; r0 += ATT_WARPS * DEC_KEYS) {
        float s[DEC_KEYS];
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u) {
            const int64_t r = r0 + u;
            float part = 0.0f;
            if (r < nv) {
                const int64_t slot = (newest - r + C) % C;
                const int64_t base = ((b * C + slot) * nheads_kv + hkv) * hd;
#pragma unroll
                for (int c = 0; c < DCH; ++c) {
                    const int col = lane + 32 * c;
                    if (col < hd) part += qv[c] * ldf(kc, base + col);
                }
            }
            s[u] = part;
        }
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) {
#pragma unroll
            for (int u = 0; u < DEC_KEYS; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o2);
        }
        float mt = -INFINITY;
        bool nan_score = false;  // fmaxf drops NaN: a NaN score (query or key) is tracked apart
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u) {
            if (r0 + u >= nv) s[u] = -INFINITY;
            nan_score |= isnan(s[u]);
            mt = fmaxf(mt, s[u]);
        }
        const float mnew = nan_score ? NAN : fmaxf(m, mt);
        const float corr = exp2f(m - mnew);
        l *= corr;
#pragma unroll
        for (int c = 0; c < DCH; ++c) o[c] *= corr;
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u) {
            const int64_t r = r0 + u;
            if (r < nv) {
                const float pu = exp2f(s[u] - mnew);
                l += pu;
                const int64_t slot = (newest - r + C) % C;
                const int64_t base = ((b * C + slot) * nheads_kv + hkv) * hd;
#pragma unroll
                for (int c = 0; c < DCH; ++c) {
                    const int col = lane + 32 * c;
                    if (col < hd) o[c] += pu * ldf(vc, base + col);
                }
            }
        }
        m = mnew;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < DCH; ++c) s_o[warp][lane + 32 * c] = o[c];
    __syncthreads();
    if (warp == 0) {
        float M = -INFINITY;
        for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, s_m[w]);
        float L = 0.0f, acc[DCH];
#pragma unroll
        for (int c = 0; c < DCH; ++c) acc[c] = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w) {
            if (s_m[w] == -INFINITY) continue;
            const float f = exp2f(s_m[w] - M);
            L += s_l[w] * f;
#pragma unroll
            for (int c = 0; c < DCH; ++c) acc[c] += s_o[w][lane + 32 * c] * f;
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
#pragma unroll
        for (int c = 0; c < DCH; ++c) {
            const int col = lane + 32 * c;
            if (col < hd) stf(out, (b * nheads + h) * hd + col, acc[c] * inv);
        }
    }
}

extern "C" samba_status samba_cu_attn_decode(int64_t batch, int64_t nheads, int64_t nheads_kv,
                                             int64_t headdim, int64_t capacity, samba_cu_ref q,
                                             samba_cu_ref k_cache, samba_cu_ref v_cache,
                                             samba_cu_ref pos, samba_cu_ref n_valid,
                                             float softmax_scale, samba_cu_ref out,
                                             void *stream) {
    samba_status s = check_heads("swa_decode", nheads, nheads_kv, headdim);
    if (s != SAMBA_OK) return s;
    if (capacity < 1)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "swa_decode: cache capacity must be >= 1");
    if (batch == 0 || nheads == 0) return SAMBA_OK;
    if (batch > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "swa_decode: batch above 65535");
    cudaStream_t st = (cudaStream_t)stream;
    if (attn_variant(1, headdim) == 2 && attn_decode_v2_applicable(headdim, q, k_cache, v_cache, out)) {
        int taken = 0;
        s = attn_decode_v2(batch, nheads, nheads_kv, headdim, capacity, q, k_cache, v_cache, pos,
                           n_valid, softmax_scale, out, st, &taken);
        if (s != SAMBA_OK || taken) return s;
    }
    if (attn_decode_split_applicable(headdim, q, k_cache, v_cache, out))
        return attn_decode_split(batch, nheads, nheads_kv, headdim, capacity, q, k_cache, v_cache,
                                 pos, n_valid, softmax_scale, out, st);
    dim3 grid((unsigned)nheads, (unsigned)batch);
    const int hd = (int)headdim;
#define DEC_LAUNCH(D)                                                                       \
    attn_decode_kernel<D><<<grid, ATT_WARPS * 32, 0, st>>>(nheads, nheads_kv, hd, capacity, \
                                                          q, k_cache, v_cache, pos, n_valid,  \
                                                          softmax_scale, out)
    if (hd <= 64)
        DEC_LAUNCH(2);
    else if (hd <= 128)
        DEC_LAUNCH(4);
    else
        DEC_LAUNCH(8);
#undef DEC_LAUNCH
    return samba_cu_check_launch("swa_decode", stream);
}
