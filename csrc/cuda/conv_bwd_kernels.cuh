// conv_bwd_kernels.cuh - the kernel of the depthwise causal conv1d's backward (launched by
// conv_bwd.cu; the formulas are those of csrc/conv_bwd.c).
//
// On the padded row xp = [initial_states (W-1) | x (L)] the forward is
// p[t] = bias + sum_k w[k] xp[t - (W-1) + k], y[t] = silu(p[t]) or p[t]. With
// gp[t] = dy[t] silu'(p[t]) (or dy[t]): dx[s] = sum_k w[k] gp[s + W-1 - k] (+ dfinal_states
// on the last W-1 positions), dinitial_states likewise on the padded positions,
// dw[k] = sum_{b,t} gp[t] xp[t - (W-1) + k], dbias = sum_{b,t} gp[t].
//
// One block per channel d (a grid-stride loop over channels): its threads take groups of
// CBWD_V consecutive positions of the rows (b, d), b = 0 .. batch-1. A thread recomputes
// gp for its V positions and the W-1 after them (dx at position s needs gp up to s + W-1),
// from x over its positions and W-1 on each side, writes dx for its positions and adds its
// own positions' terms to dw and dbias; the block then sums those in a fixed order and
// writes dweight[d] and dbias[d] (no atomics: deterministic). Float32 arithmetic; SiLU's
// sigmoid with the fast exp and division, as the forward's.
//
// Packed sequences (SEQ, seq_idx (B, L) int32 / int64 with strides ss; no states): the term of
// tap k of output t, on input s = t - (W-1) + k, exists only when s >= 0 and seq_idx[b, s] ==
// seq_idx[b, t] (csrc/conv_bwd.c cbwd_row_seq), in the pre-activation, dx and dw alike; an
// output with a negative id is padding (a constant 0), so its gp is 0 (dbias sums gp over
// every position, as without). A thread loads the ids of its xw window once. The
// SEQ = false instantiations, launched when seq_idx is absent, are the kernels without it.
#ifndef SAMBA_CONV_BWD_KERNELS_CUH
#define SAMBA_CONV_BWD_KERNELS_CUH

#include "scan_common.cuh"

#define CBWD_THREADS 256
#define CBWD_V 8  // positions per thread (one Vec8)

struct CbwdParams {
    int64_t batch, dim, seqlen;
    const void *x, *dy;  // one dtype (the kernel's T)
    int64_t xs[3], dys[3];
    samba_cu_ref weight, bias, dx;  // dx (B, D, L) contiguous
    const float *init, *dfinal;     // (B, D, W-1) or NULL
    float *dweight, *dbias, *dinit;
    int silu;
    int vec;      // x and dy: unit time strides, 16-byte aligned rows
    int vec_out;  // dx: of dtype T with 16-byte aligned rows
    samba_cu_ref seq;  // seq_idx (B, L) int32 / int64, read by the SEQ kernels only
    int64_t ss[2];     // its element strides (batch, time)
};

// 8 float32 values stored as T (16-byte stores).
template <typename T> __device__ __forceinline__ void cbwd_store8(void *p, int64_t i, const float (&v)[8]);
template <> __device__ __forceinline__ void cbwd_store8<float>(void *p, int64_t i, const float (&v)[8]) {
    float4 *q = (float4 *)((float *)p + i);
    q[0] = make_float4(v[0], v[1], v[2], v[3]);
    q[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <> __device__ __forceinline__ void cbwd_store8<__nv_bfloat16>(void *p, int64_t i, const float (&v)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k]));
        const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1]));
        w[k] = lo | (hi << 16);
    }
    *(uint4 *)((__nv_bfloat16 *)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
}
template <> __device__ __forceinline__ void cbwd_store8<__half>(void *p, int64_t i, const float (&v)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t lo = __half_as_ushort(__float2half_rn(v[2 * k]));
        const uint32_t hi = __half_as_ushort(__float2half_rn(v[2 * k + 1]));
        w[k] = lo | (hi << 16);
    }
    *(uint4 *)((__half *)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
}

