// attention_decode.cu - split-KV ("flash-decoding") attention of one new query per sequence
// over a ring-buffer KV cache, for bfloat16 / float16.
//
// Decode reads the whole visible cache once and does ~2 FLOP per byte: it is bound by memory
// bandwidth, and batch 1 with a long cache has only B x Hkv (key, value) streams. So the
// visible range (recency index r = 0 .. n_valid-1, slot (pos - r) mod C) is cut into nsplit
// chunks of `chunk` keys, and one block handles one (chunk, kv head, batch):
//   * the block's GB query heads share the kv head (GQA): each K/V row is loaded once, with
//     16-byte loads, and used for all GB heads;
//   * TPK threads (hd / 8 rounded up to a power of two) hold one key's row, 8 dims each;
//     128 / TPK keys are in flight per block step, DEC_U steps are loaded before use;
//   * each thread keeps a float32 online softmax (max m, sum l, partial output) per head,
//     the key groups of the block are merged through shared memory;
//   * nsplit == 1: the block writes the normalised output; else it writes its (m, l,
//     unnormalised output) to a float32 workspace, and decode_combine_kernel merges the
//     nsplit partial states of each (batch, head).
// n_valid and pos are read on the device (a captured graph needs no change between steps), so
// nsplit is chosen from the capacity C and chunks past n_valid produce empty states. The
// workspace is allocated stream-ordered from the device's memory pool (samba_cu_malloc) and
// freed after the combine, so concurrent streams and graph capture are safe.
#include "attention_impl.cuh"

