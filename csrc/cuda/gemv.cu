// gemv.cu - y (M, N) = x (M, K) @ W (N, K)^T [+ beta y] for small M (1..8), bf16 / fp16 in,
// float32 accumulation, y float32 or the input dtype: a weight-streaming kernel for batch-1
// decode, where cuBLAS picks tensor-core tiles (nvjet ..x8) that read W at 1.7-3 TB/s.
// SAMBA_EXT_GEMV (read once; samba_cu_gemv_set overrides it): 1 for every M <= 8, 0 never,
// else (the default) only for M = 1 on devices where the kernels launch with programmatic
// dependent launch (pdl.cuh): there the weights start streaming while the kernel before runs,
// and a batch-1 decode step of samba-1.7b is 4-6% faster than on cuBLAS (benchmarks/results/
// gpu_decode_prefetch.md); gemm.cu calls samba_cu_gemv first and keeps its cuBLAS path
// whenever this returns *done = 0.
//
// Design
// - A block is 8 warps; a warp owns R = 4 consecutive rows n of W and one K-slice (split s of
//   S). Each lane reads W[n, k..k+VEC) as one vector load (VEC = 8 bf16 = 16 bytes when W's
//   base and row pitch are 16-byte aligned, VEC = 4 (8 bytes) when only 8-byte aligned, e.g.
//   K = 8196 whose rows are 16392 bytes apart; otherwise cuBLAS runs). Per step a lane issues
//   R x U loads (U = 16 / VEC, 128 bytes in flight per lane, 32 KiB per block) through
//   ld.global.nc.L1::no_allocate (W is read once per call), then multiplies them with x.
// - x's K-slice is staged once per block in shared memory in its own 16-bit format (32 KiB:
//   MT x slice <= 16384 elements), read back as vectors (conflict-free: lane j reads bytes
//   [16 j, 16 j + 16)), one x vector reused by the warp's R rows. x may have any alignment
//   and row stride (it is copied with 16-byte loads when aligned, element by element if not).
// - Products accumulate in float32 per lane in a fixed order, then a butterfly warp sum
//   (deterministic). Elements past the last whole vector of a row (K % VEC) are a scalar tail
//   done by the last split.
// - Split-K: S = 1 when ceil(N / 32) blocks already cover 2 x #SMs; else S grows towards 4 x
//   #SMs blocks, keeping >= 32 U vectors of a row per split, and at least what the 32 KiB of
//   shared memory needs. S > 1 writes float32 partials (S, M, N) into the caller's stream
//   workspace (gemm.cu's per-stream cuBLAS workspace, 32 MiB, stream-ordered with cuBLAS's
//   own use) and a second kernel sums them in split order (deterministic, no atomics) and
//   applies beta / the output dtype. Nothing is allocated here, so the call can be captured in
//   a CUDA graph; without a workspace (first GEMM of a stream inside a capture) only S = 1 can
//   run, else cuBLAS does.
// - One row of x (M = 1) with x aligned as W's rows runs gemv_row_kernel instead: a row of W
//   per 1-8 warps, their sums meeting in shared memory, so no product needs split-K partials
//   or a second kernel (SAMBA_EXT_GEMV_ROWS=0 keeps gemv_kernel, for comparisons). Its
//   prologue variants make x itself in shared memory, in every block, from the arrays an
//   elementwise kernel would have read (fused_gemm.cu): rms_norm(x0 [+ residual]) with
//   norm.cu's arithmetic and summation order (block 0 also writes the residual sum), or
//   silu(gate) * up as swiglu.cu computes it; x is then bit for bit what the elementwise kernel
//   would have stored, and the step has one launch fewer (SAMBA_EXT_GEMV_FUSE=0 turns them off,
//   for comparisons).
// - M is compiled as MT in {1, 2, 4, 8}: M = 3 runs MT = 4 with its 4th row a copy of row 0
//   whose results are not stored.
//
// Bytes and predicted time per decode shape of samba-1.7b at M = 1 (bf16 W; H200, copy
// bandwidth ~4.2 TB/s; fixed cost ~2 us per call in a graph plus ~1.5 us for the reduce pass
// when S > 1; these are predictions, benchmarks/gpu_gemv.py measures them):
//   K -> N            W bytes   VEC  blocks x S   predicted    TB/s   (cuBLAS, trace 0f03b51)
//   2048 -> 2560      10.5 MB   8    80 x 4       ~6.0 us      ~1.8   (nvjet 64x8, ~5-10 us)
//   2048 -> 2048       8.4 MB   8    64 x 4       ~5.5 us      ~1.5   (nvjet 64x8 + splitK)
//   2048 -> 8192      33.6 MB   8    256 x 2      ~11.5 us     ~2.9
//   4096 -> 160        1.3 MB   8    5 x 8        ~3.8 us      ~0.35
//   128 -> 4096        1.0 MB   8    128 x 1      ~2.3 us      ~0.45
//   4096 -> 2048      16.8 MB   8    64 x 8       ~7.5 us      ~2.2
//   2048 -> 16392     67.1 MB   8    513 x 1      ~18 us       ~3.7   (gemvx 16.9 us, ~4.0)
//   8196 -> 2048      33.6 MB   4    64 x 9       ~12 us       ~2.8   (nvjet 128x8, 19.4 us)
//   2048 -> 50304      206 MB   8    1572 x 1     ~52 us       ~4.0   (nvjet 384x8, 54 us)
// Per samba-1.7b decode step (24 layers, 12 mamba: in_proj, x_proj, dt_proj, out_proj; 12
// attention: qkv, out; 24 MLPs: gate+up, down; the head): ~1.2 ms of GEMM time predicted
// against 1.40 ms of cuBLAS kernels in that trace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_internal.cuh"
#include "pdl.cuh"
#include "vecio.cuh"

