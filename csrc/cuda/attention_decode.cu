// attention_decode.cu - split-KV ("flash-decoding") attention of one new query per sequence
// over a ring-buffer KV cache, for bfloat16 / float16, on the tensor cores.
//
// Decode reads the whole visible cache once and does ~2 FLOP per byte per query head: it is
// bound by memory bandwidth, and batch 1 with a long cache has only B x Hkv (key, value)
// streams. So the visible range (recency index r = 0 .. n_valid-1, slot (pos - r) mod C) is
// cut into nsplit chunks of `chunk` keys, and one block handles one (chunk, kv head, batch):
//   * K/V tiles of 64 keys stream through shared memory with cp.async, STAGES - 1 tiles in
//     flight while one is computed (row addresses follow the ring buffer, 16-byte chunks);
//   * the block's (up to) 8 query heads sharing the kv head are the N = 8 side of
//     mma.sync m16n8k16, so a K/V row is read once for all of them and the G x hd
//     multiply-adds per row run on the tensor cores instead of the CUDA cores:
//       S^T (16 keys x 8 heads) = K (16 x hd) Q^T         K from ldmatrix, Q^T from ldmatrix
//       O^T (hd x 8 heads)     += V^T (hd x 16) P^T        V^T from ldmatrix.trans, P^T from
//                                                          the S^T accumulators via movmatrix
//     each warp takes 16 keys of a tile and keeps a float32 online softmax per head; the
//     probabilities are rounded to the input dtype for the P V product (as in the prefill);
//   * the 4 warps are merged through shared memory; nsplit == 1: the block writes the
//     normalised output; else its (m, l, unnormalised output) go to a float32 workspace and
//     decode_combine_kernel merges the nsplit partial states of each (batch, head).
// n_valid and pos are read on the device (a captured graph needs no change between steps), so
// nsplit is chosen from the capacity C and chunks past n_valid produce empty states. Slots
// outside the valid range are never read. The workspace is allocated stream-ordered from the
// device's memory pool (samba_cu_malloc) and freed after the combine, so concurrent streams and
// graph capture are safe.
#include "decode_warp.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_decode;

constexpr int DEC_THREADS = 128;  // 4 warps
constexpr int DEC_BT = 64;        // keys per tile (16 per warp)
constexpr int DEC_GB = 8;         // query heads per block (the mma N side)
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

template <int D_> struct DCfg {
    static constexpr int D = D_;                                   // template head dim (>= hd)
    static constexpr int LD = D + 8;                               // padded smem row
    static constexpr int STAGES = D <= 64 ? 4 : (D <= 128 ? 3 : 2);
    static constexpr int KSTEPS = D / 16;
    static constexpr size_t SMEM = (size_t)(DEC_GB + 2 * STAGES * DEC_BT) * LD * 2;
    static_assert(KSTEPS % 2 == 0, "two k-steps per ldmatrix.x4");
    // the merge scratch (4 warps x 8 heads x D floats) reuses the K stages
    static_assert(4 * DEC_GB * D * 4 <= STAGES * DEC_BT * LD * 2, "merge scratch");
};

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