template <typename T, int W, bool SEQ>
__global__ void __launch_bounds__(CBWD_THREADS) conv_bwd_kernel(CbwdParams p) {
    constexpr int H = W - 1, V = CBWD_V, NX = V + 2 * H, NG = V + H;
    __shared__ float red[CBWD_THREADS / 32][W + 1];
    const int64_t L = p.seqlen, ng = (L + V - 1) / V, items = p.batch * ng;
    const bool vec = p.vec != 0;
    for (int64_t d = blockIdx.x; d < p.dim; d += gridDim.x) {
        float w[W], accw[W], accb = 0.0f;
#pragma unroll
        for (int k = 0; k < W; ++k) {
            w[k] = ldf(p.weight, d * W + k);
            accw[k] = 0.0f;
        }
        const float bias = ldf_opt(p.bias, d, 0.0f);
        for (int64_t it = threadIdx.x; it < items; it += CBWD_THREADS) {
            const int64_t b = it / ng, s0 = (it % ng) * V, row = b * p.dim + d;
            const int64_t xrow = b * p.xs[0] + d * p.xs[1], yrow = b * p.dys[0] + d * p.dys[1];
            const int nv = (int)min((int64_t)V, L - s0);
            // xw[i] = xp at position s0 - H + i; gp[j] at position s0 + j (0 past the end)
            float xw[NX], gp[NG];
            Vec8<T> xc, dc;
            if (vec && nv == V) {
                xc.vload(p.x, xrow + s0);
                dc.vload(p.dy, yrow + s0);
            } else {
                xc.sload(p.x, xrow + s0 * p.xs[2], p.xs[2], nv);
                dc.sload(p.dy, yrow + s0 * p.dys[2], p.dys[2], nv);
            }
#pragma unroll
            for (int i = 0; i < H; ++i) {
                const int64_t pos = s0 - H + i;
                xw[i] = pos >= 0 ? ldt<T>(p.x, xrow + pos * p.xs[2])
                                 : (p.init ? p.init[row * H + H + pos] : 0.0f);
                const int64_t ahead = s0 + V + i;
                xw[H + V + i] = ahead < L ? ldt<T>(p.x, xrow + ahead * p.xs[2]) : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < V; ++i) xw[H + i] = xc.get(i);
            // SEQ: sid[i] = seq_idx at xw[i]'s position (0 outside the row: such taps are
            // skipped below by their position)
            int64_t sid[NX];
            if (SEQ) {
#pragma unroll
                for (int i = 0; i < NX; ++i) {
                    const int64_t pos = s0 - H + i;
                    sid[i] = pos >= 0 && pos < L
                                 ? ldi(p.seq.ptr, p.seq.dtype, b * p.ss[0] + pos * p.ss[1])
                                 : 0;
                }
            }
#pragma unroll
            for (int j = 0; j < NG; ++j) {
                const int64_t t = s0 + j;
                float dyv = 0.0f;
                if (j < V)
                    dyv = dc.get(j);
                else if (t < L)
                    dyv = ldt<T>(p.dy, yrow + t * p.dys[2]);
                float g = dyv;
                if (p.silu) {
                    float pre = bias;
#pragma unroll
                    for (int k = 0; k < W; ++k) {
                        // tap k of t = s0 + j reads xw[j + k]; t sits at xw[j + H]
                        if (SEQ && (s0 - H + j + k < 0 || sid[j + k] != sid[j + H])) continue;
                        pre = fmaf(w[k], xw[j + k], pre);
                    }
                    const float sg = sigmoid_fast(pre);
                    g = dyv * sg * (1.0f + pre * (1.0f - sg));
                }
                gp[j] = t < L && !(SEQ && sid[j + H] < 0) ? g : 0.0f;  // padding: 0
            }
            // dx and the own positions' terms of dw, dbias
            float dxv[V];
#pragma unroll
            for (int i = 0; i < V; ++i) {
                float v = 0.0f;
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    // output t = s0 + i + H - k (at xw[i + 2H - k]) reads s = s0 + i (xw[i + H])
                    if (SEQ && (s0 + i + H - k >= L || sid[i + 2 * H - k] != sid[i + H]))
                        continue;
                    v = fmaf(w[k], gp[i + H - k], v);
                }
                const int64_t s = s0 + i;
                if (p.dfinal && s >= L - H && s < L) v += p.dfinal[row * H + s - (L - H)];
                dxv[i] = v;
                accb += gp[i];  // gp is 0 past the end
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    if (SEQ && (s0 + i - H + k < 0 || sid[i + k] != sid[i + H])) continue;
                    accw[k] = fmaf(gp[i], xw[i + k], accw[k]);
                }
            }
            const int64_t o = row * L + s0;
            if (p.vec_out && nv == V) {
                cbwd_store8<T>(p.dx.ptr, o, dxv);
            } else {
#pragma unroll
                for (int i = 0; i < V; ++i)
                    if (i < nv) stf(p.dx, o + i, dxv[i]);
            }
            if (s0 == 0 && p.dinit) {
                // padded position j - H: sum_k w[k] gp[j - k], and dfinal_states where the
                // final states reach into the initial ones (L < W-1)
#pragma unroll
                for (int j = 0; j < H; ++j) {
                    float v = 0.0f;
#pragma unroll
                    for (int k = 0; k < W; ++k)
                        if (j - k >= 0) v = fmaf(w[k], gp[j - k], v);
                    if (p.dfinal && j >= L) v += p.dfinal[row * H + j - L];
                    p.dinit[row * H + j] = v;
                }
            }
        }
        // block sums of dw and dbias in a fixed order
        const int lane = (int)(threadIdx.x & 31u), warp = (int)(threadIdx.x >> 5);
#pragma unroll
        for (int k = 0; k < W; ++k) accw[k] = warp_sum(accw[k]);
        accb = warp_sum(accb);
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < W; ++k) red[warp][k] = accw[k];
            red[warp][W] = accb;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float sw[W + 1];
#pragma unroll
            for (int k = 0; k <= W; ++k) sw[k] = 0.0f;
            for (int wi = 0; wi < CBWD_THREADS / 32; ++wi)
#pragma unroll
                for (int k = 0; k <= W; ++k) sw[k] += red[wi][k];
#pragma unroll
            for (int k = 0; k < W; ++k) p.dweight[d * W + k] = sw[k];
            if (p.dbias) p.dbias[d] = sw[W];
        }
        __syncthreads();  // red is reused by the next channel
    }
}

#endif