#define GEMV_WARPS 8
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_R 4                  // rows of W per warp
#define GEMV_SMEM_ELEMS 16384     // x slice in shared memory: 16-bit elements (32 KiB)
#define GEMV_MAX_SPLITS 1024
#define GEMV_MAX_DEVICES 64
#define GEMV_SWIGLU 8             // gemv_row_kernel's NC for the SwiGLU prologue
#define GEMV_PRO_ELEMS (4 * GEMV_THREADS * 8)  // a prologue's row in shared memory: K <= 8192

struct GemvArgs {
    const void *w;      // W (N, K), row pitch ldw elements
    int64_t ldw, N, K;
    const void *x;      // row m of x starts at element xoff[m] (m < MT; padded rows repeat 0)
    int64_t xoff[SAMBA_GEMV_MAX_M];
    void *y;            // row m of y starts at element yoff[m]
    int64_t yoff[SAMBA_GEMV_MAX_M];
    int ydt, M;         // y's dtype, real rows (<= MT)
    float beta;
    float *part;        // S > 1: float32 partial sums (S, M, N)
    int64_t cps;        // vectors of a row per split
    int xs_stride;      // elements between x rows in shared memory (multiple of 8)
    int wpr;            // gemv_row_kernel: warps per row of W
    int64_t vps;        // gemv_row_kernel: vectors of a row per warp
};

// samba_cu_gemv_rms: x = rms_norm(x0 [+ res]) (see norm_prologue).
struct GemvNorm {
    samba_cu_ref x, res, res_out, w;  // x0 (K), residual (K) or ptr NULL, residual_out, weight
    float eps;
    int tn;                           // threads of norm.cu's kernel for a row of K elements
};

// ------------------------------------------------------------------ device helpers -----
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t u);
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t u) {
    __half2 h;
    memcpy(&h, &u, sizeof h);
    return __half22float2(h);
}

template <typename T> __device__ __forceinline__ float unpack1(unsigned short u);
template <> __device__ __forceinline__ float unpack1<__nv_bfloat16>(unsigned short u) {
    return __uint_as_float((uint32_t)u << 16);
}
template <> __device__ __forceinline__ float unpack1<__half>(unsigned short u) {
    return __half2float(__ushort_as_half(u));
}

// One VEC-element vector of W, streamed past L1 (read once per call).
template <int VEC> __device__ __forceinline__ void ld_w(const void *p, uint32_t (&v)[VEC / 2]);
template <> __device__ __forceinline__ void ld_w<8>(const void *p, uint32_t (&v)[4]) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
        : "l"(p));
}
template <> __device__ __forceinline__ void ld_w<4>(const void *p, uint32_t (&v)[2]) {
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];"
        : "=r"(v[0]), "=r"(v[1])
        : "l"(p));
}

