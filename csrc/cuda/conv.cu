// conv.cu - depthwise causal conv1d (prefill) and its one-token update (decode).
//
// Prefill: one thread per output element (b, d, t): y = bias + sum_w weight[d, w] *
// x[t - (W-1) + w], where positions before 0 come from initial_states (or are 0), then
// optional SiLU; float32 accumulation. Consecutive threads take consecutive t, so loads of
// a (B, D, L) row are coalesced (and a token-major view is coalesced over d instead when
// the caller orders the grid that way: the index order is chosen from the strides).
// The final states (last W-1 inputs) are written by a second kernel, one thread per
// (b, d), which reads its whole row before writing: final_states may alias initial_states.
//
// Packed sequences (causal-conv1d's seq_idx, int32 or int64 (B, L) with strides ss): tap w of
// y[t] counts only when its input position s = t - (W-1) + w has s >= 0 and seq_idx[b, s] ==
// seq_idx[b, t]; y[t] = 0 where seq_idx[b, t] < 0 (padding; no states then). The kernels take it as a template flag SEQ: the SEQ = false
// instantiations, launched when seq_idx is absent, are the kernels without it.
#include "conv_seq.cuh"
#include "pack16.cuh"
#include "pdl.cuh"

#define CONV_MAX_W 8

struct ConvParams {
    int64_t batch, dim, seqlen, width;
    samba_cu_ref x, weight, bias, y;
    int64_t xs[3], ys[3];
    const float *init;
    int silu;
    int time_fastest;  // 1: thread index -> (b, d, t) with t fastest; 0: d fastest
    samba_cu_ref seq;  // seq_idx (B, L) int32 / int64, read by the SEQ kernels only
    int64_t ss[2];     // its element strides (batch, time)
};

// seq_idx[b, t] (a SEQ kernel's id of one position)
__device__ __forceinline__ int64_t conv_seq_id(const ConvParams &p, int64_t b, int64_t t) {
    return ldi(p.seq.ptr, p.seq.dtype, b * p.ss[0] + t * p.ss[1]);
}

template <bool SEQ>
__global__ void conv_fwd_kernel(ConvParams p) {
    const int64_t n = p.batch * p.dim * p.seqlen;
    const int W = (int)p.width;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t b, d, t;
        if (p.time_fastest) {
            t = i % p.seqlen;
            d = (i / p.seqlen) % p.dim;
            b = i / (p.seqlen * p.dim);
        } else {
            d = i % p.dim;
            t = (i / p.dim) % p.seqlen;
            b = i / (p.seqlen * p.dim);
        }
        const int64_t xrow = b * p.xs[0] + d * p.xs[1];
        const int64_t srow = (b * p.dim + d) * (W - 1);
        float acc = ldf_opt(p.bias, d, 0.0f);
        const int64_t sid = SEQ ? conv_seq_id(p, b, t) : 0;
        for (int w = 0; w < W; ++w) {
            const int64_t pos = t - (W - 1) + w;
            if (SEQ && (pos < 0 || conv_seq_id(p, b, pos) != sid)) continue;  // other sequence
            float xv;
            if (pos >= 0)
                xv = ldf(p.x, xrow + pos * p.xs[2]);
            else
                xv = p.init ? p.init[srow + (W - 1) + pos] : 0.0f;
            acc += ldf(p.weight, d * W + w) * xv;
        }
        if (p.silu) acc = silu_f(acc);
        if (SEQ && sid < 0) acc = 0.0f;  // padding
        stf(p.y, b * p.ys[0] + d * p.ys[1] + t * p.ys[2], acc);
    }
}