namespace {

constexpr int DEC_THREADS = 128;
constexpr int DEC_U = 4;  // key rows loaded per thread before they are used
constexpr int DEC_MAX_SPLIT = 1024;

struct DecArgs {
    int64_t nheads, nheads_kv, C;
    int hd, ngroups, nsplit;
    int64_t chunk;
    const void *q, *k, *v;
    samba_cu_ref pos, n_valid;
    float sl;  // softmax_scale * log2(e)
    void *out;
    float *ws_o, *ws_ml;  // (B, H, nsplit, hd) and (B, H, nsplit, 2)
};

template <typename T> __device__ __forceinline__ void unpack8(const uint4 &v, float (&f)[8]);
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4 &v, float (&f)[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = __bfloat1622float2(h[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}
template <> __device__ __forceinline__ void unpack8<__half>(const uint4 &v, float (&f)[8]) {
    const __half2 *h = reinterpret_cast<const __half2 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = __half22float2(h[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

template <typename T, int TPK, int GB>
__global__ void __launch_bounds__(DEC_THREADS) decode_split_kernel(DecArgs a) {
    constexpr int KPB = DEC_THREADS / TPK;  // keys per block step
    constexpr int DW = TPK * 8;             // dims covered by a key group (>= hd)
    __shared__ float sm_m[KPB][GB], sm_l[KPB][GB];
    __shared__ float sm_o[KPB][GB][DW];

    const int split = blockIdx.x;
    const int64_t b = blockIdx.z;
    const int64_t hkv = blockIdx.y / a.ngroups;
    const int hgrp = blockIdx.y % a.ngroups;
    const int G = (int)(a.nheads / a.nheads_kv);
    const int64_t h0 = hkv * G + (int64_t)hgrp * GB;  // first query head of this block
    const int nh = min(GB, G - hgrp * GB);
    const int kg = threadIdx.x / TPK, ti = threadIdx.x % TPK;
    const bool dim_ok = ti * 8 < a.hd;

    int64_t nv = ldi(a.n_valid.ptr, a.n_valid.dtype, b);
    nv = nv < 0 ? 0 : (nv > a.C ? a.C : nv);
    const int64_t p = ldi(a.pos.ptr, a.pos.dtype, b);
    const int64_t newest = ((p % a.C) + a.C) % a.C;
    const int64_t r_begin = split * a.chunk;
    const int64_t r_end = r_begin + a.chunk < nv ? r_begin + a.chunk : nv;

    float qv[GB][8], o[GB][8], m[GB], l[GB];
#pragma unroll
    for (int j = 0; j < GB; ++j) {
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (j < nh && dim_ok) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(
                (const T *)a.q + (b * a.nheads + h0 + j) * a.hd + ti * 8);
            unpack8<T>(raw, f);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            qv[j][i] = f[i] * a.sl;
            o[j][i] = 0.0f;
        }
        m[j] = -INFINITY;
        l[j] = 0.0f;
    }

    const T *kbase = (const T *)a.k + (b * a.C * a.nheads_kv + hkv) * a.hd + ti * 8;
    const T *vbase = (const T *)a.v + (b * a.C * a.nheads_kv + hkv) * a.hd + ti * 8;
    const int64_t row = a.nheads_kv * a.hd;  // elements between slots
    // the loop bounds are the same for every thread (the shuffles below need the whole warp)
    for (int64_t base = r_begin; base < r_end; base += KPB * DEC_U) {
        uint4 kr[DEC_U], vr[DEC_U];
        bool valid[DEC_U];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            const int64_t r = base + u * KPB + kg;
            valid[u] = r < r_end;
            int64_t slot = newest - r;
            if (slot < 0) slot += a.C;
            if (valid[u] && dim_ok) {
                kr[u] = *reinterpret_cast<const uint4 *>(kbase + slot * row);
                vr[u] = *reinterpret_cast<const uint4 *>(vbase + slot * row);
            } else {
                kr[u] = make_uint4(0, 0, 0, 0);
                vr[u] = make_uint4(0, 0, 0, 0);
            }
        }
        float sc[DEC_U][GB];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            float kf[8];
            unpack8<T>(kr[u], kf);
#pragma unroll
            for (int j = 0; j < GB; ++j) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; ++i) d = fmaf(qv[j][i], kf[i], d);
                sc[u][j] = d;
            }
        }
#pragma unroll
        for (int off = TPK / 2; off > 0; off >>= 1) {
#pragma unroll
            for (int u = 0; u < DEC_U; ++u)
#pragma unroll
                for (int j = 0; j < GB; ++j) sc[u][j] += __shfl_xor_sync(0xffffffffu, sc[u][j], off);
        }
        float vf[DEC_U][8];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) unpack8<T>(vr[u], vf[u]);
#pragma unroll
        for (int j = 0; j < GB; ++j) {
            float mx = -INFINITY;
#pragma unroll
            for (int u = 0; u < DEC_U; ++u)
                if (valid[u]) mx = fmaxf(mx, sc[u][j]);
            const float mnew = fmaxf(m[j], mx);
            const float mref = mnew == -INFINITY ? 0.0f : mnew;
            const float corr = fast_exp2(m[j] - mref);
            m[j] = mnew;
            float pu[DEC_U], ps = 0.0f;
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
                pu[u] = valid[u] ? fast_exp2(sc[u][j] - mref) : 0.0f;
                ps += pu[u];
            }
            l[j] = l[j] * corr + ps;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float acc = o[j][i] * corr;
#pragma unroll
                for (int u = 0; u < DEC_U; ++u) acc = fmaf(pu[u], vf[u][i], acc);
                o[j][i] = acc;
            }
        }
    }

    // merge the KPB key groups of the block
