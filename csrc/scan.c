/*
 * scan.c - selective scan (Mamba-1 / S6) forward and decode step, samba_arch.md section 3.
 *
 * Per batch b, channel d, step t, state n (all float32):
 *   dt     = delta[b,d,t] + delta_bias[d];  if softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h[n]   = exp(dt * A[d,n]) * h[n] + dt * B[b,g,n,t] * u[b,d,t]      (g = d / (dim/ngroups))
 *   y      = sum_n h[n] * C[b,g,n,t] + Dskip[d] * u[b,d,t];  if z: y *= silu(z[b,d,t])
 *
 * Layout of the work: the channels of one group are cut into blocks of SCAN_LANES (16)
 * consecutive channels; all channels of a block share B and C, so one block advances 16
 * channels x dstate states per step with one broadcast of B[n,t] / C[n,t] per state. The
 * carried state lives in a per-call buffer in block layout (batch, block, dstate, 16) so a
 * block's state is one aligned (dstate, 16) tile. Time is cut into chunks; between chunks
 * the calling thread polls samba_ctx_stop(), inside a chunk the blocks are spread over
 * OpenMP threads. Per-call buffers only (no global scratch).
 *
 * Two block kernels: an AVX-512 one (16 lanes = 16 channels, 16x16 transposes to turn the
 * (channel, time) inputs into per-step channel vectors, a polynomial exp2 with relative
 * error < 1e-7, state kept in registers when dstate == 16), chosen at run time with
 * __builtin_cpu_supports, and a portable C one (libm expf / log1pf).
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SAMBA_NO_SIMD)
#define SCAN_HAVE_AVX512 1
#include <immintrin.h>
#else
#define SCAN_HAVE_AVX512 0
#endif

#define SCAN_LANES 16
/* Time steps per chunk are chosen so that one chunk is about this many state updates
 * (~10-50 ms), then clamped to [SCAN_CHUNK_MIN, SCAN_CHUNK_MAX]. */
#define SCAN_CHUNK_UPDATES (1 << 25)
#define SCAN_CHUNK_MIN 16
#define SCAN_CHUNK_MAX 1024

#define SCAN_LOG2E 1.44269504088896340736f

/* One block of a chunk: channels c0 .. c0+nch-1 (nch <= 16) of batch b, group g, steps
 * [t0, t1). h (N, 16) carried state of the block, a2 (N, 16) the block's A (lanes >= nch
 * zero); both 64-byte aligned. */
typedef void (*scan_block_fn)(const samba_scan_args *a, int64_t b, int64_t g, int64_t c0,
                              int nch, int64_t t0, int64_t t1, float *h, const float *a2);

/* ------------------------------------------------------------------ portable kernel --- */

static float
scan_softplus(float x)
{
    return x <= 20.0f ? log1pf(expf(x)) : x;
}

static float
scan_silu(float x)
{
    return x / (1.0f + expf(-x));
}

static void
scan_block_portable(const samba_scan_args *a, int64_t b, int64_t g, int64_t c0, int nch,
                    int64_t t0, int64_t t1, float *h, const float *a2)
{
    const int64_t L = a->seqlen, N = a->dstate, D = a->dim, G = a->ngroups;
    const float *Bp = a->B + (b * G + g) * N * L;
    const float *Cp = a->C + (b * G + g) * N * L;
    int ch;

    for (ch = 0; ch < nch; ch++) {
        const int64_t c = c0 + ch;
        const int64_t row = (b * D + c) * L;
        const float bias = a->delta_bias != NULL ? a->delta_bias[c] : 0.0f;
        const float dskip = a->D != NULL ? a->D[c] : 0.0f;
        int64_t t, n;

        for (t = t0; t < t1; t++) {
            float dt = a->delta[row + t] + bias;
            float uu = a->u[row + t];
            float du, acc = 0.0f;

            if (a->delta_softplus) {
                dt = scan_softplus(dt);
            }
            du = dt * uu;
            for (n = 0; n < N; n++) {
                float *hn = h + n * SCAN_LANES + ch;
                *hn = expf(dt * a2[n * SCAN_LANES + ch]) * *hn + du * Bp[n * L + t];
                acc += *hn * Cp[n * L + t];
            }
            acc += dskip * uu;
            if (a->z != NULL) {
                acc *= scan_silu(a->z[row + t]);
            }
            a->y[row + t] = acc;
        }
    }
}