// One VEC-element vector of x from shared memory.
template <int VEC>
__device__ __forceinline__ void ld_x(const unsigned short *p, uint32_t (&v)[VEC / 2]);
template <> __device__ __forceinline__ void ld_x<8>(const unsigned short *p, uint32_t (&v)[4]) {
    uint4 t = *reinterpret_cast<const uint4 *>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
template <> __device__ __forceinline__ void ld_x<4>(const unsigned short *p, uint32_t (&v)[2]) {
    uint2 t = *reinterpret_cast<const uint2 *>(p);
    v[0] = t.x, v[1] = t.y;
}

// One VEC-element vector of x from global memory (read-only path, kept in L1).
template <int VEC>
__device__ __forceinline__ void ld_xg(const unsigned short *p, uint32_t (&v)[VEC / 2]);
template <> __device__ __forceinline__ void ld_xg<8>(const unsigned short *p, uint32_t (&v)[4]) {
    const uint4 t = __ldg(reinterpret_cast<const uint4 *>(p));
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
template <> __device__ __forceinline__ void ld_xg<4>(const unsigned short *p, uint32_t (&v)[2]) {
    const uint2 t = __ldg(reinterpret_cast<const uint2 *>(p));
    v[0] = t.x, v[1] = t.y;
}

__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ void store_out(const GemvArgs &a, int64_t off, float v) {
    if (a.beta != 0.0f) v += a.beta * ldf(a.y, a.ydt, off);
    stf(a.y, a.ydt, off, v);
}

// p[0] + p[stride] + ... + p[(S - 1) stride], summed in that order (the same bits whichever
// kernel sums), read from L2 (other blocks wrote them); the first 16 loads are issued before
// the sum waits for any.
__device__ __forceinline__ float sum_splits(const float *p, int64_t stride, int S) {
    float t[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) t[k] = k < S ? __ldcg(p + k * stride) : 0.0f;
    float v = 0.0f;
#pragma unroll
    for (int k = 0; k < 16; ++k)
        if (k < S) v += t[k];
    for (int k = 16; k < S; ++k) v += __ldcg(p + k * stride);
    return v;
}

// ------------------------------------------------------------------ kernels -------------
// grid (ceil(N / (8 R)), S); block 256. Split s covers vectors [s cps, min((s+1) cps, K/VEC))
// of every row, the last split also the scalar tail [VEC (K/VEC), K).
template <typename T, int MT, int VEC>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_kernel(const GemvArgs a) {
    constexpr int U = 16 / VEC;  // vectors per lane per step
    constexpr int W2 = VEC / 2;  // 32-bit words per vector
    constexpr int R = GEMV_R;
    __shared__ __align__(16) unsigned short xs[GEMV_SMEM_ELEMS];

    const int s = blockIdx.y;
    const bool last = s == (int)gridDim.y - 1;
    const int64_t nvec = a.K / VEC;
    const int64_t c0 = imin64((int64_t)s * a.cps, nvec);
    const int64_t c1 = imin64(c0 + a.cps, nvec);
    const int64_t k0 = c0 * VEC;
    const int ks = (int)((last ? a.K : c1 * VEC) - k0);  // elements of x staged per row
    const int xst = a.xs_stride;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t nb = ((int64_t)blockIdx.x * GEMV_WARPS + warp) * R;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Launched as a dependent kernel (pdl.cuh), the block starts while the kernel before it
    // still runs: its rows of W begin streaming into L2 now, the loads below find them there.
    if (nb < a.N) {
        const int64_t bytes = (int64_t)ks * 2, lines = (bytes + 127) >> 7;
        for (int r = 0; r < R && nb + r < a.N; ++r) {
            const char *row = static_cast<const char *>(a.w) + ((nb + r) * a.ldw + k0) * 2;
            for (int64_t l = lane; l < lines; l += 32)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(row + (l << 7)));
        }
    }
#endif
    pdl_wait();
    pdl_trigger();

    // Stage x[:, k0 : k0 + ks) (16-bit raw copies).
    const unsigned short *xg = static_cast<const unsigned short *>(a.x);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        const unsigned short *src = xg + a.xoff[m] + k0;
        unsigned short *dst = xs + m * xst;
        int i0 = 0;
        if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
            const int nv = ks >> 3;
            for (int i = threadIdx.x; i < nv; i += GEMV_THREADS)
                reinterpret_cast<uint4 *>(dst)[i] = __ldg(reinterpret_cast<const uint4 *>(src) + i);
            i0 = nv << 3;
        }
        for (int i = i0 + threadIdx.x; i < ks; i += GEMV_THREADS) dst[i] = src[i];
    }
    __syncthreads();

    if (nb >= a.N) return;  // no barrier below
    const char *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t n = imin64(nb + r, a.N - 1);  // rows past N re-read row N-1, not stored
        wr[r] = static_cast<const char *>(a.w) + n * a.ldw * 2;
    }
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

    for (int64_t c = c0 + lane; c < c1; c += 32 * U) {
        uint32_t wv[U][R][W2];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t cc = c + 32 * u;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (cc < c1) {
                    ld_w<VEC>(wr[r] + cc * (VEC * 2), wv[u][r]);
                } else {
#pragma unroll
                    for (int e = 0; e < W2; ++e) wv[u][r][e] = 0u;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t cc = c + 32 * u;
            if (cc < c1) {
                const unsigned short *xp = xs + (cc - c0) * VEC;
                uint32_t xv[MT][W2];
#pragma unroll
                for (int m = 0; m < MT; ++m) ld_x<VEC>(xp + m * xst, xv[m]);
#pragma unroll
                for (int e = 0; e < W2; ++e) {
                    float2 xf[MT];
#pragma unroll
                    for (int m = 0; m < MT; ++m) xf[m] = unpack2<T>(xv[m][e]);
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const float2 wf = unpack2<T>(wv[u][r][e]);
#pragma unroll
                        for (int m = 0; m < MT; ++m) {
                            acc[r][m] = fmaf(wf.x, xf[m].x, acc[r][m]);
                            acc[r][m] = fmaf(wf.y, xf[m].y, acc[r][m]);
                        }
                    }
                }
            }
        }
    }
    if (last) {  // the scalar tail: K % VEC < 32 elements, one per lane
        const int64_t kt = nvec * VEC;
        if (lane < (int)(a.K - kt)) {
            const int64_t k = kt + lane;
            float xf[MT];
#pragma unroll
            for (int m = 0; m < MT; ++m) xf[m] = unpack1<T>(xs[m * xst + (int)(k - k0)]);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float wf =
                    unpack1<T>(reinterpret_cast<const unsigned short *>(wr[r])[k]);
#pragma unroll
                for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(wf, xf[m], acc[r][m]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = warp_sum(acc[r][m]);
    // R MT <= 32 results, one per lane.
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const int64_t n = nb + r;
            if (lane == r * MT + m && m < a.M && n < a.N) {
                if (gridDim.y == 1)
                    store_out(a, a.yoff[m] + n, acc[r][m]);
                else
                    a.part[((int64_t)s * a.M + m) * a.N + n] = acc[r][m];
            }
        }
}

// One row of x (M = 1): WPR = a.wpr warps share a row of W, warp j of the row taking vectors
// [j vps, (j + 1) vps) and the last one the scalar tail; the WPR warp sums meet in shared
// memory (summed in warp order), so the product is one kernel at every N: no split-K partials
// in global memory and no reduce kernel. A block of 8 warps covers 8 / WPR rows. x (16- or
// 8-byte aligned, as W's rows) is read straight from global memory through the L1 (every row
// of the block reads it). Lanes keep 4 vectors of W and x in flight per step.
template <typename T> __host__ __device__ constexpr int dtype_code();
template <> __host__ __device__ constexpr int dtype_code<__nv_bfloat16>() { return SAMBA_CU_BF16; }
template <> __host__ __device__ constexpr int dtype_code<__half>() { return SAMBA_CU_F16; }

// The prologue of gemv_row_kernel<T, VEC, NC > 0> (samba_cu_gemv_rms): x = rms_norm(x0
// [+ residual]) of one row of n = K elements, rounded to T into shared memory, computed by
// every block with the arithmetic and summation order of norm.cu's rmsnorm_reg_kernel at E = 8
// with `tn` threads and NC chunks per thread (the same bits as that kernel's y); block 0 also
// writes residual_out. red: GEMV_WARPS floats of shared memory.
template <typename T, int NC>
__device__ __forceinline__ void norm_prologue(const GemvNorm &nm, int64_t n, unsigned short *xn,
                                              float *red) {
    constexpr int E = 8;
    const int t = threadIdx.x;
    const int nch = (int)(n / E);
    const bool act = t < nm.tn;
    float v[NC][E];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NC; ++j) {
        const int c = t + j * nm.tn;
        if (act && c < nch) {
            const int64_t col = (int64_t)c * E;
            RawV<E> rx, rr;
            ldraw<E>(nm.x, col, rx);
            if (nm.res.ptr) ldraw<E>(nm.res, col, rr);
            cvt<E>(rx, nm.x.dtype, v[j]);
            if (nm.res.ptr) {
                float r[E];
                cvt<E>(rr, nm.res.dtype, r);
#pragma unroll
                for (int k = 0; k < E; ++k) v[j][k] = round_to(nm.res_out.dtype, v[j][k] + r[k]);
                if (blockIdx.x == 0) stv<E>(nm.res_out, col, v[j]);
            }
#pragma unroll
            for (int k = 0; k < E; ++k) ss += v[j][k] * v[j][k];
        }
    }
    ss = warp_sum(ss);
    if ((t & 31) == 0) red[t >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < nm.tn / 32; ++k) tot += red[k];
    const float r = 1.0f / sqrtf(tot / (float)n + nm.eps);
#pragma unroll
    for (int j = 0; j < NC; ++j) {
        const int c = t + j * nm.tn;
        if (act && c < nch) {
            const int64_t col = (int64_t)c * E;
            float wl[E], o[E];
            ldv<E>(nm.w, col, wl);
#pragma unroll
            for (int k = 0; k < E; ++k) o[k] = v[j][k] * r * wl[k];
            unsigned w4[4];
            pack_words<4>(o, dtype_code<T>(), w4);
            *reinterpret_cast<uint4 *>(xn + col) = make_uint4(w4[0], w4[1], w4[2], w4[3]);
        }
    }
    __syncthreads();
}

