// attention_bwd.cu - attention backward (samba_cu_attn_bwd): argument checks, the
// preprocessing kernel, dispatch, and the exact float32 CUDA-core kernels.
//
// Preprocessing: Delta = dout . out and lse * log2(e) (+inf where lse = -inf, so P = 0 there),
// float32 (B, H, Lq) in scratch; attn_bwd_prep_vec_kernel (16-byte loads, a group of lanes per
// row) where the rows of out and dout are 16-byte aligned, else attn_bwd_prep_kernel (one warp
// per query row, element loads). The vectorised kernel also zeroes the tensor-core path's dq
// accumulator row by row (where it is one copy and 16-byte aligned); a memset zeroes the rest.
//
// bfloat16 / float16 with aligned rows: the tensor-core kernel (attention_bwd_mma.cu) adds
// sum_j dS_ij k_j into a float32 dq accumulator (atomics), then attn_bwd_store_kernel writes
// dq = scale * acc (and dk / dv from their accumulators when the group was split). The order
// of those atomic additions varies from run to run, and so do the last bits of dq (and of dk,
// dv with the split); with a->deterministic the kernel runs without the group split and with
// S dq accumulators (slices, attn_bwd_ws) that each sum in a fixed order, and the store adds
// the slices in slice order: bit-identical results on every run (same device), for S float32
// copies of dq of scratch and some speed.
//
// Everything else - float32 inputs in particular (exact float32 arithmetic, no TF32), mixed
// dtypes, head dims that are not a multiple of 8, unaligned views - runs two CUDA-core passes
// without atomics, as csrc/attention_bwd.c does on the CPU (deterministic whatever
// a->deterministic says; so are the preprocessing and the store kernels):
//   attn_bwd_dq_kernel    grid (ceil(Lq/16), H, B), 4 warps of 4 queries; key tiles of 32 in
//                         shared memory (float32, odd row stride); lane j scores key j
//                         (q.k and dout.v), dS from P and Delta, and each lane adds
//                         dS_j k_j to the head dims it owns (c, c + 32, ...).
//   attn_bwd_dkdv_kernel  grid (ceil(Lk/16), Hkv, B), 4 warps of 4 keys; query tiles of 32 of
//                         every query head of the group; lane i scores query i, and each lane
//                         adds P_i dout_i to dv and dS_i q_i to dk for its head dims.
// Both visit only the tiles inside the window and skip masked pairs, so a NaN in a row that a
// key does not see never reaches it (as on the CPU).
#include "attention_bwd_impl.cuh"
#include "vecio.cuh"

#define AB_BQ 16   // query rows (dq pass) / key rows (dk-dv pass) per block
#define AB_BT 32   // keys (dq pass) / queries (dk-dv pass) per tile
#define AB_WARPS 4
#define AB_RPW (AB_BQ / AB_WARPS)

// ---------------------------------------------------------------- preprocessing --------
__global__ void attn_bwd_prep_kernel(samba_cu_attn_ext_args p, float *delta, float *lse2) {
    const int64_t rows = p.batch * p.seqlen_q * p.nheads;
    const int lane = threadIdx.x & 31, hd = (int)p.headdim;
    const int64_t wpb = blockDim.x >> 5;
    for (int64_t r = blockIdx.x * wpb + (threadIdx.x >> 5); r < rows; r += (int64_t)gridDim.x * wpb) {
        // r enumerates (b, h, i), i fastest: the layout of lse, delta and lse2
        const int64_t i = r % p.seqlen_q, h = (r / p.seqlen_q) % p.nheads;
        const int64_t b = r / (p.nheads * p.seqlen_q);
        const int64_t ob = b * p.o_stride[0] + i * p.o_stride[1] + h * p.o_stride[2];
        const int64_t db = b * p.do_stride[0] + i * p.do_stride[1] + h * p.do_stride[2];
        float acc = 0.0f;
        for (int c = lane; c < hd; c += 32) acc += ldf(p.dout, db + c) * ldf(p.out, ob + c);
        acc = warp_sum(acc);
        if (lane == 0) {
            const float l = p.lse[r];
            delta[r] = acc;
            lse2[r] = l == -INFINITY ? INFINITY : l * ABW_LOG2E;
        }
    }
}