/* ------------------------------------------------------------------- AVX-512 kernel --- */
#if SCAN_HAVE_AVX512
#define AVX512 __attribute__((target("avx512f,fma")))

/* 2^t for float32 t: t = k + f, k = round(t), |f| <= 1/2, 2^f by a degree-6 polynomial
 * (near-minimax for relative error, ~1e-7 in float32), then scaled by 2^k with vscalefps
 * (exact over/underflow to inf/0). NaN propagates. */
static inline AVX512 __m512
v_exp2(__m512 t)
{
    const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, k);
    __m512 p = _mm512_set1_ps(1.534581242594868e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399930903688073e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489071726799e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* e^x with the reduction done in extra precision (log2(e) split in two floats). */
static inline AVX512 __m512
v_exp(__m512 x)
{
    const __m512 l2e = _mm512_set1_ps(SCAN_LOG2E);
    const __m512 l2e_lo = _mm512_set1_ps(1.925963033500011e-08f); /* log2(e) - l2e */
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fmsub_ps(x, l2e, k);
    f = _mm512_fmadd_ps(x, l2e_lo, f);
    __m512 p = _mm512_set1_ps(1.534581242594868e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399930903688073e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489071726799e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* 1/x to ~1e-8 relative: rcp14 + one Newton step. */
static inline AVX512 __m512
v_recip(__m512 x)
{
    const __m512 r = _mm512_rcp14_ps(x);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}

/* softplus with threshold 20: x > 20 ? x : log1p(exp(x)), computed as
 * max(x, 0) + log1p(w), w = exp(-|x|) in (0, 1]. log1p(w) = log(u) + (w - (u - 1)) / u with
 * u = 1 + w in [1, 2]; log(u) = e ln2 + log(m), m = u or u/2 in [0.707, 1.415],
 * log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, odd series to s^11. */
static inline AVX512 __m512
v_softplus(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 w = v_exp(_mm512_sub_ps(_mm512_setzero_ps(), ax));
    const __m512 u = _mm512_add_ps(one, w);
    const __m512 corr = _mm512_sub_ps(w, _mm512_sub_ps(u, one));
    const __mmask16 big = _mm512_cmp_ps_mask(u, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    const __m512 m = _mm512_mask_mul_ps(u, big, u, _mm512_set1_ps(0.5f));
    const __m512 s = _mm512_mul_ps(_mm512_sub_ps(m, one), v_recip(_mm512_add_ps(m, one)));
    const __m512 s2 = _mm512_mul_ps(s, s);
    __m512 p = _mm512_set1_ps(2.0f / 11.0f);
    __m512 r;
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 9.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 7.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 5.0f));
    p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 3.0f));
    p = _mm512_mul_ps(p, s2);
    /* log(m) = 2s + s*p */
    r = _mm512_fmadd_ps(s, p, _mm512_add_ps(s, s));
    r = _mm512_fmadd_ps(corr, v_recip(u), r);
    r = _mm512_mask_add_ps(r, big, r, _mm512_set1_ps(0.69314718056f));
    r = _mm512_add_ps(r, _mm512_max_ps(x, _mm512_setzero_ps()));
    /* x > 20 (false for NaN, which then propagates through r) */
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ), r, x);
}

