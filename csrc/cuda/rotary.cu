// rotary.cu - rotary position embedding and its backward (the CUDA side of csrc/rotary.c and
// csrc/rotary_bwd.c). A rotation's adjoint is the rotation by the negative angle, so the
// backward is the forward with the sines negated (sgn = -1): dx1 = dy1 cos a + dy2 sin a,
// dx2 = -dy1 sin a + dy2 cos a.
#include "pdl.cuh"
#include "rotary_math.cuh"
#include "samba_cuda_bwd.h"
#include "vecio.cuh"

// The general path: one thread per rotated pair (b, t, h, i < hd/2). Angles
// pos * base^(-2i/hd) and their sine / cosine in float64 (large positions keep full float32
// accuracy).
__global__ void rotary_kernel(int64_t batch, int64_t L, int64_t H, int64_t hd, samba_cu_ref x,
                              int64_t xs0, int64_t xs1, int64_t xs2, samba_cu_ref pos,
                              int pos_batched, int64_t offset, double log_base, float sgn,
                              samba_cu_ref y, int64_t ys0, int64_t ys1, int64_t ys2) {
    const int64_t half = hd / 2;
    const int64_t n = batch * L * H * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx % half;
        int64_t r = idx / half;
        const int64_t h = r % H;
        r /= H;
        const int64_t t = r % L;
        const int64_t b = r / L;
        int64_t p;
        if (pos.ptr)
            p = ldi(pos.ptr, pos.dtype, pos_batched ? b * L + t : t) + offset;
        else
            p = offset + t;
        float c, s, y1, y2;
        rot_angle(p, i, hd, log_base, sgn, &c, &s);
        const int64_t xo = b * xs0 + t * xs1 + h * xs2;
        const int64_t yo = b * ys0 + t * ys1 + h * ys2;
        rot_pair(ldf(x, xo + i), ldf(x, xo + i + half), c, s, &y1, &y2);
        stf(y, yo + i, y1);
        stf(y, yo + i + half, y2);
    }
}

#define ROT_THREADS 256
#define ROT_SMEM_MAX (32 * 1024)

// Rotary with the angles shared across heads: a block takes tpb consecutive tokens (b, t)
// (token g = b * L + t). Phase 1: the block's threads compute cos / sin of pos * inv_freq_i
// (float64, as rotary_kernel) once per (token, i < hd/2) into shared memory. Phase 2: one
// thread per (token, head, chunk of E pairs): x1 = x[i .. i+E), x2 = x[half+i .. half+i+E)
// loaded with one vector access each (vecio.cuh), y1 = x1 c - x2 s, y2 = x1 s + x2 c in
// float32 (the same expressions as rotary_kernel). Each element is read and then written by
// one thread, so y may alias x.
template <int E>
__global__ void __launch_bounds__(ROT_THREADS)
rotary_tok_kernel(int64_t ntok, int64_t L, int H, int hd, int tpb, samba_cu_ref x, int64_t xs0,
                  int64_t xs1, int64_t xs2, samba_cu_ref pos, int pos_batched, int64_t offset,
                  double log_base, float sgn, samba_cu_ref y, int64_t ys0, int64_t ys1,
                  int64_t ys2) {
    extern __shared__ float rot_cs[];   // [tpb][half][2]: cos, sin
    const int half = hd / 2;
    const int64_t tok0 = (int64_t)blockIdx.x * tpb;
    const int nang = tpb * half;
    pdl_wait();
    pdl_trigger();
    for (int k = threadIdx.x; k < nang; k += blockDim.x) {
        const int tl = k / half, i = k - tl * half;
        const int64_t g = tok0 + tl;
        float c = 1.0f, s = 0.0f;
        if (g < ntok) {
            const int64_t b = g / L, t = g - b * L;
            int64_t p;
            if (pos.ptr)
                p = ldi(pos.ptr, pos.dtype, pos_batched ? g : t) + offset;
            else
                p = offset + t;
            rot_angle(p, i, hd, log_base, sgn, &c, &s);
        }
        rot_cs[2 * k] = c;
        rot_cs[2 * k + 1] = s;
    }
    __syncthreads();
    const int cph = half / E;            // chunks per head
    const int per_tok = H * cph;
    const int nwork = tpb * per_tok;
    for (int k = threadIdx.x; k < nwork; k += blockDim.x) {
        const int tl = k / per_tok;
        const int rem = k - tl * per_tok;
        const int h = rem / cph;
        const int i = (rem - h * cph) * E;
        const int64_t g = tok0 + tl;
        if (g >= ntok) continue;
        const int64_t b = g / L, t = g - b * L;
        const int64_t xo = b * xs0 + t * xs1 + h * xs2;
        const int64_t yo = b * ys0 + t * ys1 + h * ys2;
        RawV<E> r1, r2;
        ldraw<E>(x, xo + i, r1);
        ldraw<E>(x, xo + i + half, r2);
        float x1[E], x2[E], y1[E], y2[E];
        cvt<E>(r1, x.dtype, x1);
        cvt<E>(r2, x.dtype, x2);
        const float *cs = rot_cs + 2 * (tl * half + i);
#pragma unroll
        for (int e = 0; e < E; ++e)
            rot_pair(x1[e], x2[e], cs[2 * e], cs[2 * e + 1], &y1[e], &y2[e]);
        stv<E>(y, yo + i, y1);
        stv<E>(y, yo + i + half, y2);
    }
}