// The prologue of gemv_row_kernel<T, VEC, GEMV_SWIGLU> (samba_cu_gemv_swiglu): x = silu(gate)
// * up over the K elements of one row (pr.x = gate, pr.res = up), computed as swiglu.cu's
// kernel does element by element (the same bits), rounded to T into shared memory.
template <typename T>
__device__ __forceinline__ void swiglu_prologue(const GemvNorm &pr, int64_t n,
                                                unsigned short *xn) {
    constexpr int E = 8;
    const int nch = (int)(n / E);
    for (int c = threadIdx.x; c < nch; c += GEMV_THREADS) {
        const int64_t col = (int64_t)c * E;
        RawV<E> ra, rb;
        ldraw<E>(pr.x, col, ra);
        ldraw<E>(pr.res, col, rb);
        float a[E], b[E], o[E];
        cvt<E>(ra, pr.x.dtype, a);
        cvt<E>(rb, pr.res.dtype, b);
#pragma unroll
        for (int e = 0; e < E; ++e) o[e] = silu_f(a[e]) * b[e];
        unsigned w4[4];
        pack_words<4>(o, dtype_code<T>(), w4);
        *reinterpret_cast<uint4 *>(xn + col) = make_uint4(w4[0], w4[1], w4[2], w4[3]);
    }
    __syncthreads();
}

// NC = 0: x from global memory; NC in 1..4: x = norm_prologue's row in shared memory;
// NC = GEMV_SWIGLU: x = swiglu_prologue's row.
template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_row_kernel(const GemvArgs a,
                                                                const GemvNorm nm) {
    constexpr int W2 = VEC / 2, U = 4;
    __shared__ float part[GEMV_WARPS];
    __shared__ __align__(16) unsigned short xn[NC > 0 ? GEMV_PRO_ELEMS : 8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rb = GEMV_WARPS / a.wpr;
    const int64_t n = (int64_t)blockIdx.x * rb + warp / a.wpr;
    const int j = warp % a.wpr;
    const int64_t nvec = a.K / VEC;
    const int64_t c0 = imin64((int64_t)j * a.vps, nvec), c1 = imin64(c0 + a.vps, nvec);
    const bool row = n < a.N;
    const char *wr = static_cast<const char *>(a.w) + (row ? n : 0) * a.ldw * 2;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (row) {  // as in gemv_kernel: the slice of W streams into L2 before the wait
        const int64_t lines = ((c1 - c0) * VEC * 2 + 127) >> 7;
        for (int64_t l = lane; l < lines; l += 32)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + c0 * VEC * 2 + (l << 7)));
    }