template <typename T, class C>
__global__ void __launch_bounds__(DEC_THREADS) decode_tc_kernel(DecArgs a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *sQ = reinterpret_cast<T *>(smem_raw);        // [8][LD]
    T *sK = sQ + DEC_GB * C::LD;                    // [STAGES][BT][LD]
    T *sV = sK + C::STAGES * DEC_BT * C::LD;        // [STAGES][BT][LD]
    __shared__ float sm_m[4][DEC_GB], sm_l[4][DEC_GB];

    const int split = blockIdx.x;
    const int64_t b = blockIdx.z;
    const int64_t hkv = blockIdx.y / a.ngroups;
    const int hgrp = blockIdx.y % a.ngroups;
    const int G = (int)(a.nheads / a.nheads_kv);
    const int64_t h0 = hkv * G + (int64_t)hgrp * DEC_GB;  // first query head of this block
    const int nh = min(DEC_GB, G - hgrp * DEC_GB);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2;
    constexpr int CH = C::D / 8;  // 16-byte chunks per row

    int64_t nv = ldi(a.n_valid.ptr, a.n_valid.dtype, b);
    nv = nv < 0 ? 0 : (nv > a.C ? a.C : nv);
    const int64_t p = ldi(a.pos.ptr, a.pos.dtype, b);
    const int64_t newest = ((p % a.C) + a.C) % a.C;
    const int64_t r_begin = split * a.chunk;
    const int64_t r_end = r_begin + a.chunk < nv ? r_begin + a.chunk : nv;
    const int ntiles = r_end > r_begin ? (int)((r_end - r_begin + DEC_BT - 1) / DEC_BT) : 0;

    // the block's query rows (heads h0 .. h0 + nh - 1); other rows and columns zero
    const T *qg = (const T *)a.q + (b * a.nheads + h0) * a.hd;
    for (int i = threadIdx.x; i < DEC_GB * CH; i += DEC_THREADS) {
        const int r = i / CH, c = i % CH;
        const bool ok = r < nh && c * 8 < a.hd;
        cp_async16(sQ + r * C::LD + c * 8, ok ? qg + r * a.hd + c * 8 : qg, ok);
    }
    const T *kg = (const T *)a.k + (b * a.C * a.nheads_kv + hkv) * a.hd;
    const T *vg = (const T *)a.v + (b * a.C * a.nheads_kv + hkv) * a.hd;
    const int64_t row = a.nheads_kv * a.hd;  // elements between slots
    auto load_tile = [&](int tile, int stage) {
        const int64_t r0 = r_begin + (int64_t)tile * DEC_BT;
        T *ks = sK + stage * DEC_BT * C::LD, *vs = sV + stage * DEC_BT * C::LD;
        for (int i = threadIdx.x; i < DEC_BT * CH; i += DEC_THREADS) {
            const int r = i / CH, c = i % CH;
            const bool ok = r0 + r < r_end && c * 8 < a.hd;
            int64_t slot = newest - (r0 + r);
            if (slot < 0) slot += a.C;
            const int64_t off = ok ? slot * row + c * 8 : 0;
            cp_async16(ks + r * C::LD + c * 8, kg + off, ok);
            cp_async16(vs + r * C::LD + c * 8, vg + off, ok);
        }
    };
#pragma unroll
    for (int st = 0; st < C::STAGES - 1; ++st) {
        if (st < ntiles) load_tile(st, st);
        cp_async_commit();  // (possibly empty) group st; group 0 also holds Q
    }

    float o[C::KSTEPS][4];  // O^T m-tiles: (dims mt*16 + g (+8), heads 2tq, 2tq+1)
#pragma unroll
    for (int i = 0; i < C::KSTEPS; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // heads 2tq, 2tq + 1
    uint32_t qb[C::KSTEPS][2];                                  // Q^T B fragments

    for (int it = 0; it < ntiles; ++it) {
        cp_async_wait<C::STAGES - 2>();  // tile it (and Q) landed
        __syncthreads();                 // ... for every thread; stage (it-1) is free again
        if (it == 0) dec_q_frags<T, C::KSTEPS, C::LD>(qb, sQ, lane);
        const int nxt = it + C::STAGES - 1;
        if (nxt < ntiles) load_tile(nxt, nxt % C::STAGES);
        cp_async_commit();

        const int stage = it % C::STAGES;
        const T *k_w = sK + (stage * DEC_BT + warp * 16) * C::LD;  // this warp's 16 keys
        const T *v_w = sV + (stage * DEC_BT + warp * 16) * C::LD;

        const int64_t key0 = r_begin + (int64_t)it * DEC_BT + warp * 16 + g;  // this lane's key g
        dec_warp_tile<T, C::KSTEPS, C::LD>(k_w, v_w, qb, key0, r_end, a.sl, o, m, l, lane);
    }
    cp_async_wait<0>();
    __syncthreads();  // the K stages become the merge scratch

    // ---- merge the 4 warps: (m, l) per head, O^T per head and dim ----
    float *so = reinterpret_cast<float *>(sK);  // [4][8][D]
    dec_warp_publish<C::KSTEPS, C::D>(o, m, l, sm_m, sm_l, so, warp, lane);
    __syncthreads();
    for (int item = threadIdx.x; item < DEC_GB * C::D; item += DEC_THREADS) {
        const int j = item / C::D, d = item % C::D;
        if (j >= nh || d >= a.hd) continue;
        float M, L, acc;
        dec_merge_warps<4, C::D>(sm_m, sm_l, so, j, d, M, L, acc);
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

template <typename T, class C> samba_status run_split(DecArgs a, int64_t batch, cudaStream_t st) {
    cudaError_t e = cudaFuncSetAttribute(decode_tc_kernel<T, C>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess) return samba_cu_fail("swa_decode (shared memory opt-in)", e);
    dim3 grid((unsigned)a.nsplit, (unsigned)(a.nheads_kv * a.ngroups), (unsigned)batch);
    decode_tc_kernel<T, C><<<grid, DEC_THREADS, C::SMEM, st>>>(a);
    samba_status s = samba_cu_check_launch("swa_decode (split)", st);
    if (s != SAMBA_OK || a.nsplit == 1) return s;
    dim3 g2((unsigned)a.nheads, (unsigned)batch);
    decode_combine_kernel<T><<<g2, DEC_THREADS, 0, st>>>(a.nheads, a.hd, a.nsplit, a.ws_o,
                                                         a.ws_ml, a.out);
    return samba_cu_check_launch("swa_decode (combine)", st);
}

template <typename T> samba_status by_dim(DecArgs a, int64_t batch, cudaStream_t st) {
    if (a.hd <= 64) return run_split<T, DCfg<64>>(a, batch, st);
    if (a.hd <= 96) return run_split<T, DCfg<96>>(a, batch, st);
    if (a.hd <= 128) return run_split<T, DCfg<128>>(a, batch, st);
    return run_split<T, DCfg<256>>(a, batch, st);
}

}  // namespace

// Shared memory of the configuration by_dim() picks for head dim hd (keep the two in step).
static size_t dec_smem(int64_t hd) {
    if (hd <= 64) return DCfg<64>::SMEM;
    if (hd <= 96) return DCfg<96>::SMEM;
    if (hd <= 128) return DCfg<128>::SMEM;
    return DCfg<256>::SMEM;
}

int attn_decode_split_applicable(int64_t headdim, samba_cu_ref q, samba_cu_ref k_cache,
                                 samba_cu_ref v_cache, samba_cu_ref out) {
    const int dt = q.dtype;
    if (dt != SAMBA_CU_BF16 && dt != SAMBA_CU_F16) return 0;
    if (k_cache.dtype != dt || v_cache.dtype != dt || out.dtype != dt) return 0;
    if (headdim % 8 != 0 || headdim > 256) return 0;
    return is_aligned16(q.ptr) && is_aligned16(k_cache.ptr) && is_aligned16(v_cache.ptr) &&
           is_aligned16(out.ptr) && attn_tensor_cores_ok() &&
           dec_smem(headdim) <= attn_smem_optin();
}

samba_status attn_decode_split(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                               int64_t capacity, samba_cu_ref q, samba_cu_ref k_cache,
                               samba_cu_ref v_cache, samba_cu_ref pos, samba_cu_ref n_valid,
                               float softmax_scale, samba_cu_ref out, cudaStream_t st) {
    const int G = (int)(nheads / nheads_kv);
    const int64_t step = DEC_BT;  // keys per block iteration

    DecArgs a;
    a.nheads = nheads;
    a.nheads_kv = nheads_kv;
    a.C = capacity;
    a.hd = (int)headdim;
    a.ngroups = (G + DEC_GB - 1) / DEC_GB;
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
    int64_t nsplit = cdiv(4 * (int64_t)samba_sm_count(), base_blocks);
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
    samba_status s = q.dtype == SAMBA_CU_BF16 ? by_dim<__nv_bfloat16>(a, batch, st)
                                              : by_dim<__half>(a, batch, st);
    if (ws) {
        samba_status s2 = samba_cu_free(ws, st);
        if (s == SAMBA_OK) s = s2;
    }
    return s;
}