// The token path: float dtypes, hd/2 and the chunk sizes fitting int, the angle table in
// ROT_SMEM_MAX. E: the widest in {8, 4, 2, 1} dividing hd/2 that x's and y's base
// addresses and strides allow (half an offset of hd/2 is then also a multiple of E).
static int rotary_tok_try(int64_t batch, int64_t L, int64_t H, int64_t hd, samba_cu_ref x,
                          const int64_t *xs, samba_cu_ref pos, int pos_batched, int64_t offset,
                          double log_base, float sgn, samba_cu_ref y, const int64_t *ys,
                          cudaStream_t st) {
    if (!vec_float_dtype(x.dtype) || !vec_float_dtype(y.dtype)) return 0;
    const int64_t half = hd / 2;
    if (H > 65536 || half > 4096) return 0;
    int E = 8;
    for (; E > 1; E /= 2) {
        if (half % E) continue;
        int ok = 1;
        for (int d = 0; d < 3 && ok; ++d) ok = vec_ok(E, x, xs[d]) && vec_ok(E, y, ys[d]);
        if (ok) break;
    }
    const int64_t per_tok = H * (half / E);
    int64_t tpb = per_tok >= ROT_THREADS ? 1 : ROT_THREADS / per_tok;
    const int64_t ntok = batch * L;
    if (tpb > ntok) tpb = ntok;
    const size_t smem = (size_t)tpb * (size_t)half * 2 * sizeof(float);
    if (smem > ROT_SMEM_MAX) return 0;
    const int64_t grid = cdiv(ntok, tpb);
    if (grid > 0x7fffffffLL) return 0;
    const int64_t work = tpb * per_tok;
    const unsigned threads = (unsigned)(work >= ROT_THREADS ? ROT_THREADS : cdiv(work, 32) * 32);
#define ROT_LAUNCH(E_)                                                                         \
    samba_launch(rotary_tok_kernel<E_>, (unsigned)grid, threads, smem, st, ntok, L, (int)H,      \
                 (int)hd, (int)tpb, x, xs[0], xs[1], xs[2], pos, pos_batched, offset, log_base,  \
                 sgn, y, ys[0], ys[1], ys[2])
    if (E == 8) ROT_LAUNCH(8);
    else if (E == 4) ROT_LAUNCH(4);
    else if (E == 2) ROT_LAUNCH(2);
    else ROT_LAUNCH(1);
#undef ROT_LAUNCH
    return 1;
}

// y = x rotated by sgn * the angles (sgn 1: the forward, -1: the backward); `what` names the
// call in errors.
static samba_status rotary_run(const char *what, int64_t batch, int64_t seqlen, int64_t nheads,
                               int64_t headdim, samba_cu_ref x, const int64_t *x_s,
                               samba_cu_ref positions, int pos_batched, int64_t offset,
                               double base, float sgn, samba_cu_ref y, const int64_t *y_s,
                               void *stream) {
    if (headdim % 2 != 0)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: headdim must be even, got %lld", what,
                                 (long long)headdim);
    if (!(base > 0.0)) return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: base must be > 0", what);
    const int64_t n = batch * seqlen * nheads * (headdim / 2);
    if (n == 0) return SAMBA_OK;
    if (rotary_tok_try(batch, seqlen, nheads, headdim, x, x_s, positions, pos_batched, offset,
                       log(base), sgn, y, y_s, (cudaStream_t)stream))
        return samba_cu_check_launch(what, stream);
    rotary_kernel<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(
        batch, seqlen, nheads, headdim, x, x_s[0], x_s[1], x_s[2], positions, pos_batched,
        offset, log(base), sgn, y, y_s[0], y_s[1], y_s[2]);
    return samba_cu_check_launch(what, stream);
}

extern "C" samba_status samba_cu_rotary(int64_t batch, int64_t seqlen, int64_t nheads,
                                        int64_t headdim, samba_cu_ref x, const int64_t *x_s,
                                        samba_cu_ref positions, int pos_batched, int64_t offset,
                                        double base, samba_cu_ref y, const int64_t *y_s,
                                        void *stream) {
    return rotary_run("apply_rotary", batch, seqlen, nheads, headdim, x, x_s, positions,
                      pos_batched, offset, base, 1.0f, y, y_s, stream);
}