#endif
    pdl_wait();
    pdl_trigger();
    const unsigned short *xg = static_cast<const unsigned short *>(a.x) + a.xoff[0];
    if constexpr (NC == GEMV_SWIGLU) {
        swiglu_prologue<T>(nm, a.K, xn);
        xg = xn;
    } else if constexpr (NC > 0) {
        norm_prologue<T, NC>(nm, a.K, xn, part);
        xg = xn;
    }
    float acc = 0.0f;
    if (row) {
        for (int64_t c = c0 + lane; c < c1; c += 32 * U) {
            uint32_t wv[U][W2], xv[U][W2];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int64_t cc = c + 32 * u;
                if (cc < c1) {
                    ld_w<VEC>(wr + cc * (VEC * 2), wv[u]);
                    if constexpr (NC > 0) ld_x<VEC>(xg + cc * VEC, xv[u]);
                    else ld_xg<VEC>(xg + cc * VEC, xv[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < W2; ++e) wv[u][e] = xv[u][e] = 0u;
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int e = 0; e < W2; ++e) {
                    const float2 wf = unpack2<T>(wv[u][e]), xf = unpack2<T>(xv[u][e]);
                    acc = fmaf(wf.x, xf.x, acc);
                    acc = fmaf(wf.y, xf.y, acc);
                }
        }
        const int64_t kt = nvec * VEC;
        if (j == a.wpr - 1 && lane < (int)(a.K - kt))
            acc = fmaf(unpack1<T>(reinterpret_cast<const unsigned short *>(wr)[kt + lane]),
                       unpack1<T>(xg[kt + lane]), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if ((int)threadIdx.x < rb) {
        const int64_t nn = (int64_t)blockIdx.x * rb + threadIdx.x;
        if (nn < a.N) {
            float v = 0.0f;
            for (int k = 0; k < a.wpr; ++k) v += part[threadIdx.x * a.wpr + k];
            store_out(a, a.yoff[0] + nn, v);
        }
    }
}

// y[m, n] = sum over the S splits in order of part[s, m, n] (+ beta y).
__global__ void gemv_reduce_kernel(const GemvArgs a, int S) {
    const int64_t total = (int64_t)a.M * a.N;
    pdl_wait();
    pdl_trigger();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t m = i / a.N, n = i - m * a.N;
        const float v = sum_splits(a.part + i, total, S);
        store_out(a, a.yoff[m] + n, v);
    }
}

// ------------------------------------------------------------------ host ----------------
static int g_gemv = -1;  // SAMBA_GEMV_* once known

extern "C" int samba_cu_gemv_enabled(void) {
    if (g_gemv < 0) {
        const char *v = getenv("SAMBA_EXT_GEMV");
        g_gemv = SAMBA_GEMV_AUTO;
        if (v != NULL && strcmp(v, "1") == 0) g_gemv = SAMBA_GEMV_ON;
        if (v != NULL && strcmp(v, "0") == 0) g_gemv = SAMBA_GEMV_OFF;
    }
    return g_gemv;
}

extern "C" samba_status samba_cu_gemv_set(int on) {
    if (on != SAMBA_GEMV_OFF && on != SAMBA_GEMV_ON && on != SAMBA_GEMV_AUTO)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemv: expected 0, 1 or 2, got %d", on);
    g_gemv = on;
    return SAMBA_OK;
}

static int g_sms[GEMV_MAX_DEVICES];
static long long g_launches;  // calls that ran the GEMV (tests check the dispatch with it)

static long long g_rms_launches;     // of which rms_norm fused (samba_cu_gemv_rms)
static long long g_swiglu_launches;  // of which SwiGLU fused (samba_cu_gemv_swiglu)

extern "C" long long samba_cu_gemv_launches(int which) {
    return which == 1 ? g_rms_launches : which == 2 ? g_swiglu_launches : g_launches;
}

template <typename T, int MT, int VEC>
static void launch_mt(const GemvArgs &a, dim3 grid, cudaStream_t st) {
    samba_launch(gemv_kernel<T, MT, VEC>, grid, GEMV_THREADS, 0, st, a);
}

template <typename T, int VEC>
static void launch_vec(const GemvArgs &a, int mt, dim3 grid, cudaStream_t st) {
    switch (mt) {
    case 1: launch_mt<T, 1, VEC>(a, grid, st); break;
    case 2: launch_mt<T, 2, VEC>(a, grid, st); break;
    case 4: launch_mt<T, 4, VEC>(a, grid, st); break;
    default: launch_mt<T, 8, VEC>(a, grid, st); break;
    }
}

// SAMBA_EXT_GEMV_ROWS=0 keeps one-row products on gemv_kernel, for comparisons (read at each
// call, so a benchmark can switch it between captures).
static int gemv_rows_on(void) {
    const char *v = getenv("SAMBA_EXT_GEMV_ROWS");
    return !(v != NULL && strcmp(v, "0") == 0);
}

// The arguments every kernel here shares (the rest zero): rows m >= M repeat row 0's offsets.
static GemvArgs gemv_args(int64_t M, int64_t N, int64_t K, samba_cu_ref x, const int64_t *xoff,
                          samba_cu_ref w, int64_t ldw, samba_cu_ref y, const int64_t *yoff,
                          float beta) {
    GemvArgs a;
    memset(&a, 0, sizeof a);
    a.w = w.ptr;
    a.ldw = ldw;
    a.N = N;
    a.K = K;
    a.x = x.ptr;
    a.y = y.ptr;
    for (int m = 0; m < SAMBA_GEMV_MAX_M; ++m) {
        a.xoff[m] = m < M ? xoff[m] : xoff[0];
        a.yoff[m] = m < M ? yoff[m] : yoff[0];
    }
    a.ydt = y.dtype;
    a.M = (int)M;
    a.beta = beta;
    return a;
}

// gemv_row_kernel for y (1, N) = x @ W^T: the fewest warps per row (1, 2, 4 or 8) that give
// 2 x #SMs blocks, as long as each warp keeps >= 32 vectors of its row (one per lane).
// nc > 0: x is rms_norm(nm) (samba_cu_gemv_rms), made by every block in shared memory.
template <typename T, int VEC>
static void launch_row_t(unsigned grid, const GemvArgs &a, const GemvNorm &nm, int nc,
                         cudaStream_t st) {
    switch (nc) {
    case 0: samba_launch(gemv_row_kernel<T, VEC, 0>, grid, GEMV_THREADS, 0, st, a, nm); break;
    case 1: samba_launch(gemv_row_kernel<T, VEC, 1>, grid, GEMV_THREADS, 0, st, a, nm); break;
    case 2: samba_launch(gemv_row_kernel<T, VEC, 2>, grid, GEMV_THREADS, 0, st, a, nm); break;
    case 4: samba_launch(gemv_row_kernel<T, VEC, 4>, grid, GEMV_THREADS, 0, st, a, nm); break;
    default:
        samba_launch(gemv_row_kernel<T, VEC, GEMV_SWIGLU>, grid, GEMV_THREADS, 0, st, a, nm);
        break;
    }
}

static samba_status launch_row(int *done, int64_t N, int64_t K, samba_cu_ref x, int64_t xoff,
                               samba_cu_ref w, int64_t ldw, samba_cu_ref y, int64_t yoff,
                               float beta, int vec, int64_t sms, const GemvNorm &nm, int nc,
                               cudaStream_t st) {
    const int64_t nvec = K / vec;
    int wpr = 1;
    while (wpr < GEMV_WARPS && cdiv(N * wpr, GEMV_WARPS) < 2 * sms && nvec / (2 * wpr) >= 32)
        wpr *= 2;
    GemvArgs a = gemv_args(1, N, K, x, &xoff, w, ldw, y, &yoff, beta);
    a.wpr = wpr;
    a.vps = nvec > 0 ? cdiv(nvec, wpr) : 0;
    const unsigned grid = (unsigned)cdiv(N, GEMV_WARPS / wpr);
    if (w.dtype == SAMBA_CU_BF16) {
        if (vec == 8) launch_row_t<__nv_bfloat16, 8>(grid, a, nm, nc, st);
        else launch_row_t<__nv_bfloat16, 4>(grid, a, nm, nc, st);
    } else {
        if (vec == 8) launch_row_t<__half, 8>(grid, a, nm, nc, st);
        else launch_row_t<__half, 4>(grid, a, nm, nc, st);
    }
    *done = 1;
    g_launches++;
    if (nc == GEMV_SWIGLU) g_swiglu_launches++;
    else if (nc) g_rms_launches++;
    return samba_cu_check_launch(nc == GEMV_SWIGLU ? "gemv (one row, swiglu)"
                                 : nc ? "gemv (one row, rms_norm)" : "gemv (one row)", st);
}

// SAMBA_EXT_GEMV_FUSE (read at each call, for comparisons): "0" runs the elementwise steps
// of fused_gemm.cu apart, "rms" / "swiglu" fuses only that one, anything else (unset) both.
static int fuse_on(const char *which) {
    const char *v = getenv("SAMBA_EXT_GEMV_FUSE");
    if (v == NULL) return 1;
    if (strcmp(v, "0") == 0) return 0;
    if (strcmp(v, "rms") == 0 || strcmp(v, "swiglu") == 0) return strcmp(v, which) == 0;
    return 1;
}

// SAMBA_GEMV_ON / AUTO allows a one-row product here; the W vector width (8 or 4 elements,
// from W's base and row pitch), 0 when W is not 8-byte aligned (cuBLAS then).
static int w_vec(samba_cu_ref w, int64_t N, int64_t ldw) {
    const uintptr_t wa = reinterpret_cast<uintptr_t>(w.ptr);
    const int64_t pitch = ldw * 2;
    if (wa % 16 == 0 && (N == 1 || pitch % 16 == 0)) return 8;
    if (wa % 8 == 0 && (N == 1 || pitch % 8 == 0)) return 4;
    return 0;
}

static samba_status sm_count(int64_t *sms) {
    int dev = 0;
    *sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return samba_cu_fail("gemv: cudaGetDevice", e);
    if (dev < 0 || dev >= GEMV_MAX_DEVICES) return SAMBA_OK;
    if (g_sms[dev] == 0) {
        int n = 0;
        e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
        if (e != cudaSuccess) return samba_cu_fail("gemv: cudaDeviceGetAttribute", e);
        g_sms[dev] = n > 0 ? n : 1;
    }
    *sms = g_sms[dev];
    return SAMBA_OK;
}

extern "C" int samba_cu_gemv_row_plain(int64_t N, int64_t K, samba_cu_ref x, samba_cu_ref w,
                                       int64_t ldw, samba_cu_ref y) {
    // samba_cu_gemm's and samba_cu_gemv's gates for M = 1, then launch_row's choice of vector
    // width (w_vec, x's alignment) and warps per row (1 while K / 8 < 64)
    const int on = samba_cu_gemv_enabled();
    if (on == SAMBA_GEMV_OFF || (on == SAMBA_GEMV_AUTO && !samba_cu_pdl_enabled()) ||
        !gemv_rows_on())
        return 0;
    if (N < 1 || N > INT32_MAX || K < 8 || K % 8 != 0 || K > 256) return 0;
    if (x.dtype != w.dtype || (x.dtype != SAMBA_CU_BF16 && x.dtype != SAMBA_CU_F16)) return 0;
    if (y.dtype != SAMBA_CU_F32 && y.dtype != x.dtype) return 0;
    if (w_vec(w, N, ldw) != 8 || reinterpret_cast<uintptr_t>(x.ptr) % 16 != 0) return 0;
    int64_t sms = 0;
    return sm_count(&sms) == SAMBA_OK && sms > 0;
}

// What both prologue kernels need: the GEMV on for one row (as samba_cu_gemv decides), the
// prologue not switched off, a row of whole 16-byte vectors that shared memory holds, 16-bit W
// and y float32 or W's dtype.
static int prologue_ok(const char *which, int64_t N, int64_t K, samba_cu_ref w, samba_cu_ref y) {
    const int on = samba_cu_gemv_enabled();
    if (on == SAMBA_GEMV_OFF || (on == SAMBA_GEMV_AUTO && !samba_cu_pdl_enabled()) ||
        !gemv_rows_on() || !fuse_on(which))
        return 0;
    if (N < 1 || K < 8 || K % 8 != 0 || K > GEMV_PRO_ELEMS || N > INT32_MAX) return 0;
    if (w.dtype != SAMBA_CU_BF16 && w.dtype != SAMBA_CU_F16) return 0;
    return y.dtype == SAMBA_CU_F32 || y.dtype == w.dtype;
}

static int overlaps(const void *p, int64_t pn, const void *q, int64_t qn) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(q);
    return p != NULL && q != NULL && a < b + (uintptr_t)qn && b < a + (uintptr_t)pn;
}