/* silu(x) = x / (1 + exp(-x)) */
static inline AVX512 __m512
v_silu(__m512 x)
{
    const __m512 e = v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* In-place transpose of a 16x16 float tile held in r[0..15]. */
static inline AVX512 void
v_transpose16(__m512 r[16])
{
    __m512 t[16];
    int i;

    for (i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

/* Loads rows p + ch*L (ch < nch, 16 steps masked by km) and transposes them: out[k] is the
 * vector of the 16 channels at step k (zeros for absent channels / steps). */
static inline AVX512 void
v_load_tile(const float *p, int64_t L, int nch, __mmask16 km, __m512 out[16])
{
    int ch;
    for (ch = 0; ch < 16; ch++) {
        out[ch] = ch < nch ? _mm512_maskz_loadu_ps(km, p + ch * L) : _mm512_setzero_ps();
    }
    v_transpose16(out);
}

/*
 * The block kernel body. hv (N) the state vectors (registers when N is a compile-time 16),
 * av (N) the A*log2(e) vectors.
 */
static inline AVX512 __attribute__((always_inline)) void
scan_block_avx512_body(const samba_scan_args *a, int64_t b, int64_t g, int64_t c0, int nch,
                       int64_t t0, int64_t t1, const int N, __m512 *hv, const __m512 *av)
{
    const int64_t L = a->seqlen, D = a->dim, G = a->ngroups;
    const float *Bp = a->B + (b * G + g) * N * L;
    const float *Cp = a->C + (b * G + g) * N * L;
    const int64_t row0 = (b * D + c0) * L;
    const __mmask16 cm = (__mmask16)((1u << nch) - 1u);
    const __m512 bias = a->delta_bias != NULL ? _mm512_maskz_loadu_ps(cm, a->delta_bias + c0)
                                              : _mm512_setzero_ps();
    const __m512 dsk = a->D != NULL ? _mm512_maskz_loadu_ps(cm, a->D + c0) : _mm512_setzero_ps();
    int64_t t;

    for (t = t0; t < t1; t += 16) {
        const int nk = (int)(t1 - t < 16 ? t1 - t : 16);
        const __mmask16 km = (__mmask16)((1u << nk) - 1u);
        __m512 dtv[16], uv[16], gz[16];
        int k, n, ch;

        v_load_tile(a->delta + row0 + t, L, nch, km, dtv);
        v_load_tile(a->u + row0 + t, L, nch, km, uv);
        if (a->z != NULL) {
            v_load_tile(a->z + row0 + t, L, nch, km, gz);
        }
        for (k = 0; k < nk; k++) {
            __m512 dt = _mm512_add_ps(dtv[k], bias);
            if (a->delta_softplus) {
                dt = v_softplus(dt);
            }
            dtv[k] = dt;
            gz[k] = a->z != NULL ? v_silu(gz[k]) : _mm512_set1_ps(1.0f);
        }
        for (k = 0; k < nk; k++) {
            const __m512 dt = dtv[k];
            const __m512 du = _mm512_mul_ps(dt, uv[k]);
            const float *Bk = Bp + t + k;
            const float *Ck = Cp + t + k;
            __m512 acc0 = _mm512_mul_ps(dsk, uv[k]);
            __m512 acc1 = _mm512_setzero_ps();

            for (n = 0; n < N; n += 2) {
                const __m512 e0 = v_exp2(_mm512_mul_ps(dt, av[n]));
                hv[n] = _mm512_fmadd_ps(e0, hv[n], _mm512_mul_ps(du, _mm512_set1_ps(Bk[n * L])));
                acc0 = _mm512_fmadd_ps(hv[n], _mm512_set1_ps(Ck[n * L]), acc0);
                if (n + 1 < N) {
                    const __m512 e1 = v_exp2(_mm512_mul_ps(dt, av[n + 1]));
                    hv[n + 1] = _mm512_fmadd_ps(e1, hv[n + 1],
                                                _mm512_mul_ps(du, _mm512_set1_ps(Bk[(n + 1) * L])));
                    acc1 = _mm512_fmadd_ps(hv[n + 1], _mm512_set1_ps(Ck[(n + 1) * L]), acc1);
                }
            }
            uv[k] = _mm512_mul_ps(_mm512_add_ps(acc0, acc1), gz[k]);
        }
        for (k = nk; k < 16; k++) {
            uv[k] = _mm512_setzero_ps();
        }
        v_transpose16(uv);
        for (ch = 0; ch < nch; ch++) {
            _mm512_mask_storeu_ps(a->y + row0 + ch * L + t, km, uv[ch]);
        }
    }
}

static AVX512 void
scan_block_avx512_n16(const samba_scan_args *a, int64_t b, int64_t g, int64_t c0, int nch,
                      int64_t t0, int64_t t1, float *h, const float *a2)
{
    __m512 hv[16], av[16];
    int n;

    for (n = 0; n < 16; n++) {
        hv[n] = _mm512_load_ps(h + n * 16);
        av[n] = _mm512_load_ps(a2 + n * 16);
    }
    scan_block_avx512_body(a, b, g, c0, nch, t0, t1, 16, hv, av);
    for (n = 0; n < 16; n++) {
        _mm512_store_ps(h + n * 16, hv[n]);
    }
}

static AVX512 void
scan_block_avx512_gen(const samba_scan_args *a, int64_t b, int64_t g, int64_t c0, int nch,
                      int64_t t0, int64_t t1, float *h, const float *a2)
{
    scan_block_avx512_body(a, b, g, c0, nch, t0, t1, (int)a->dstate, (__m512 *)h,
                           (const __m512 *)a2);
}

static int
scan_cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}
#endif /* SCAN_HAVE_AVX512 */

/* ---------------------------------------------------------------------------- driver --- */

/* Kernel choice: SAMBA_SCAN_KERNEL=portable in the environment forces the portable one
 * (used by the tests to check both). */
static scan_block_fn
scan_pick(int64_t N, int *log2e_scaled)
{
    const char *env = getenv("SAMBA_SCAN_KERNEL");
    int portable = env != NULL && strcmp(env, "portable") == 0;

    *log2e_scaled = 0;
#if SCAN_HAVE_AVX512
    if (!portable && scan_cpu_has_avx512()) {
        *log2e_scaled = 1;
        return N == 16 ? scan_block_avx512_n16 : scan_block_avx512_gen;
    }
#endif
    (void)portable;
    (void)N;
    return scan_block_portable;
}

static void *
scan_alloc(size_t nfloat)
{
    size_t bytes = (nfloat * sizeof(float) + 63) / 64 * 64;
    void *p = NULL;
    if (bytes == 0) {
        bytes = 64;
    }
    if (posix_memalign(&p, 64, bytes) != 0) {
        return NULL;
    }
    return p;
}

samba_status
samba_scan_fwd(const samba_scan_args *a, const samba_ctx *ctx)
{
    int64_t dpg, nbg, nblk, nitems, chunk, t0, b, c, n;
    int64_t N;
    float *hbuf, *a2buf;
    scan_block_fn fn;
    int scaled;
    samba_status st = SAMBA_OK;

    if (a == NULL || a->batch < 0 || a->dim < 0 || a->dstate < 0 || a->seqlen < 0 ||
        a->ngroups < 1 || a->dim % a->ngroups != 0) {
        return SAMBA_ERR_ARG;
    }
    N = a->dstate;
    if (a->batch == 0 || a->dim == 0) {
        return SAMBA_OK;
    }
    if (a->A == NULL || (a->seqlen > 0 && (a->u == NULL || a->delta == NULL ||
                                           a->B == NULL || a->C == NULL || a->y == NULL))) {
        return SAMBA_ERR_ARG;
    }
    if (a->seqlen > 0 && N == 0) {
        /* no state: y = D*u (gated) */
        int64_t i, total = a->batch * a->dim * a->seqlen;
        for (i = 0; i < total; i++) {
            const int64_t d = (i / a->seqlen) % a->dim;
            float v = a->D != NULL ? a->D[d] * a->u[i] : 0.0f;
            a->y[i] = a->z != NULL ? v * scan_silu(a->z[i]) : v;
        }
        return SAMBA_OK;
    }
    if (a->seqlen == 0 || N == 0) {
        if (a->final_state != NULL) {
            const size_t bytes = (size_t)(a->batch * a->dim * N) * sizeof(float);
            if (a->initial_state != NULL) {
                memmove(a->final_state, a->initial_state, bytes);
            }
            else {
                memset(a->final_state, 0, bytes);
            }
        }
        return SAMBA_OK;
    }

    fn = scan_pick(N, &scaled);
    dpg = a->dim / a->ngroups;
    nbg = (dpg + SCAN_LANES - 1) / SCAN_LANES;
    nblk = a->ngroups * nbg;
    nitems = a->batch * nblk;
    hbuf = (float *)scan_alloc((size_t)(nitems * N * SCAN_LANES));
    a2buf = (float *)scan_alloc((size_t)(nblk * N * SCAN_LANES));
    if (hbuf == NULL || a2buf == NULL) {
        free(hbuf);
        free(a2buf);
        return SAMBA_ERR_ALLOC;
    }
    memset(hbuf, 0, (size_t)(nitems * N * SCAN_LANES) * sizeof(float));
    memset(a2buf, 0, (size_t)(nblk * N * SCAN_LANES) * sizeof(float));
    /* block layout: channel c -> block (c / dpg) * nbg + (c % dpg) / 16, lane (c % dpg) % 16 */
    for (c = 0; c < a->dim; c++) {
        const int64_t blk = (c / dpg) * nbg + (c % dpg) / SCAN_LANES;
        const int64_t lane = (c % dpg) % SCAN_LANES;
        for (n = 0; n < N; n++) {
            float v = a->A[c * N + n];
            if (scaled) {
                v *= SCAN_LOG2E;
                /* keep dt*A finite for finite dt (exp2(-inf) would give NaN) */
                if (v < -3.0e38f) {
                    v = -3.0e38f;
                }
            }
            a2buf[(blk * N + n) * SCAN_LANES + lane] = v;
        }
        if (a->initial_state != NULL) {
            for (b = 0; b < a->batch; b++) {
                for (n = 0; n < N; n++) {
                    hbuf[((b * nblk + blk) * N + n) * SCAN_LANES + lane] =
                        a->initial_state[(b * a->dim + c) * N + n];
                }
            }
        }
    }

    chunk = SCAN_CHUNK_UPDATES / (a->batch * a->dim * N > 0 ? a->batch * a->dim * N : 1);
    chunk = chunk < SCAN_CHUNK_MIN ? SCAN_CHUNK_MIN : chunk > SCAN_CHUNK_MAX ? SCAN_CHUNK_MAX
                                                                              : chunk;
    chunk = chunk / 16 * 16;

    for (t0 = 0; t0 < a->seqlen; t0 += chunk) {
        const int64_t t1 = t0 + chunk < a->seqlen ? t0 + chunk : a->seqlen;
        int64_t it;
        if (t0 > 0 && samba_ctx_stop(ctx)) {
            st = SAMBA_ERR_INTERRUPTED;
            break;
        }
#ifdef _OPENMP
#pragma omp parallel for num_threads(samba_ctx_threads(ctx)) schedule(static) if (nitems > 1)
#endif
        for (it = 0; it < nitems; it++) {
            const int64_t bb = it / nblk, blk = it % nblk;
            const int64_t g = blk / nbg, j = blk % nbg;
            const int64_t c0 = g * dpg + j * SCAN_LANES;
            const int nch = (int)(dpg - j * SCAN_LANES < SCAN_LANES ? dpg - j * SCAN_LANES
                                                                     : SCAN_LANES);
            fn(a, bb, g, c0, nch, t0, t1, hbuf + it * N * SCAN_LANES,
               a2buf + blk * N * SCAN_LANES);
        }
    }

    if (st == SAMBA_OK && a->final_state != NULL) {
        for (b = 0; b < a->batch; b++) {
            for (c = 0; c < a->dim; c++) {
                const int64_t blk = (c / dpg) * nbg + (c % dpg) / SCAN_LANES;
                const int64_t lane = (c % dpg) % SCAN_LANES;
                for (n = 0; n < N; n++) {
                    a->final_state[(b * a->dim + c) * N + n] =
                        hbuf[((b * nblk + blk) * N + n) * SCAN_LANES + lane];
                }
            }
        }
    }
    free(hbuf);
    free(a2buf);
    return st;
}

samba_status
samba_scan_step(const samba_scan_step_args *s, const samba_ctx *ctx)
{
    samba_scan_args a;

    if (s == NULL || s->batch < 0 || s->dim < 0 || s->dstate < 0 || s->ngroups < 1 ||
        s->dim % s->ngroups != 0) {
        return SAMBA_ERR_ARG;
    }
    if (s->batch == 0 || s->dim == 0) {
        return SAMBA_OK;
    }
    if ((s->state == NULL && s->dstate > 0) || s->x == NULL || s->dt == NULL ||
        s->A == NULL || s->B == NULL || s->C == NULL || s->y == NULL) {
        return SAMBA_ERR_ARG;
    }
    /* one step of the scan: (B, D) == (B, D, 1) and (B, G, N) == (B, G, N, 1) in memory;
     * the state is read before it is written, so in and out may be the same buffer. */
    memset(&a, 0, sizeof(a));
    a.batch = s->batch;
    a.dim = s->dim;
    a.dstate = s->dstate;
    a.seqlen = 1;
    a.ngroups = s->ngroups;
    a.u = s->x;
    a.delta = s->dt;
    a.A = s->A;
    a.B = s->B;
    a.C = s->C;
    a.D = s->D;
    a.z = s->z;
    a.delta_bias = s->dt_bias;
    a.delta_softplus = s->dt_softplus;
    a.initial_state = s->state;
    a.final_state = s->state;
    a.y = s->y;
    return samba_scan_fwd(&a, ctx);
}
