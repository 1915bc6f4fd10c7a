// decode_warp.cuh - the per-warp pieces shared by the two tensor-core decode kernels
// (attention_decode.cu, v1, and attention_decode_v2.cu): a block holds up to 8 query heads of
// one kv head (the N = 8 side of mma.sync m16n8k16) and each warp takes 16 keys of a K/V tile
// in shared memory (rows of LD elements):
//   dec_q_frags        Q^T as the B fragments, once per segment;
//   dec_warp_tile      S^T = K Q^T, the mask past the last valid key, the float32 online
//                      softmax per head (base 2, scale folded in), O^T += V^T P^T;
//   dec_warp_publish   the warp's (m, l) per head and O^T into shared memory;
//   dec_merge_warps    one (head, dim) item of the merge of NW warps: (M, L, sum of outputs).
// Fragment layout: s[e] is key g, head 2tq + e; s[2 + e] key g + 8 (g = lane / 4,
// tq = lane % 4); o[mt] is O^T m-tile mt: dims mt*16 + g (+8), heads 2tq, 2tq + 1.
#ifndef SAMBA_DECODE_WARP_CUH
#define SAMBA_DECODE_WARP_CUH

#include "attention_impl.cuh"
#include "mma_ptx.cuh"

namespace samba_decode {
using namespace samba_ptx;

// B (k = dims, n = heads): heads (lane % 8), dims ks*16 + (lane / 8) * 8
template <typename T, int KSTEPS, int LD>
__device__ __forceinline__ void dec_q_frags(uint32_t (&qb)[KSTEPS][2], const T *sQ, int lane) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ks += 2) {
        uint32_t r[4];
        ldsm_x4(r, sQ + (lane & 7) * LD + ks * 16 + (lane >> 3) * 8);
        qb[ks][0] = r[0];
        qb[ks][1] = r[1];
        qb[ks + 1][0] = r[2];
        qb[ks + 1][1] = r[3];
    }
}

// One warp's 16 keys (rows k_w / v_w of the tile); key_g is the recency index of this lane's
// key g, and keys at or past r_end are masked; sl = softmax scale * log2(e).
template <typename T, int KSTEPS, int LD>
__device__ __forceinline__ void dec_warp_tile(const T *k_w, const T *v_w,
                                              const uint32_t (&qb)[KSTEPS][2], int64_t key_g,
                                              int64_t r_end, float sl, float (&o)[KSTEPS][4],
                                              float (&m)[2], float (&l)[2], int lane) {
    // ---- S^T = K Q^T: A (keys x dims) rows lane % 16, cols (lane / 16) * 8 ----
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const T *k_lane = k_w + (lane & 15) * LD + (lane >> 4) * 8;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        uint32_t ak[4];
        ldsm_x4(ak, k_lane + ks * 16);
        Mma<T>::run(s, ak, qb[ks][0], qb[ks][1]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const bool valid = key_g + (e >> 1) * 8 < r_end;
        s[e] = valid ? s[e] * sl : -INFINITY;
    }
    // ---- online softmax per head (a column: the 8 lanes with this tq) ----
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        float mx = fmaxf(s[e], s[2 + e]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float mnew = fmaxf(m[e], mx);
        const float mref = mnew == -INFINITY ? 0.0f : mnew;
        const float corr = fast_exp2(m[e] - mref);
        m[e] = mnew;
        s[e] = fast_exp2(s[e] - mref);
        s[2 + e] = fast_exp2(s[2 + e] - mref);
        l[e] = l[e] * corr + s[e] + s[2 + e];  // this lane's keys; summed over g at the end
#pragma unroll
        for (int i = 0; i < KSTEPS; ++i) {
            o[i][e] *= corr;
            o[i][2 + e] *= corr;
        }
    }
    // ---- O^T += V^T P^T ----
    // P^T as B (k = keys, n = heads): transpose the two 8x8 (keys x heads) halves of S^T
    const uint32_t b0 = movmatrix_trans(Mma<T>::pack(s[0], s[1]));  // keys 0-7
    const uint32_t b1 = movmatrix_trans(Mma<T>::pack(s[2], s[3]));  // keys 8-15
    // A = V^T (dims x keys) by ldmatrix.trans: keys (lane % 8) + (lane / 16) * 8,
    // dims mt*16 + ((lane / 8) % 2) * 8
    const T *v_lane = v_w + ((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int mt = 0; mt < KSTEPS; ++mt) {
        uint32_t av[4];
        ldsm_x4_trans(av, v_lane + mt * 16);
        Mma<T>::run(o[mt], av, b0, b1);
    }
}

// The warp's state into shared memory: sm_m / sm_l [warp][head] (l summed over the warp's
// keys), so [warp][8 heads][D] floats (O^T transposed back to heads x dims).
template <int KSTEPS, int D>
__device__ __forceinline__ void dec_warp_publish(const float (&o)[KSTEPS][4], const float (&m)[2],
                                                 const float (&l)[2], float (*sm_m)[8],
                                                 float (*sm_l)[8], float *so, int warp,
                                                 int lane) {
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        float le = l[e];
        le += __shfl_xor_sync(0xffffffffu, le, 4);
        le += __shfl_xor_sync(0xffffffffu, le, 8);
        le += __shfl_xor_sync(0xffffffffu, le, 16);
        if (g == 0) {
            sm_m[warp][2 * tq + e] = m[e];
            sm_l[warp][2 * tq + e] = le;
        }
    }
#pragma unroll
    for (int mt = 0; mt < KSTEPS; ++mt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float *dst = so + (warp * 8 + 2 * tq + e) * D + mt * 16 + g;
            dst[0] = o[mt][e];
            dst[8] = o[mt][2 + e];
        }
}

// Head j, dim d of the NW published warps: M = the largest max, L = sum of w l, acc = sum of
// w o with w = 2^(m - M) (0 for a warp that saw no key).
template <int NW, int D>
__device__ __forceinline__ void dec_merge_warps(const float (*sm_m)[8], const float (*sm_l)[8],
                                                const float *so, int j, int d, float &M,
                                                float &L, float &acc) {
    M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, sm_m[w][j]);
    const float mref = M == -INFINITY ? 0.0f : M;
    L = 0.0f;
    acc = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
        const float wt = fast_exp2(sm_m[w][j] - mref);
        L += wt * sm_l[w][j];
        acc += wt * so[(w * 8 + j) * D + d];
    }
}

}  // namespace samba_decode

#endif