__global__ void conv_final_kernel(ConvParams p, float *final_states) {
    const int64_t n = p.batch * p.dim;
    const int W1 = (int)p.width - 1;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / p.dim, d = i % p.dim;
        const int64_t xrow = b * p.xs[0] + d * p.xs[1];
        float v[CONV_MAX_W];
#pragma unroll
        for (int j = 0; j < CONV_MAX_W - 1; ++j) {
            if (j < W1) {
                const int64_t pos = p.seqlen - W1 + j;
                if (pos >= 0)
                    v[j] = ldf(p.x, xrow + pos * p.xs[2]);
                else
                    v[j] = p.init ? p.init[i * W1 + W1 + pos] : 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < CONV_MAX_W - 1; ++j)
            if (j < W1) final_states[i * W1 + j] = v[j];
    }
}

__global__ void conv_step_kernel(int64_t batch, int64_t dim, int width, samba_cu_ref x,
                                 int64_t xs0, int64_t xs1, float *state, samba_cu_ref weight,
                                 samba_cu_ref bias, int silu, samba_cu_ref y, int64_t ys0,
                                 int64_t ys1) {
    const int64_t n = batch * dim;
    const int W1 = width - 1;
    pdl_wait();
    pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / dim, d = i % dim;
        float win[CONV_MAX_W];
#pragma unroll
        for (int j = 0; j < CONV_MAX_W - 1; ++j)
            if (j < W1) win[j] = state[i * W1 + j];
        const float xv = ldf(x, b * xs0 + d * xs1);
        float acc = ldf_opt(bias, d, 0.0f);
#pragma unroll
        for (int j = 0; j < CONV_MAX_W; ++j) {
            if (j < W1)
                acc += ldf(weight, d * width + j) * win[j];
            else if (j == W1)
                acc += ldf(weight, d * width + j) * xv;
        }
        // Shift left, append the new input.
#pragma unroll
        for (int j = 0; j < CONV_MAX_W - 1; ++j) {
            if (j < W1) state[i * W1 + j] = (j + 1 < W1) ? win[j + 1] : xv;
        }
        if (silu) acc = silu_f(acc);
        stf(y, b * ys0 + d * ys1, acc);
    }
}

// Vectorised prefill for unit time strides and 16-byte aligned rows, x and y of one dtype:
// one thread per V consecutive outputs of a row (V = 4 float32 or 8 16-bit values): the V
// inputs are one 16-byte load, the W-1 before them single loads (cached: the previous
// thread's vector) or initial_states, and the V outputs one 16-byte store. With SEQ each
// thread also loads the ids of its V + W-1 positions and drops the taps on other sequences.

// I: the index type of the thread -> (b, d, t0) decomposition, 32-bit (a few instructions
// per division instead of a 64-bit division routine) when the vector count allows.
template <typename T, typename I, bool SEQ>
__global__ void conv_fwd_vec_kernel(ConvParams p) {
    constexpr int V = Pack16<T>::N;
    const I ng = (I)((p.seqlen + V - 1) / V);
    const I dim = (I)p.dim;
    const I n = (I)(p.batch * p.dim) * ng;
    const int W = (int)p.width;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n;
         i += (I)gridDim.x * (I)blockDim.x) {
        const I rowi = i / ng, bi = rowi / dim;
        const int64_t row = (int64_t)rowi, t0 = (int64_t)(i - rowi * ng) * V;
        const int64_t b = (int64_t)bi, d = (int64_t)(rowi - bi * dim);
        const int64_t xrow = b * p.xs[0] + d * p.xs[1], yrow = b * p.ys[0] + d * p.ys[1];
        const int nv = (int)min((int64_t)V, p.seqlen - t0);
        // win[CONV_MAX_W - 1 + k - m] = x[t0 + k - m], loaded for the taps m < W (0 before
        // them); every index is a compile-time constant (a run-time one would put win in local
        // memory)
        constexpr int H = CONV_MAX_W - 1;
        float win[H + V];
#pragma unroll
        for (int j = 0; j < H; ++j) {
            const int64_t pos = t0 - H + j;
            float xv = 0.0f;
            if (j >= H - (W - 1))
                xv = pos >= 0 ? ldt<T>(p.x.ptr, xrow + pos)
                              : (p.init ? p.init[row * (W - 1) + (W - 1) + pos] : 0.0f);
            win[j] = xv;
        }
        Pack16<T> in;
        if (nv == V) {
            in.v.raw = *(const uint4 *)((const T *)p.x.ptr + xrow + t0);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) in.set(k, k < nv ? ldt<T>(p.x.ptr, xrow + t0 + k) : 0.0f);
        }