extern "C" samba_status samba_cu_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads,
                                            int64_t headdim, samba_cu_ref dy, const int64_t *dy_s,
                                            samba_cu_ref positions, int pos_batched, int64_t offset,
                                            double base, samba_cu_ref dx, const int64_t *dx_s,
                                            void *stream) {
    return rotary_run("apply_rotary_bwd", batch, seqlen, nheads, headdim, dy, dy_s, positions,
                      pos_batched, offset, base, -1.0f, dx, dx_s, stream);
}

// The decode step's rotary and K/V cache write in one kernel (samba_cu_rotary_kv): block b
// takes row b of qkv = [q (H heads) | k (G) | v (G)], each hd wide. The angles of position
// pos[b] go to shared memory once; then q's pairs are rotated into q_out (b, H, hd), k's into
// the key cache at (b, slot[b]) and v is copied to the value cache at (b, slot[b]), with the
// arithmetic of the kernels above (the same bits as apply_rotary then two row writes).
__global__ void rotary_kv_kernel(int H, int G, int hd, samba_cu_ref qkv, int64_t ld_qkv,
                                 samba_cu_ref pos, double log_base, samba_cu_ref q_out,
                                 samba_cu_ref kc, int64_t kc0, int64_t kc1, int64_t kc2,
                                 samba_cu_ref vc, int64_t vc0, int64_t vc1, int64_t vc2,
                                 samba_cu_ref slots) {
    extern __shared__ float rkv_cs[];  // [half][2]: cos, sin
    const int half = hd / 2;
    const int64_t b = blockIdx.x;
    pdl_wait();
    pdl_trigger();
    const int64_t p = ldi(pos.ptr, pos.dtype, b);
    const int64_t slot = ldi(slots.ptr, slots.dtype, b);
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        rot_angle(p, i, hd, log_base, 1.0f, &rkv_cs[2 * i], &rkv_cs[2 * i + 1]);
    __syncthreads();
    const int64_t row = b * ld_qkv;
    const int nrot = (H + G) * half;
    for (int k = threadIdx.x; k < nrot; k += blockDim.x) {
        const int h = k / half, i = k - h * half;
        const int64_t xo = row + (int64_t)h * hd;
        float y1, y2;
        rot_pair(ldf(qkv, xo + i), ldf(qkv, xo + i + half), rkv_cs[2 * i], rkv_cs[2 * i + 1], &y1,
                 &y2);
        if (h < H) {
            const int64_t yo = (b * H + h) * (int64_t)hd;
            stf(q_out, yo + i, y1);
            stf(q_out, yo + i + half, y2);
        } else {
            const int64_t yo = b * kc0 + slot * kc1 + (int64_t)(h - H) * kc2;
            stf(kc, yo + i, y1);
            stf(kc, yo + i + half, y2);
        }
    }
    const int nv = G * hd;
    for (int k = threadIdx.x; k < nv; k += blockDim.x) {
        const int g = k / hd, e = k - g * hd;
        stf(vc, b * vc0 + slot * vc1 + (int64_t)g * vc2 + e,
            ldf(qkv, row + (int64_t)(H + G + g) * hd + e));
    }
}

extern "C" samba_status samba_cu_rotary_kv(int64_t batch, int64_t H, int64_t G, int64_t hd,
                                           samba_cu_ref qkv, int64_t ld_qkv, samba_cu_ref pos,
                                           double base, samba_cu_ref q_out, samba_cu_ref k_cache,
                                           const int64_t *kc_s, samba_cu_ref v_cache,
                                           const int64_t *vc_s, samba_cu_ref slots,
                                           void *stream) {
    if (hd % 2 != 0 || hd < 2)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "rotary_kv: headdim must be even, got %lld",
                                 (long long)hd);
    if (!(base > 0.0)) return samba_cu_fail_msg(SAMBA_ERR_ARG, "rotary_kv: base must be > 0");
    if (H > 65536 || G > 65536 || hd > 8192)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "rotary_kv: too many heads or too wide");
    if (batch == 0) return SAMBA_OK;
    if (batch > 0x7fffffffLL)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "rotary_kv: more than 2^31 rows");
    const size_t smem = (size_t)(hd / 2) * 2 * sizeof(float);
    samba_launch(rotary_kv_kernel, (unsigned)batch, 256u, smem, (cudaStream_t)stream, (int)H,
                 (int)G, (int)hd, qkv, ld_qkv, pos, log(base), q_out, k_cache, kc_s[0], kc_s[1],
                 kc_s[2], v_cache, vc_s[0], vc_s[1], vc_s[2], slots);
    return samba_cu_check_launch("rotary_kv", stream);
}