// The same with 16-byte loads, where hd is a multiple of 8 and every row of out and dout starts
// 16-byte aligned (prep_vec_ok): a group of g lanes per row (g the power of two >= hd / 8, lane
// j of the group taking elements 8j .. 8j + 7), 32 / g rows per warp, and 32-bit index
// arithmetic (fewer than 2^31 rows). Loops and shuffles are warp-uniform. With dq_zero (the
// float32 dq accumulator, (B, Lq, H, hd)), the lanes also zero the row's hd floats there, in
// place of a memset of the whole accumulator: one pass over the rows instead of two.
__global__ void attn_bwd_prep_vec_kernel(samba_cu_attn_ext_args p, float *delta, float *lse2,
                                         int g, float *dq_zero) {
    const int64_t rows = p.batch * p.seqlen_q * p.nheads;
    const unsigned H = (unsigned)p.nheads, L = (unsigned)p.seqlen_q;
    const int lane = threadIdx.x & 31, sub = lane & (g - 1), nch = (int)(p.headdim >> 3);
    const int64_t rpw = 32 / g, wpb = blockDim.x >> 5;
    const int64_t step = (int64_t)gridDim.x * wpb * rpw;
    for (int64_t base = (blockIdx.x * wpb + (threadIdx.x >> 5)) * rpw; base < rows; base += step) {
        const int64_t r = base + lane / g;
        // r enumerates (b, h, i), i fastest: the layout of lse, delta and lse2, so a warp's
        // rows read and write consecutive floats there
        const unsigned ru = (unsigned)r, i = ru % L, t = ru / L, h = t % H, b = t / H;
        if (dq_zero != nullptr && r < rows && sub < nch) {  // hd is a multiple of 8
            float4 *z = reinterpret_cast<float4 *>(
                dq_zero + (((int64_t)b * L + i) * H + h) * p.headdim + 8 * sub);
            z[0] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            z[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        float acc = 0.0f;
        if (r < rows && sub < nch) {
            float x[8], y[8];
            ldv<8>(p.dout, b * p.do_stride[0] + i * p.do_stride[1] + h * p.do_stride[2] + 8 * sub, x);
            ldv<8>(p.out, b * p.o_stride[0] + i * p.o_stride[1] + h * p.o_stride[2] + 8 * sub, y);
#pragma unroll
            for (int k = 0; k < 8; ++k) acc += x[k] * y[k];
        }
        for (int o = g >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (r < rows && sub == 0) {
            const float l = p.lse[r];
            delta[r] = acc;
            lse2[r] = l == -INFINITY ? INFINITY : l * ABW_LOG2E;
        }
    }
}

static bool prep_vec_ok(const samba_cu_attn_ext_args *a) {
    if (a->headdim % 8 != 0 || a->batch * a->seqlen_q * a->nheads >= ((int64_t)1 << 31)) return false;
    for (int k = 0; k < 3; ++k)  // vec_ok checks the base address too
        if (!vec_ok(8, a->out, a->o_stride[k]) || !vec_ok(8, a->dout, a->do_stride[k])) return false;
    return true;
}

// dst[i] = scale * (src[i] + src[stride + i] + ... + src[(ns - 1) stride + i]) rounded to dst's
// dtype: the ns >= 1 slices summed in slice order (ns = 1: src[i] * scale)
__global__ void attn_bwd_store_kernel(const float *src, samba_cu_ref dst, int64_t n, float scale,
                                      int64_t ns, int64_t stride) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float acc = src[i];
        for (int64_t s = 1; s < ns; ++s) acc += src[s * stride + i];
        stf(dst, i, acc * scale);
    }
}

// The same four elements at a time (n and stride multiples of 4, src 16-byte aligned, dst
// aligned for four elements): float4 loads, one 8- or 16-byte store; the same sums.
__global__ void attn_bwd_store4_kernel(const float *src, samba_cu_ref dst, int64_t n4, float scale,
                                       int64_t ns, int64_t stride) {
    const float4 *s4 = reinterpret_cast<const float4 *>(src);
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n4;
         j += (int64_t)gridDim.x * blockDim.x) {
        float4 acc = s4[j];
        for (int64_t s = 1; s < ns; ++s) {
            const float4 x = s4[s * (stride / 4) + j];
            acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
        }
        const float v[4] = {acc.x * scale, acc.y * scale, acc.z * scale, acc.w * scale};
        stv<4>(dst, 4 * j, v);
    }
}