#pragma unroll
        for (int k = 0; k < V; ++k) win[H + k] = in.get(k);
        // SEQ: sid[H + k - m] = seq_idx[t0 + k - m] where that tap exists (m < W, position
        // >= 0, k < nv; the others are skipped below and their ids never read)
        int64_t sid[H + V];
        if (SEQ) {
#pragma unroll
            for (int j = 0; j < H + V; ++j) {
                const int64_t pos = t0 - H + j;
                const bool tap = j >= H - (W - 1) && pos >= 0 && j < H + nv;
                sid[j] = tap ? conv_seq_id(p, b, pos) : 0;
            }
        }
        const float bias = ldf_opt(p.bias, d, 0.0f);
        float wr[CONV_MAX_W];  // wr[m] multiplies x[t - m]
#pragma unroll
        for (int m = 0; m < CONV_MAX_W; ++m) wr[m] = m < W ? ldf(p.weight, d * W + (W - 1 - m)) : 0.0f;
        Pack16<T> out;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float acc = bias;
#pragma unroll
            for (int m = 0; m < CONV_MAX_W; ++m) {
                // a tap past the width is skipped, not multiplied by its weight 0: the input
                // it would read may be NaN / Inf (an input W or more positions back)
                if (m >= W || (SEQ && (t0 + k - m < 0 || sid[H + k - m] != sid[H + k]))) continue;
                acc += wr[m] * win[H + k - m];
            }
            if (p.silu) acc = silu_f(acc);
            if (SEQ && sid[H + k] < 0) acc = 0.0f;  // padding
            out.set(k, acc);
        }
        if (nv == V) {
            *(uint4 *)((T *)p.y.ptr + yrow + t0) = out.v.raw;
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k)
                if (k < nv) stf(p.y, yrow + t0 + k, out.get(k));
        }
    }
}

static int conv_vec_ok(const ConvParams &p) {
    const int64_t it = p.x.dtype == SAMBA_CU_F32 ? 4 : 2;
    return p.x.dtype == p.y.dtype && p.xs[2] == 1 && p.ys[2] == 1 &&
           (p.xs[0] * it) % 16 == 0 && (p.xs[1] * it) % 16 == 0 && (p.ys[0] * it) % 16 == 0 &&
           (p.ys[1] * it) % 16 == 0 && (uintptr_t)p.x.ptr % 16 == 0 &&
           (uintptr_t)p.y.ptr % 16 == 0;
}

static samba_status check_width(int64_t width) {
    if (width < 2 || width > CONV_MAX_W)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "causal_conv1d: width must be in 2..%d on CUDA, got %lld",
                                 CONV_MAX_W, (long long)width);
    return SAMBA_OK;
}