#pragma unroll
    for (int j = 0; j < GB; ++j) {
        if (ti == 0) {
            sm_m[kg][j] = m[j];
            sm_l[kg][j] = l[j];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) sm_o[kg][j][ti * 8 + i] = o[j][i];
    }
    __syncthreads();
    for (int item = threadIdx.x; item < GB * DW; item += DEC_THREADS) {
        const int j = item / DW, d = item % DW;
        if (j >= nh || d >= a.hd) continue;
        float M = -INFINITY;
        for (int k = 0; k < KPB; ++k) M = fmaxf(M, sm_m[k][j]);
        const float mref = M == -INFINITY ? 0.0f : M;
        float L = 0.0f, acc = 0.0f;
        for (int k = 0; k < KPB; ++k) {
            const float w = fast_exp2(sm_m[k][j] - mref);  // 0 for an empty group
            L += w * sm_l[k][j];
            acc += w * sm_o[k][j][d];
        }
        const int64_t bh = b * a.nheads + h0 + j;
        if (a.nsplit == 1) {
            ((T *)a.out)[bh * a.hd + d] = from_f<T>(L == 0.0f ? 0.0f : acc / L);
        } else {
            a.ws_o[(bh * a.nsplit + split) * a.hd + d] = acc;
            if (d == 0) {
                a.ws_ml[(bh * a.nsplit + split) * 2] = M;
                a.ws_ml[(bh * a.nsplit + split) * 2 + 1] = L;
            }
        }
    }
}

// grid (H, B): merges the nsplit partial states of one (batch, head); the split weights w[s]
// sit in shared memory.
template <typename T>
__global__ void __launch_bounds__(DEC_THREADS)
decode_combine_kernel(int64_t nheads, int hd, int nsplit, const float *ws_o, const float *ws_ml,
                      void *out) {
    __shared__ float w[DEC_MAX_SPLIT];
    __shared__ float red[DEC_THREADS / 32], s_mref, s_L;
    const int64_t bh = (int64_t)blockIdx.y * nheads + blockIdx.x;
    const float *ml = ws_ml + bh * nsplit * 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    float mx = -INFINITY;
    for (int s = threadIdx.x; s < nsplit; s += DEC_THREADS) mx = fmaxf(mx, ml[2 * s]);
    mx = warp_max(mx);
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        float M = red[0];
        for (int i = 1; i < DEC_THREADS / 32; ++i) M = fmaxf(M, red[i]);
        s_mref = M == -INFINITY ? 0.0f : M;
    }
    __syncthreads();
    float ls = 0.0f;
    for (int s = threadIdx.x; s < nsplit; s += DEC_THREADS) {
        const float ws = fast_exp2(ml[2 * s] - s_mref);
        w[s] = ws;
        ls += ws * ml[2 * s + 1];  // 0 * NaN stays NaN: a NaN split poisons the row
    }
    ls = warp_sum(ls);
    __syncthreads();  // red[] is reused
    if (lane == 0) red[warp] = ls;
    __syncthreads();
    if (threadIdx.x == 0) {
        float L = 0.0f;
        for (int i = 0; i < DEC_THREADS / 32; ++i) L += red[i];
        s_L = L;
    }
    __syncthreads();
    const float L = s_L;
    for (int d = threadIdx.x; d < hd; d += DEC_THREADS) {
        float acc = 0.0f;
        for (int s = 0; s < nsplit; ++s) acc += w[s] * ws_o[(bh * nsplit + s) * hd + d];
        ((T *)out)[bh * hd + d] = from_f<T>(L == 0.0f ? 0.0f : acc / L);
    }
}

int sm_count() {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        cudaGetLastError();
        return 108;
    }
    return n;
}

template <typename T, int TPK, int GB>
samba_status run_split(DecArgs a, int64_t batch, cudaStream_t st) {
    dim3 grid((unsigned)a.nsplit, (unsigned)(a.nheads_kv * a.ngroups), (unsigned)batch);
    decode_split_kernel<T, TPK, GB><<<grid, DEC_THREADS, 0, st>>>(a);
    samba_status s = samba_cu_check_launch("swa_decode (split)", st);
    if (s != SAMBA_OK || a.nsplit == 1) return s;
    dim3 g2((unsigned)a.nheads, (unsigned)batch);
    decode_combine_kernel<T><<<g2, DEC_THREADS, 0, st>>>(
        a.nheads, a.hd, a.nsplit, a.ws_o, a.ws_ml, a.out);
    return samba_cu_check_launch("swa_decode (combine)", st);
}