static int64_t elem_bytes(samba_cu_ref r) { return r.dtype == SAMBA_CU_F32 ? 4 : 2; }

extern "C" samba_status samba_cu_gemv_rms(int *done, int64_t N, int64_t K, samba_cu_ref x,
                                          samba_cu_ref res, samba_cu_ref res_out,
                                          samba_cu_ref nw, float eps, samba_cu_ref w,
                                          int64_t ldw, samba_cu_ref y, void *stream) {
    *done = 0;
    if (!prologue_ok("rms", N, K, w, y)) return SAMBA_OK;
    if ((res.ptr == NULL) != (res_out.ptr == NULL)) return SAMBA_OK;
    // E = 8 vectors for every norm operand, as norm.cu's register kernel takes them
    if (!vec_float_dtype(x.dtype) || !vec_float_dtype(nw.dtype) || !vec_ok(8, x, 0) ||
        !vec_ok(8, nw, 0) || !vec_ok(8, res, 0) || !vec_ok(8, res_out, 0))
        return SAMBA_OK;
    // block 0 writes residual_out while the others read x and the residual
    if (overlaps(res_out.ptr, K * elem_bytes(res_out), x.ptr, K * elem_bytes(x)) ||
        overlaps(res_out.ptr, K * elem_bytes(res_out), res.ptr, K * elem_bytes(res)))
        return SAMBA_OK;
    const int vec = w_vec(w, N, ldw);
    if (vec == 0) return SAMBA_OK;
    // norm.cu's choice for a row of K: the fewest chunks per thread with <= 256 threads
    const int64_t nch = K / 8;
    int nc = 0;
    for (int c = 1; c <= 4 && !nc; c *= 2)
        if (cdiv(nch, c) <= 256) nc = c;
    if (!nc) return SAMBA_OK;
    int64_t sms = 0;
    samba_status st = sm_count(&sms);
    if (st != SAMBA_OK || sms == 0) return st;
    GemvNorm nm;
    nm.x = x;
    nm.res = res;
    nm.res_out = res_out;
    nm.w = nw;
    nm.eps = eps;
    nm.tn = (int)(cdiv(cdiv(nch, nc), 32) * 32);
    return launch_row(done, N, K, w, 0, w, ldw, y, 0, 0.0f, vec, sms, nm, nc,
                      (cudaStream_t)stream);
}