template <bool SEQ>
static void conv_fwd_launch(const ConvParams &p, cudaStream_t st) {
    const int64_t n = p.batch * p.dim * p.seqlen;
    if (conv_vec_ok(p)) {
        const int64_t V = p.x.dtype == SAMBA_CU_F32 ? 4 : 8;
        const int64_t nt = p.batch * p.dim * cdiv(p.seqlen, V);
        const unsigned grid = grid_1d(nt, 256);
        // 32-bit: i < nt < 2^31 and the grid stride <= (65535 * 32) * 256 < 2^29: no wrap.
        const bool small = nt < 0x7fffffffLL;
        if (p.x.dtype == SAMBA_CU_BF16) {
            if (small) conv_fwd_vec_kernel<__nv_bfloat16, uint32_t, SEQ><<<grid, 256, 0, st>>>(p);
            else conv_fwd_vec_kernel<__nv_bfloat16, uint64_t, SEQ><<<grid, 256, 0, st>>>(p);
        } else if (p.x.dtype == SAMBA_CU_F16) {
            if (small) conv_fwd_vec_kernel<__half, uint32_t, SEQ><<<grid, 256, 0, st>>>(p);
            else conv_fwd_vec_kernel<__half, uint64_t, SEQ><<<grid, 256, 0, st>>>(p);
        } else {
            if (small) conv_fwd_vec_kernel<float, uint32_t, SEQ><<<grid, 256, 0, st>>>(p);
            else conv_fwd_vec_kernel<float, uint64_t, SEQ><<<grid, 256, 0, st>>>(p);
        }
    } else {
        conv_fwd_kernel<SEQ><<<grid_1d(n, 256), 256, 0, st>>>(p);
    }
}

extern "C" samba_status samba_cu_conv1d_fwd(int64_t batch, int64_t dim, int64_t seqlen,
                                            int64_t width, samba_cu_ref x, const int64_t *x_s,
                                            samba_cu_ref weight, samba_cu_ref bias,
                                            const float *initial_states, float *final_states,
                                            samba_cu_ref seq_idx, const int64_t *seq_s,
                                            int silu, samba_cu_ref y, const int64_t *y_s,
                                            void *stream) {
    samba_status s = check_width(width);
    if (s != SAMBA_OK) return s;
    s = conv_seq_check("causal_conv1d", seq_idx, seq_s,
                       initial_states != NULL || final_states != NULL);
    if (s != SAMBA_OK) return s;
    const bool seq = seq_idx.ptr != NULL;
    ConvParams p;
    p.batch = batch;
    p.dim = dim;
    p.seqlen = seqlen;
    p.width = width;
    p.x = x;
    p.weight = weight;
    p.bias = bias;
    p.y = y;
    for (int i = 0; i < 3; ++i) {
        p.xs[i] = x_s[i];
        p.ys[i] = y_s[i];
    }
    p.init = initial_states;
    p.silu = silu;
    // Make the fastest-moving thread index the one with unit stride in x (coalescing).
    p.time_fastest = !(x_s[1] == 1 && x_s[2] != 1);
    p.seq = seq_idx;
    p.ss[0] = seq ? seq_s[0] : 0;
    p.ss[1] = seq ? seq_s[1] : 0;
    if (batch * dim * seqlen > 0) {
        if (seq)
            conv_fwd_launch<true>(p, (cudaStream_t)stream);
        else
            conv_fwd_launch<false>(p, (cudaStream_t)stream);
        s = samba_cu_check_launch("causal_conv1d", stream);
        if (s != SAMBA_OK) return s;
    }
    if (final_states && batch * dim > 0) {
        conv_final_kernel<<<grid_1d(batch * dim, 256), 256, 0, (cudaStream_t)stream>>>(
            p, final_states);
        s = samba_cu_check_launch("causal_conv1d (final states)", stream);
    }
    return s;
}

extern "C" samba_status samba_cu_conv1d_step(int64_t batch, int64_t dim, int64_t width,
                                             samba_cu_ref x, const int64_t *x_s,
                                             float *conv_state, samba_cu_ref weight,
                                             samba_cu_ref bias, int silu, samba_cu_ref y,
                                             const int64_t *y_s, void *stream) {
    samba_status s = check_width(width);
    if (s != SAMBA_OK) return s;
    const int64_t n = batch * dim;
    if (n == 0) return SAMBA_OK;
    samba_launch(conv_step_kernel, grid_1d(n, 256), 256, 0, (cudaStream_t)stream, batch, dim,
                 (int)width, x, x_s[0], x_s[1], conv_state, weight, bias, silu, y, y_s[0], y_s[1]);
    return samba_cu_check_launch("causal_conv1d_update", stream);
}