template <typename T, int TPK>
samba_status by_group(DecArgs a, int64_t batch, int G, cudaStream_t st) {
    if (G <= 1) return run_split<T, TPK, 1>(a, batch, st);
    if (G <= 2) return run_split<T, TPK, 2>(a, batch, st);
    if (G <= 4) return run_split<T, TPK, 4>(a, batch, st);
    return run_split<T, TPK, 8>(a, batch, st);
}

template <typename T>
samba_status by_dim(DecArgs a, int64_t batch, int G, cudaStream_t st) {
    if (a.hd <= 64) return by_group<T, 8>(a, batch, G, st);
    if (a.hd <= 128) return by_group<T, 16>(a, batch, G, st);
    return by_group<T, 32>(a, batch, G, st);
}

}  // namespace

int attn_decode_split_applicable(int64_t headdim, samba_cu_ref q, samba_cu_ref k_cache,
                                 samba_cu_ref v_cache, samba_cu_ref out) {
    const int dt = q.dtype;
    if (dt != SAMBA_CU_BF16 && dt != SAMBA_CU_F16) return 0;
    if (k_cache.dtype != dt || v_cache.dtype != dt || out.dtype != dt) return 0;
    if (headdim % 8 != 0 || headdim > 256) return 0;
    return is_aligned16(q.ptr) && is_aligned16(k_cache.ptr) && is_aligned16(v_cache.ptr) &&
           is_aligned16(out.ptr);
}

samba_status attn_decode_split(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                               int64_t capacity, samba_cu_ref q, samba_cu_ref k_cache,
                               samba_cu_ref v_cache, samba_cu_ref pos, samba_cu_ref n_valid,
                               float softmax_scale, samba_cu_ref out, cudaStream_t st) {
    const int G = (int)(nheads / nheads_kv);
    const int GB = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    const int tpk = headdim <= 64 ? 8 : headdim <= 128 ? 16 : 32;
    const int64_t step = (int64_t)(DEC_THREADS / tpk) * DEC_U;  // keys per block iteration

    DecArgs a;
    a.nheads = nheads;
    a.nheads_kv = nheads_kv;
    a.C = capacity;
    a.hd = (int)headdim;
    a.ngroups = (G + GB - 1) / GB;
    a.q = q.ptr;
    a.k = k_cache.ptr;
    a.v = v_cache.ptr;
    a.pos = pos;
    a.n_valid = n_valid;
    a.sl = softmax_scale * 1.4426950408889634f;
    a.out = out.ptr;
    a.ws_o = a.ws_ml = NULL;

    // Enough blocks for ~4 per multiprocessor, each chunk at least two block iterations.
    const int64_t base_blocks = batch * nheads_kv * a.ngroups;
    int64_t nsplit = cdiv(4 * (int64_t)sm_count(), base_blocks);
    const int64_t max_split = cdiv(capacity, 2 * step);
    if (nsplit > max_split) nsplit = max_split;
    if (nsplit > DEC_MAX_SPLIT) nsplit = DEC_MAX_SPLIT;
    if (nsplit < 1) nsplit = 1;
    a.chunk = cdiv(cdiv(capacity, nsplit), step) * step;
    a.nsplit = (int)cdiv(capacity, a.chunk);  // <= nsplit chosen above

    void *ws = NULL;
    if (a.nsplit > 1) {
        const size_t n = (size_t)batch * nheads * a.nsplit;
        samba_status s = samba_cu_malloc(&ws, n * ((size_t)headdim + 2) * sizeof(float), st);
        if (s != SAMBA_OK) return s;
        a.ws_o = (float *)ws;
        a.ws_ml = a.ws_o + n * headdim;
    }
    samba_status s = q.dtype == SAMBA_CU_BF16 ? by_dim<__nv_bfloat16>(a, batch, G, st)
                                              : by_dim<__half>(a, batch, G, st);
    if (ws) {
        samba_status s2 = samba_cu_free(ws, st);
        if (s == SAMBA_OK) s = s2;
    }
    return s;
}