// ---------------------------------------------------------------- CUDA-core passes -----
// Probability and dS of one visible (query, key) pair from the raw dot products:
// x = q.k * scale * log2 e (sc = that factor), or with softcap x = q.k * scale / cap (sc) and
// s = cap log2 e tanh(x); bias2 = the ALiBi bias slope |i - j| in base-2 units (0 without),
// a constant that leaves dS's form as it is.
__device__ __forceinline__ void ab_pair(float qk, float dpv, float lse2, float dl, bool capped,
                                        float cap2, float bias2, float *pr, float *ds) {
    float t = 0.0f, x = qk;
    if (capped) {
        t = tanhf(qk);
        x = cap2 * t;
    }
    *pr = exp2f(x - bias2 - lse2);
    *ds = *pr * (dpv - dl);
    if (capped) *ds *= 1.0f - t * t;
}

__device__ __forceinline__ bool ab_visible(const samba_cu_attn_ext_args &p, int64_t i, int64_t j) {
    const int64_t pos = i + p.seqlen_k - p.seqlen_q;
    return i < p.seqlen_q && j < p.seqlen_k && (p.window_right < 0 || j <= pos + p.window_right) &&
           (p.window_left < 0 || j >= pos - p.window_left);
}

template <int DCH>
__global__ void __launch_bounds__(AB_WARPS * 32)
attn_bwd_dq_kernel(samba_cu_attn_ext_args p, const float *delta, const float *lse2) {
    extern __shared__ float smem[];
    const int hd = (int)p.headdim, ks = hd | 1;
    float *sQ = smem;             // [BQ][hd] q * sc
    float *sO = sQ + AB_BQ * hd;  // [BQ][hd] dout
    float *sK = sO + AB_BQ * hd;  // [BT][ks]
    float *sV = sK + AB_BT * ks;  // [BT][ks]
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * AB_BQ;
    const int64_t hkv = h / (p.nheads / p.nheads_kv);
    const int64_t Lq = p.seqlen_q, Lk = p.seqlen_k, off = Lk - Lq;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bool capped = p.softcap > 0.0f;
    const float sc = capped ? p.softmax_scale / p.softcap : p.softmax_scale * ABW_LOG2E;
    const float cap2 = p.softcap * ABW_LOG2E;
    const float slope2 = ab_slope2(p, b, h);

    ab_load_rows2(sQ, sO, hd, p.q, p.q_stride, p.dout, p.do_stride, b, h, q0, AB_BQ, Lq, hd, sc);
    float l2[AB_RPW], dl[AB_RPW], dq[AB_RPW][DCH];
#pragma unroll
    for (int r = 0; r < AB_RPW; ++r) {
        const int64_t q = q0 + warp * AB_RPW + r;
        const int64_t at = (b * p.nheads + h) * Lq + (q < Lq ? q : 0);
        l2[r] = lse2[at];
        dl[r] = delta[at];
#pragma unroll
        for (int c = 0; c < DCH; ++c) dq[r][c] = 0.0f;
    }
    const int64_t q_last = (q0 + AB_BQ < Lq ? q0 + AB_BQ : Lq) - 1;
    int64_t kmin = p.window_left < 0 ? 0 : q0 + off - p.window_left;
    int64_t kmax = p.window_right < 0 ? Lk - 1 : q_last + off + p.window_right;
    kmin = kmin < 0 ? 0 : kmin;
    kmax = kmax > Lk - 1 ? Lk - 1 : kmax;

    for (int64_t kbase = kmin; kbase <= kmax; kbase += AB_BT) {
        __syncthreads();
        ab_load_rows2(sK, sV, ks, p.k, p.k_stride, p.v, p.v_stride, b, hkv, kbase, AB_BT, Lk, hd,
                      1.0f);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < AB_RPW; ++r) {
            const int qi = warp * AB_RPW + r;
            const int64_t q = q0 + qi;
            if (q >= Lq) continue;  // warp-uniform
            const bool valid = ab_visible(p, q, kbase + lane);
            const unsigned vm = __ballot_sync(0xffffffffu, valid);
            if (vm == 0u) continue;
            float ds = 0.0f;
            if (valid) {
                const float *qr = sQ + qi * hd, *orow = sO + qi * hd;
                const float *kr = sK + lane * ks, *vr = sV + lane * ks;
                float qk = 0.0f, dpv = 0.0f;
                for (int c = 0; c < hd; ++c) {
                    qk += qr[c] * kr[c];
                    dpv += orow[c] * vr[c];
                }
                float pr;
                const float bias2 = slope2 * fabsf((float)(q + off - (kbase + lane)));
                ab_pair(qk, dpv, l2[r], dl[r], capped, cap2, bias2, &pr, &ds);
            }
            for (int j = 0; j < AB_BT; ++j) {
                const float dsj = __shfl_sync(0xffffffffu, ds, j);
                if (!((vm >> j) & 1u)) continue;  // warp-uniform
                const float *kr = sK + j * ks;
#pragma unroll
                for (int c = 0; c < DCH; ++c) {
                    const int col = lane + 32 * c;
                    if (col < hd) dq[r][c] += dsj * kr[col];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < AB_RPW; ++r) {
        const int64_t q = q0 + warp * AB_RPW + r;
        if (q >= Lq) continue;
        const int64_t ob = ((b * Lq + q) * p.nheads + h) * hd;
#pragma unroll
        for (int c = 0; c < DCH; ++c) {
            const int col = lane + 32 * c;
            if (col < hd) stf(p.dq, ob + col, dq[r][c] * p.softmax_scale);
        }
    }
}

template <int DCH>
__global__ void __launch_bounds__(AB_WARPS * 32)
attn_bwd_dkdv_kernel(samba_cu_attn_ext_args p, const float *delta, const float *lse2) {
    extern __shared__ float smem[];
    const int hd = (int)p.headdim, ks = hd | 1;
    float *sK = smem;             // [BQ][hd] k * sc (this block's keys)
    float *sV = sK + AB_BQ * hd;  // [BQ][hd]
    float *sQ = sV + AB_BQ * hd;  // [BT][ks] q
    float *sO = sQ + AB_BT * ks;  // [BT][ks] dout
    float *sL = sO + AB_BT * ks;  // [BT] lse * log2 e
    float *sD = sL + AB_BT;       // [BT] Delta
    const int64_t b = blockIdx.z, hk = blockIdx.y, k0 = (int64_t)blockIdx.x * AB_BQ;
    const int64_t G = p.nheads / p.nheads_kv;
    const int64_t Lq = p.seqlen_q, Lk = p.seqlen_k, off = Lk - Lq;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bool capped = p.softcap > 0.0f;
    const float sc = capped ? p.softmax_scale / p.softcap : p.softmax_scale * ABW_LOG2E;
    const float cap2 = p.softcap * ABW_LOG2E;

    ab_load_rows2(sK, sV, hd, p.k, p.k_stride, p.v, p.v_stride, b, hk, k0, AB_BQ, Lk, hd, sc);
    float dk[AB_RPW][DCH], dv[AB_RPW][DCH];
#pragma unroll
    for (int r = 0; r < AB_RPW; ++r)
#pragma unroll
        for (int c = 0; c < DCH; ++c) dk[r][c] = dv[r][c] = 0.0f;
    const int64_t k_last = (k0 + AB_BQ < Lk ? k0 + AB_BQ : Lk) - 1;
    int64_t qlo = p.window_right < 0 ? 0 : k0 - off - p.window_right;
    int64_t qhi = p.window_left < 0 ? Lq - 1 : k_last - off + p.window_left;
    qlo = qlo < 0 ? 0 : qlo;
    qhi = qhi > Lq - 1 ? Lq - 1 : qhi;

    for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        const float slope2 = ab_slope2(p, b, h);
        for (int64_t qbase = qlo; qbase <= qhi; qbase += AB_BT) {
            __syncthreads();
            ab_load_rows2(sQ, sO, ks, p.q, p.q_stride, p.dout, p.do_stride, b, h, qbase, AB_BT, Lq,
                          hd, 1.0f);
            if (tid < AB_BT) {
                const int64_t q = qbase + tid;
                const int64_t at = (b * p.nheads + h) * Lq + (q < Lq ? q : 0);
                sL[tid] = lse2[at];
                sD[tid] = delta[at];
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < AB_RPW; ++r) {
                const int kj = warp * AB_RPW + r;
                const int64_t key = k0 + kj;
                if (key >= Lk) continue;  // warp-uniform
                const bool valid = ab_visible(p, qbase + lane, key);
                const unsigned vm = __ballot_sync(0xffffffffu, valid);
                if (vm == 0u) continue;
                float pr = 0.0f, ds = 0.0f;
                if (valid) {
                    const float *kr = sK + kj * hd, *vr = sV + kj * hd;
                    const float *qr = sQ + lane * ks, *orow = sO + lane * ks;
                    float qk = 0.0f, dpv = 0.0f;
                    for (int c = 0; c < hd; ++c) {
                        qk += kr[c] * qr[c];
                        dpv += vr[c] * orow[c];
                    }
                    const float bias2 = slope2 * fabsf((float)(qbase + lane + off - key));
                    ab_pair(qk, dpv, sL[lane], sD[lane], capped, cap2, bias2, &pr, &ds);
                }
                for (int i = 0; i < AB_BT; ++i) {
                    const float pi = __shfl_sync(0xffffffffu, pr, i);
                    const float dsi = __shfl_sync(0xffffffffu, ds, i);
                    if (!((vm >> i) & 1u)) continue;  // warp-uniform
                    const float *qr = sQ + i * ks, *orow = sO + i * ks;
#pragma unroll
                    for (int c = 0; c < DCH; ++c) {
                        const int col = lane + 32 * c;
                        if (col < hd) {
                            dv[r][c] += pi * orow[col];
                            dk[r][c] += dsi * qr[col];
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < AB_RPW; ++r) {
        const int64_t key = k0 + warp * AB_RPW + r;
        if (key >= Lk) continue;
        const int64_t ob = ((b * Lk + key) * p.nheads_kv + hk) * hd;
#pragma unroll
        for (int c = 0; c < DCH; ++c) {
            const int col = lane + 32 * c;
            if (col < hd) {
                stf(p.dk, ob + col, dk[r][c] * p.softmax_scale);
                stf(p.dv, ob + col, dv[r][c]);
            }
        }
    }
}

template <int DCH>
static samba_status launch_core(const samba_cu_attn_ext_args *a, const attn_bwd_ws *ws,
                                cudaStream_t st) {
    const int hd = (int)a->headdim, ks = hd | 1;
    const size_t smem_q = (size_t)(2 * AB_BQ * hd + 2 * AB_BT * ks) * sizeof(float);
    const size_t smem_k = smem_q + 2 * AB_BT * sizeof(float);
    if (smem_k > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attn_bwd_dq_kernel<DCH>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q);
        if (e == cudaSuccess)
            e = cudaFuncSetAttribute(attn_bwd_dkdv_kernel<DCH>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_k);
        if (e != cudaSuccess) return samba_cu_fail("attention_bwd (shared memory opt-in)", e);
    }
    if (a->seqlen_q > 0) {
        dim3 grid((unsigned)cdiv(a->seqlen_q, AB_BQ), (unsigned)a->nheads, (unsigned)a->batch);
        attn_bwd_dq_kernel<DCH><<<grid, AB_WARPS * 32, smem_q, st>>>(*a, ws->delta, ws->lse2);
        samba_status s = samba_cu_check_launch("attention_bwd (dq)", st);
        if (s != SAMBA_OK) return s;
    }
    if (a->seqlen_k > 0) {
        dim3 grid((unsigned)cdiv(a->seqlen_k, AB_BQ), (unsigned)a->nheads_kv, (unsigned)a->batch);
        attn_bwd_dkdv_kernel<DCH><<<grid, AB_WARPS * 32, smem_k, st>>>(*a, ws->delta, ws->lse2);
        return samba_cu_check_launch("attention_bwd (dk, dv)", st);
    }
    return SAMBA_OK;
}

static samba_status zero_fill(samba_cu_ref r, int64_t n, cudaStream_t st) {
    if (n == 0) return SAMBA_OK;
    const cudaError_t e = cudaMemsetAsync(r.ptr, 0, (size_t)n * (r.dtype == SAMBA_CU_F32 ? 4 : 2), st);
    return e == cudaSuccess ? SAMBA_OK : samba_cu_fail("attention_bwd (memset)", e);
}

// dst (n elements) = scale * the sum of the ns slices of src, stride elements apart
static samba_status store(const float *src, samba_cu_ref dst, int64_t n, float scale, int64_t ns,
                          int64_t stride, cudaStream_t st) {
    if (n == 0) return SAMBA_OK;
    if (n % 4 == 0 && stride % 4 == 0 && (uintptr_t)src % 16 == 0 && vec_ok(4, dst, 0))
        attn_bwd_store4_kernel<<<grid_1d(n / 4, 256), 256, 0, st>>>(src, dst, n / 4, scale, ns, stride);
    else
        attn_bwd_store_kernel<<<grid_1d(n, 256), 256, 0, st>>>(src, dst, n, scale, ns, stride);
    return samba_cu_check_launch("attention_bwd (store)", st);
}

// floats of scratch before the dq accumulators: Delta and lse (nrow each), rounded up to 16
// bytes so that the accumulators start 16-byte aligned whatever nrow is (the vectorised
// preprocessing zeroes them only then; otherwise a memset would)
static int64_t dq_offset(int64_t nrow) { return (2 * nrow + 3) / 4 * 4; }

// slices: the number of dq accumulators (deterministic mode; 0 = one, shared through atomics)
static samba_status run(const samba_cu_attn_ext_args *a, float *scratch, bool mma, int wgmma,
                        int split, int64_t slices, cudaStream_t st) {
    const int64_t nrow = a->batch * a->nheads * a->seqlen_q;
    const int64_t nq = nrow * a->headdim;
    const int64_t nk = a->batch * a->seqlen_k * a->nheads_kv * a->headdim;
    const int64_t ncopy = slices > 0 ? slices : 1;  // float32 copies of dq in scratch
    attn_bwd_ws ws;
    ws.delta = scratch;
    ws.lse2 = ws.delta + nrow;
    ws.dq_acc = mma ? ws.delta + dq_offset(nrow) : nullptr;
    ws.dk_acc = mma && split > 1 ? ws.dq_acc + ncopy * nq : nullptr;
    ws.dv_acc = ws.dk_acc ? ws.dk_acc + nk : nullptr;
    ws.dq_slices = slices;
    ws.dq_slice_stride = slices > 0 ? nq : 0;
    // the tensor-core path's accumulators start at zero: dq's single copy zeroed by the
    // vectorised preprocessing as it passes each row (prep_vec_kernel), the rest (dq slices,
    // dk / dv of a split group) by the memset below
    const bool vec = prep_vec_ok(a);
    const bool zero_dq = vec && mma && slices == 0 && (uintptr_t)ws.dq_acc % 16 == 0;
    if (vec) {
        int g = 1;
        while (g < a->headdim / 8) g *= 2;
        attn_bwd_prep_vec_kernel<<<grid_1d(cdiv(nrow, 32 / g), 8), 256, 0, st>>>(
            *a, ws.delta, ws.lse2, g, zero_dq ? ws.dq_acc : nullptr);
    } else {
        attn_bwd_prep_kernel<<<grid_1d(nrow, 8), 256, 0, st>>>(*a, ws.delta, ws.lse2);
    }
    samba_status s = samba_cu_check_launch("attention_bwd (preprocess)", st);
    if (s != SAMBA_OK) return s;
    if (!mma) {
        if (a->headdim <= 64) return launch_core<2>(a, &ws, st);
        if (a->headdim <= 128) return launch_core<4>(a, &ws, st);
        return launch_core<8>(a, &ws, st);
    }
    float *const zero_from = zero_dq ? ws.dq_acc + nq : ws.dq_acc;
    const size_t acc =
        (size_t)((zero_dq ? 0 : ncopy * nq) + (ws.dk_acc ? 2 * nk : 0)) * sizeof(float);
    if (acc > 0) {
        const cudaError_t e = cudaMemsetAsync(zero_from, 0, acc, st);
        if (e != cudaSuccess) return samba_cu_fail("attention_bwd (memset)", e);
    }
    s = wgmma ? attn_bwd_wgmma(a, &ws, split, st) : attn_bwd_mma(a, &ws, split, st);
    if (s == SAMBA_OK) s = store(ws.dq_acc, a->dq, nq, a->softmax_scale, ncopy, nq, st);
    if (s == SAMBA_OK && ws.dk_acc) s = store(ws.dk_acc, a->dk, nk, 1.0f, 1, 0, st);
    if (s == SAMBA_OK && ws.dv_acc) s = store(ws.dv_acc, a->dv, nk, 1.0f, 1, 0, st);
    return s;
}

extern "C" samba_status samba_cu_attn_bwd(const samba_cu_attn_ext_args *a, void *stream) {
    samba_status s = attn_ext_check("attention_bwd", a);
    if (s != SAMBA_OK) return s;
    if (a->lse == NULL && a->batch * a->nheads * a->seqlen_q > 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "attention_bwd: lse is required");
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t nq = a->batch * a->seqlen_q * a->nheads * a->headdim;
    const int64_t nk = a->batch * a->seqlen_k * a->nheads_kv * a->headdim;
    if (nq == 0 || nk == 0) {  // no (query, key) pair: zero gradients
        s = zero_fill(a->dq, nq, st);
        if (s == SAMBA_OK) s = zero_fill(a->dk, nk, st);
        if (s == SAMBA_OK) s = zero_fill(a->dv, nk, st);
        return s;
    }
    const bool mma = attn_bwd_mma_applicable(a) != 0;
    const int wg_setting = attn_bwd_wgmma_setting();
    const int wgmma = mma && wg_setting != 0 && attn_bwd_wgmma_applicable(a);
    if (wg_setting == 2 && !wgmma)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED,
                                 "attention_bwd: SAMBA_EXT_ATTN_BWD_WGMMA=require, but the wgmma "
                                 "backward cannot run this call (it needs an sm_90 GPU and a build "
                                 "with 90 in SAMBA_EXT_CUDA_ARCHS, q / k / v / out / dout all "
                                 "bfloat16 or all float16 with 16-byte aligned rows, a head dim "
                                 "that is a multiple of 8 up to 128, deterministic=False and no "
                                 "alibi_slopes); "
                                 "unset it to use the other kernels");
    const int split = mma ? attn_bwd_mma_group_split(a, wgmma) : 1;  // 1 when deterministic
    // dq slices: only the tensor-core path sums with atomics (attn_bwd_mma_dq_slices)
    const int64_t slices = mma && a->deterministic ? attn_bwd_mma_dq_slices(a) : 0;
    const int64_t nrow = a->batch * a->nheads * a->seqlen_q;
    const int64_t ndq = mma ? (slices > 0 ? slices : 1) * nq : 0;
    const size_t n = (size_t)(dq_offset(nrow) + ndq + (mma && split > 1 ? 2 * nk : 0));
    void *scratch = NULL;
    s = samba_cu_malloc(&scratch, n * sizeof(float), st);
    if (s != SAMBA_OK) return s;
    s = run(a, (float *)scratch, mma, wgmma, split, slices, st);
    const samba_status s2 = samba_cu_free(scratch, st);
    return s != SAMBA_OK ? s : s2;
}