extern "C" samba_status samba_cu_gemv_swiglu(int *done, int64_t N, int64_t K, samba_cu_ref g,
                                             samba_cu_ref u, samba_cu_ref w, int64_t ldw,
                                             samba_cu_ref y, void *stream) {
    *done = 0;
    if (!prologue_ok("swiglu", N, K, w, y)) return SAMBA_OK;
    if (!vec_float_dtype(g.dtype) || !vec_float_dtype(u.dtype) || !vec_ok(8, g, 0) ||
        !vec_ok(8, u, 0))
        return SAMBA_OK;
    const int vec = w_vec(w, N, ldw);
    if (vec == 0) return SAMBA_OK;
    int64_t sms = 0;
    samba_status st = sm_count(&sms);
    if (st != SAMBA_OK || sms == 0) return st;
    GemvNorm pr;
    memset(&pr, 0, sizeof pr);
    pr.x = g;
    pr.res = u;
    return launch_row(done, N, K, w, 0, w, ldw, y, 0, 0.0f, vec, sms, pr, GEMV_SWIGLU,
                      (cudaStream_t)stream);
}

extern "C" samba_status samba_cu_gemv(int *done, int64_t M, int64_t N, int64_t K,
                                      samba_cu_ref x, const int64_t *xoff, samba_cu_ref w,
                                      int64_t ldw, samba_cu_ref y, const int64_t *yoff,
                                      float beta, void *stream) {
    *done = 0;
    // auto: one row, where the launch overlaps the kernel before it (pdl.cuh); without that
    // overlap cuBLAS's kernels are as fast (benchmarks/results/gpu_decode_prefetch.md)
    if (samba_cu_gemv_enabled() == SAMBA_GEMV_AUTO && (M != 1 || !samba_cu_pdl_enabled()))
        return SAMBA_OK;
    if (M < 1 || M > SAMBA_GEMV_MAX_M || N < 1 || K < 1 || N > INT32_MAX || K > INT32_MAX)
        return SAMBA_OK;
    if (x.dtype != w.dtype || (x.dtype != SAMBA_CU_BF16 && x.dtype != SAMBA_CU_F16))
        return SAMBA_OK;
    if (y.dtype != SAMBA_CU_F32 && y.dtype != x.dtype) return SAMBA_OK;
    const int vec = w_vec(w, N, ldw);
    if (vec == 0) return SAMBA_OK;  // cuBLAS reads W of any alignment
    for (int64_t m = 0; m < M; ++m)
        if (xoff[m] < 0 || yoff[m] < 0) return SAMBA_OK;

    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return samba_cu_fail("gemv: cudaGetDevice", e);
    int64_t sms = 0;
    samba_status sst = sm_count(&sms);
    if (sst != SAMBA_OK || sms == 0) return sst;
    const uintptr_t xa = reinterpret_cast<uintptr_t>(x.ptr) + (uintptr_t)xoff[0] * 2;
    if (M == 1 && gemv_rows_on() && xa % (uintptr_t)(vec * 2) == 0) {
        GemvNorm none;
        memset(&none, 0, sizeof none);
        return launch_row(done, N, K, x, xoff[0], w, ldw, y, yoff[0], beta, vec, sms, none, 0,
                          (cudaStream_t)stream);
    }
    const int mt = M == 1 ? 1 : M == 2 ? 2 : M <= 4 ? 4 : 8;
    const int u = 16 / vec;

    // Splits: enough blocks for the GPU, >= one full step (32 u vectors) per split, and few
    // enough vectors per split for x's slice to fit the shared memory.
    const int64_t nblk = cdiv(N, GEMV_WARPS * GEMV_R);
    const int64_t nvec = K / vec;
    const int64_t cps_max = (GEMV_SMEM_ELEMS / mt - 16) / vec;  // x slice + tail + padding fit
    const int64_t s_min = nvec > 0 ? cdiv(nvec, cps_max) : 1;
    int64_t S = 1;
    if (nblk < 2 * sms) S = cdiv(4 * sms, nblk);
    const int64_t s_k = nvec / (32 * u);  // splits of at least one full step
    if (S > s_k) S = s_k;
    if (S < s_min) S = s_min;
    if (S < 1) S = 1;
    if (S > GEMV_MAX_SPLITS) return SAMBA_OK;

    void *ws = NULL;
    if (S > 1) {
        samba_status st = samba_cu_gemm_stream_workspace(dev, stream, &ws);
        if (st != SAMBA_OK) return st;
        const int64_t s_ws = ws ? (int64_t)(SAMBA_GEMM_WORKSPACE_BYTES / (M * N * 4)) : 1;
        if (S > s_ws) S = s_ws;
        if (S < s_min) return SAMBA_OK;  // no room for the partial sums: cuBLAS
        if (S < 1) S = 1;
    }
    int64_t cps = nvec > 0 ? cdiv(nvec, S) : 1;
    // Whole steps per split where the shared memory allows (no half-idle last step).
    if (S > 1 && cdiv(cps, 32 * u) * 32 * u <= cps_max) cps = cdiv(cps, 32 * u) * 32 * u;
    if (nvec > 0) S = cdiv(nvec, cps);  // no empty split
    if (S < 1) S = 1;

    GemvArgs a = gemv_args(M, N, K, x, xoff, w, ldw, y, yoff, beta);
    a.part = S > 1 ? static_cast<float *>(ws) : NULL;
    a.cps = cps;
    a.xs_stride = (int)(((cps * vec + vec) + 7) / 8 * 8);
    if ((int64_t)a.xs_stride * mt > GEMV_SMEM_ELEMS)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "gemv: internal: x slice %d x %d too large",
                                 a.xs_stride, mt);

    cudaStream_t st = (cudaStream_t)stream;
    const dim3 grid((unsigned)nblk, (unsigned)S);
    if (x.dtype == SAMBA_CU_BF16) {
        if (vec == 8) launch_vec<__nv_bfloat16, 8>(a, mt, grid, st);
        else launch_vec<__nv_bfloat16, 4>(a, mt, grid, st);
    } else {
        if (vec == 8) launch_vec<__half, 8>(a, mt, grid, st);
        else launch_vec<__half, 4>(a, mt, grid, st);
    }
    *done = 1;
    g_launches++;
    if (S > 1) {
        samba_status s1 = samba_cu_check_launch("gemv", stream);
        if (s1 != SAMBA_OK) return s1;
        samba_launch(gemv_reduce_kernel, grid_1d(M * N, 256), 256, 0, st, a, (int)S);
        return samba_cu_check_launch("gemv (split-K reduce)", stream);
    }
    return samba_cu_check_launch("gemv", stream);
}
