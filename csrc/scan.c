/*
 * scan.c - selective scan (Mamba-1 / S6) forward and decode step, docs/specification.md section 3.
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
 * block's state is one aligned (dstate, 16) tile; B and C are copied once per call to
 * (batch, group, L, {B, C}, dstate) order so a step's values are contiguous. Time is cut
 * into chunks; between chunks the calling thread polls samba_ctx_stop(), inside a chunk
 * the blocks are spread over OpenMP threads. Per-call buffers only (no global scratch).
 *
 * Block kernels, chosen at run time with samba_isa() (simd.h): an AVX-512 one (16 lanes =
 * 16 channels, 16x16 transposes between the (channel, time) rows and per-step channel
 * vectors, state in registers when dstate == 16), and portable C written for
 * auto-vectorisation, compiled twice: for the baseline ISA (SSE2; NEON on arm64, not
 * tested here) and for AVX2 + FMA. exp2, exp, softplus and silu are simd.h's (the same
 * polynomials at every width, relative error ~1e-7, no libm). The decode step has its own AVX-512
 * kernel; elsewhere it is a 1-step scan.
 */
#include "samba.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_LANES 16
/* Time steps per chunk are chosen so that one chunk is about this many state updates
 * (~10-50 ms per thread: the AVX-512 kernel does ~3e9 updates/s per core, the portable one
 * 0.5e9 .. 1e9), then clamped to [SCAN_CHUNK_MIN, SCAN_CHUNK_MAX]. */
#define SCAN_CHUNK_UPDATES_AVX512 (1 << 26)
#define SCAN_CHUNK_UPDATES_PORTABLE (1 << 24)
#define SCAN_CHUNK_MIN 16
#define SCAN_CHUNK_MAX 1024

/* One block of a chunk: channels c0 .. c0+nch-1 (nch <= 16) of batch b, steps [t0, t1).
 * h (N, 16) carried state of the block, a2 (N, 16) the block's A * log2(e) (lanes >= nch
 * zero); both
 * 64-byte aligned. bc (t1 - t0, 2, N): B[b, g, :, t] and C[b, g, :, t] of the block's group
 * transposed so one step's values are contiguous (B and C rows are L floats apart; reading
 * them column-wise would touch 2N lines of one L1 set per step when L*4 is a multiple of
 * 4096). */
typedef void (*scan_block_fn)(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                              int64_t t1, float *h, const float *a2, const float *bc);

/* ------------------------------------------------------------------ portable kernel --- */
/*
 * Plain C written so that compilers vectorise the lane loops (SSE2 / AVX2 / NEON): the math
 * below uses only +, *, comparisons and integer bit operations (no libm calls), with the
 * same polynomials as the AVX-512 kernel (relative error ~1e-7).
 */
static inline
#if defined(__GNUC__)
    __attribute__((always_inline))
#endif
    void
    scan_lanes_body(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                    int64_t t1, float *restrict h, const float *restrict a2,
                    const float *restrict bc)
{
    const int64_t L = a->seqlen, N = a->dstate;
    const int64_t row0 = (b * a->dim + c0) * L;
    float dtT[16][SCAN_LANES], duT[16][SCAN_LANES], yT[16][SCAN_LANES], row[16];
    int64_t t;

    for (t = t0; t < t1; t += 16) {
        const int nk = (int)(t1 - t < 16 ? t1 - t : 16);
        int ch, k, l;
        int64_t n;

        /* dt, dt*u along the rows, stored per step (dtT[k][lane]) */
        for (ch = 0; ch < SCAN_LANES; ch++) {
            const int64_t o = row0 + ch * L + t;
            const float bias = ch < nch && a->delta_bias != NULL ? a->delta_bias[c0 + ch] : 0.0f;
            if (ch >= nch) {
                for (k = 0; k < nk; k++) {
                    dtT[k][ch] = 0.0f;
                    duT[k][ch] = 0.0f;
                }
                continue;
            }
            for (k = 0; k < nk; k++) {
                row[k] = a->delta[o + k] + bias;
            }
            if (a->delta_softplus) {
                for (k = 0; k < nk; k++) {
                    row[k] = samba_softplusf(row[k]);
                }
            }
            for (k = 0; k < nk; k++) {
                dtT[k][ch] = row[k];
                duT[k][ch] = row[k] * a->u[o + k];
            }
        }
        /* the recurrence, vectorised over the 16 lanes */
        for (k = 0; k < nk; k++) {
            const float *Bk = bc + (t - t0 + k) * 2 * N;
            const float *Ck = Bk + N;
            float acc[SCAN_LANES];
            for (l = 0; l < SCAN_LANES; l++) {
                acc[l] = 0.0f;
            }
            for (n = 0; n < N; n++) {
                const float bn = Bk[n], cn = Ck[n];
                float *restrict hn = h + n * SCAN_LANES;
                const float *restrict an = a2 + n * SCAN_LANES;
                for (l = 0; l < SCAN_LANES; l++) {
                    const float v = samba_exp2f(dtT[k][l] * an[l]) * hn[l] + duT[k][l] * bn;
                    hn[l] = v;
                    acc[l] += v * cn;
                }
            }
            for (l = 0; l < SCAN_LANES; l++) {
                yT[k][l] = acc[l];
            }
        }
        /* y = sum_n h C + D u, gated by silu(z), along the rows */
        for (ch = 0; ch < nch; ch++) {
            const int64_t o = row0 + ch * L + t;
            const float dsk = a->D != NULL ? a->D[c0 + ch] : 0.0f;
            for (k = 0; k < nk; k++) {
                row[k] = yT[k][ch] + dsk * a->u[o + k];
            }
            if (a->z != NULL) {
                for (k = 0; k < nk; k++) {
                    row[k] *= samba_siluf(a->z[o + k]);
                }
            }
            for (k = 0; k < nk; k++) {
                a->y[o + k] = row[k];
            }
        }
    }
}

static void
scan_block_portable(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                    int64_t t1, float *h, const float *a2, const float *bc)
{
    scan_lanes_body(a, b, c0, nch, t0, t1, h, a2, bc);
}

#if SAMBA_X86_DISPATCH
/* the same C compiled for AVX2 + FMA (x86 without AVX-512) */
#if defined(__clang__)
#define SCAN_AVX2_ATTR __attribute__((target("avx2,fma")))
#else /* let GCC fuse a*b+c into FMAs here (C99 mode turns contraction off): ~15% */
#define SCAN_AVX2_ATTR __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#endif
static SCAN_AVX2_ATTR void
scan_block_avx2(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0, int64_t t1,
                float *h, const float *a2, const float *bc)
{
    scan_lanes_body(a, b, c0, nch, t0, t1, h, a2, bc);
}
#endif

/* ------------------------------------------------------------------- AVX-512 kernel --- */
#if SAMBA_X86_DISPATCH
#define AVX512 SAMBA_TARGET_AVX512

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

/*
 * The block kernel body. hv (N) the state vectors (registers when N is a compile-time 16),
 * av (N) the A*log2(e) vectors. Per sub-chunk of 16 steps: dt and dt*u are computed along
 * the rows (one vector = 16 steps of one channel), transposed to one vector per step (16
 * channels), the recurrence runs step by step, and its output sum_n h C is transposed back
 * to rows where D*u and the silu(z) gate are applied.
 */
static inline AVX512 __attribute__((always_inline)) void
scan_block_avx512_body(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                       int64_t t1, const int N, __m512 *hv, const __m512 *av, const float *bc)
{
    const int64_t L = a->seqlen;
    const int64_t row0 = (b * a->dim + c0) * L;
    int64_t t;

    for (t = t0; t < t1; t += 16) {
        const int nk = (int)(t1 - t < 16 ? t1 - t : 16);
        const __mmask16 km = (__mmask16)((1u << nk) - 1u);
        __m512 dtv[16], duv[16];
        int k, n, ch;

        if (t + 16 < t1) {
            /* each channel row is its own stream (rows are L floats apart); with 16 rows of
             * u, delta, z and y that is more streams than the hardware prefetchers follow,
             * so fetch the next sub-chunk's lines now (~10% at seqlen 4096) */
            for (ch = 0; ch < nch; ch++) {
                const int64_t o = row0 + ch * L + t + 16;
                _mm_prefetch((const char *)(a->delta + o), _MM_HINT_T0);
                _mm_prefetch((const char *)(a->u + o), _MM_HINT_T0);
                if (a->z != NULL) {
                    _mm_prefetch((const char *)(a->z + o), _MM_HINT_T0);
                }
                _mm_prefetch((const char *)(a->y + o), _MM_HINT_T0);
            }
        }
        for (ch = 0; ch < 16; ch++) {
            if (ch < nch) {
                const int64_t o = row0 + ch * L + t;
                __m512 dt = _mm512_maskz_loadu_ps(km, a->delta + o);
                if (a->delta_bias != NULL) {
                    dt = _mm512_add_ps(dt, _mm512_set1_ps(a->delta_bias[c0 + ch]));
                }
                if (a->delta_softplus) {
                    dt = samba_v512_softplus(dt);
                }
                dtv[ch] = dt;
                duv[ch] = _mm512_mul_ps(dt, _mm512_maskz_loadu_ps(km, a->u + o));
            } else {
                dtv[ch] = _mm512_setzero_ps();
                duv[ch] = _mm512_setzero_ps();
            }
        }
        v_transpose16(dtv);
        v_transpose16(duv);
        for (k = 0; k < nk; k++) {
            const __m512 dt = dtv[k];
            const __m512 du = duv[k];
            const float *Bk = bc + (t - t0 + k) * 2 * N;
            const float *Ck = Bk + N;
            __m512 acc0 = _mm512_setzero_ps();
            __m512 acc1 = _mm512_setzero_ps();

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 8
#endif
            for (n = 0; n < N; n += 2) {
                const __m512 e0 = samba_v512_exp2(_mm512_mul_ps(dt, av[n]));
                hv[n] = _mm512_fmadd_ps(e0, hv[n], _mm512_mul_ps(du, _mm512_set1_ps(Bk[n])));
                acc0 = _mm512_fmadd_ps(hv[n], _mm512_set1_ps(Ck[n]), acc0);
                if (n + 1 < N) {
                    const __m512 e1 = samba_v512_exp2(_mm512_mul_ps(dt, av[n + 1]));
                    hv[n + 1] = _mm512_fmadd_ps(e1, hv[n + 1],
                                                _mm512_mul_ps(du, _mm512_set1_ps(Bk[n + 1])));
                    acc1 = _mm512_fmadd_ps(hv[n + 1], _mm512_set1_ps(Ck[n + 1]), acc1);
                }
            }
            duv[k] = _mm512_add_ps(acc0, acc1);
        }
        for (k = nk; k < 16; k++) {
            duv[k] = _mm512_setzero_ps();
        }
        v_transpose16(duv);
        for (ch = 0; ch < nch; ch++) {
            const int64_t o = row0 + ch * L + t;
            __m512 y = duv[ch];
            if (a->D != NULL) {
                y = _mm512_fmadd_ps(_mm512_set1_ps(a->D[c0 + ch]),
                                    _mm512_maskz_loadu_ps(km, a->u + o), y);
            }
            if (a->z != NULL) {
                y = _mm512_mul_ps(y, samba_v512_silu(_mm512_maskz_loadu_ps(km, a->z + o)));
            }
            _mm512_mask_storeu_ps(a->y + o, km, y);
        }
    }
}

static AVX512 void
scan_block_avx512_n16(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                      int64_t t1, float *h, const float *a2, const float *bc)
{
    __m512 hv[16], av[16];
    int n;

    for (n = 0; n < 16; n++) {
        hv[n] = _mm512_load_ps(h + n * 16);
        av[n] = _mm512_load_ps(a2 + n * 16);
    }
    scan_block_avx512_body(a, b, c0, nch, t0, t1, 16, hv, av, bc);
    for (n = 0; n < 16; n++) {
        _mm512_store_ps(h + n * 16, hv[n]);
    }
}

static AVX512 void
scan_block_avx512_gen(const samba_scan_args *a, int64_t b, int64_t c0, int nch, int64_t t0,
                      int64_t t1, float *h, const float *a2, const float *bc)
{
    scan_block_avx512_body(a, b, c0, nch, t0, t1, (int)a->dstate, (__m512 *)h, (const __m512 *)a2,
                           bc);
}

/*
 * Decode step for channels d0 .. d0+nd-1 (nd <= 16) of batch b; the state rows (N floats per
 * channel) are updated in place. Elementwise parts (softplus, dt*x, D*x, silu(z)) run over
 * the 16 channels at once; the recurrence over n in vectors of 16 states. The state update
 * uses the same float32 operations as the scan (bit-identical states); y sums h*C in another
 * order.
 */
static AVX512 void
scan_step_avx512(const samba_scan_step_args *s, int64_t b, int64_t d0, int nd)
{
    const int64_t D = s->dim, N = s->dstate, G = s->ngroups, dpg = D / G;
    const int64_t o = b * D + d0;
    const __mmask16 cm = (__mmask16)((1u << nd) - 1u);
    const __m512 x = _mm512_maskz_loadu_ps(cm, s->x + o);
    __m512 dt = _mm512_maskz_loadu_ps(cm, s->dt + o);
    __m512 y;
    float dtf[16], duf[16], yf[16];
    int j;

    if (s->dt_bias != NULL) {
        dt = _mm512_add_ps(dt, _mm512_maskz_loadu_ps(cm, s->dt_bias + d0));
    }
    if (s->dt_softplus) {
        dt = samba_v512_softplus(dt);
    }
    _mm512_storeu_ps(dtf, dt);
    _mm512_storeu_ps(duf, _mm512_mul_ps(dt, x));
    for (j = 0; j < nd; j++) {
        const int64_t d = d0 + j;
        const float *Bv = s->B + (b * G + d / dpg) * N;
        const float *Cv = s->C + (b * G + d / dpg) * N;
        const float *Ar = s->A + d * N;
        float *h = s->state + (o + j) * N;
        const __m512 dtj = _mm512_set1_ps(dtf[j]);
        const __m512 duj = _mm512_set1_ps(duf[j]);
        __m512 acc = _mm512_setzero_ps();
        int64_t n0;

        for (n0 = 0; n0 < N; n0 += 16) {
            const __mmask16 nm = (__mmask16)(N - n0 >= 16 ? 0xFFFFu : (1u << (N - n0)) - 1u);
            /* A*log2(e) rounded and clamped exactly as in samba_scan_fwd (NaN kept) */
            const __m512 a2 = _mm512_max_ps(
                _mm512_set1_ps(-3.0e38f),
                _mm512_mul_ps(_mm512_maskz_loadu_ps(nm, Ar + n0), _mm512_set1_ps(SAMBA_LOG2E)));
            const __m512 e = samba_v512_exp2(_mm512_mul_ps(dtj, a2));
            __m512 hv = _mm512_maskz_loadu_ps(nm, h + n0);
            hv = _mm512_fmadd_ps(e, hv, _mm512_mul_ps(duj, _mm512_maskz_loadu_ps(nm, Bv + n0)));
            _mm512_mask_storeu_ps(h + n0, nm, hv);
            acc = _mm512_fmadd_ps(hv, _mm512_maskz_loadu_ps(nm, Cv + n0), acc);
        }
        yf[j] = _mm512_reduce_add_ps(acc);
    }
    y = _mm512_maskz_loadu_ps(cm, yf);
    if (s->D != NULL) {
        y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(cm, s->D + d0), x, y);
    }
    if (s->z != NULL) {
        y = _mm512_mul_ps(y, samba_v512_silu(_mm512_maskz_loadu_ps(cm, s->z + o)));
    }
    _mm512_mask_storeu_ps(s->y + o, cm, y);
}
#endif /* SAMBA_X86_DISPATCH */

/* ---------------------------------------------------------------------------- driver --- */

/* Kernel choice (simd.h's samba_isa()): the AVX-512 kernel, else the portable C compiled for
 * AVX2 + FMA, else the portable C at the baseline ISA. */
static int
scan_use_avx512(void)
{
#if SAMBA_X86_DISPATCH
    return samba_isa() >= SAMBA_ISA_AVX512;
#else
    return 0;
#endif
}

static scan_block_fn
scan_pick(int64_t N)
{
#if SAMBA_X86_DISPATCH
    if (scan_use_avx512()) {
        return N == 16 ? scan_block_avx512_n16 : scan_block_avx512_gen;
    }
    if (samba_isa() >= SAMBA_ISA_AVX2) {
        return scan_block_avx2;
    }
#endif
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
    float *hbuf, *a2buf, *bcbuf;
    scan_block_fn fn;
    samba_status st = SAMBA_OK;

    if (a == NULL || a->batch < 0 || a->dim < 0 || a->dstate < 0 || a->seqlen < 0 ||
        a->ngroups < 1 || a->dim % a->ngroups != 0) {
        return SAMBA_ERR_ARG;
    }
    N = a->dstate;
    if (a->batch == 0 || a->dim == 0) {
        return SAMBA_OK;
    }
    if (a->A == NULL || (a->seqlen > 0 && (a->u == NULL || a->delta == NULL || a->B == NULL ||
                                           a->C == NULL || a->y == NULL))) {
        return SAMBA_ERR_ARG;
    }
    if (a->seqlen > 0 && N == 0) {
        /* no state: y = D*u (gated) */
        int64_t i, total = a->batch * a->dim * a->seqlen;
        for (i = 0; i < total; i++) {
            const int64_t d = (i / a->seqlen) % a->dim;
            float v = a->D != NULL ? a->D[d] * a->u[i] : 0.0f;
            a->y[i] = a->z != NULL ? v * samba_siluf(a->z[i]) : v;
        }
        return SAMBA_OK;
    }
    if (a->seqlen == 0 || N == 0) {
        if (a->final_state != NULL) {
            const size_t bytes = (size_t)(a->batch * a->dim * N) * sizeof(float);
            if (a->initial_state != NULL) {
                memmove(a->final_state, a->initial_state, bytes);
            } else {
                memset(a->final_state, 0, bytes);
            }
        }
        return SAMBA_OK;
    }

    fn = scan_pick(N);
    dpg = a->dim / a->ngroups;
    nbg = (dpg + SCAN_LANES - 1) / SCAN_LANES;
    nblk = a->ngroups * nbg;
    nitems = a->batch * nblk;
    chunk = (scan_use_avx512() ? SCAN_CHUNK_UPDATES_AVX512 : SCAN_CHUNK_UPDATES_PORTABLE) /
            (a->batch * a->dim * N);
    chunk = chunk < SCAN_CHUNK_MIN   ? SCAN_CHUNK_MIN
            : chunk > SCAN_CHUNK_MAX ? SCAN_CHUNK_MAX
                                     : chunk;
    chunk = chunk / 16 * 16;
    if (chunk > a->seqlen) {
        chunk = a->seqlen;
    }
    hbuf = (float *)scan_alloc((size_t)(nitems * N * SCAN_LANES));
    a2buf = (float *)scan_alloc((size_t)(nblk * N * SCAN_LANES));
    bcbuf = (float *)scan_alloc((size_t)(a->batch * a->ngroups * a->seqlen * 2 * N));
    if (hbuf == NULL || a2buf == NULL || bcbuf == NULL) {
        free(hbuf);
        free(a2buf);
        free(bcbuf);
        return SAMBA_ERR_ALLOC;
    }
    memset(hbuf, 0, (size_t)(nitems * N * SCAN_LANES) * sizeof(float));
    memset(a2buf, 0, (size_t)(nblk * N * SCAN_LANES) * sizeof(float));
    /* block layout: channel c -> block (c / dpg) * nbg + (c % dpg) / 16, lane (c % dpg) % 16 */
    for (c = 0; c < a->dim; c++) {
        const int64_t blk = (c / dpg) * nbg + (c % dpg) / SCAN_LANES;
        const int64_t lane = (c % dpg) % SCAN_LANES;
        for (n = 0; n < N; n++) {
            /* A*log2(e), kept finite for finite dt (exp2(-inf) would give NaN) */
            float v = a->A[c * N + n] * SAMBA_LOG2E;
            if (v < -3.0e38f) {
                v = -3.0e38f;
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

    /* B, C (b, g, N, L) -> bcbuf (b, g, L, {B, C}, N), in tiles of 256 steps */
    {
        const int64_t L = a->seqlen, ntile = (L + 255) / 256;
        const int64_t ntot = a->batch * a->ngroups * ntile;
        int64_t it;
#ifdef _OPENMP
#pragma omp parallel for num_threads(samba_ctx_threads(ctx)) schedule(static) if (ntot > 1)
#endif
        for (it = 0; it < ntot; it++) {
            const int64_t bg = it / ntile, ta = (it % ntile) * 256;
            const int64_t tb = ta + 256 < L ? ta + 256 : L;
            const float *Bs = a->B + bg * N * L, *Cs = a->C + bg * N * L;
            float *dst = bcbuf + bg * L * 2 * N;
            int64_t t, nn;
            for (nn = 0; nn < N; nn++) {
                for (t = ta; t < tb; t++) {
                    dst[t * 2 * N + nn] = Bs[nn * L + t];
                    dst[t * 2 * N + N + nn] = Cs[nn * L + t];
                }
            }
        }
    }

    for (t0 = 0; t0 < a->seqlen; t0 += chunk) {
        const int64_t t1 = t0 + chunk < a->seqlen ? t0 + chunk : a->seqlen;
        int64_t it;
        if (t0 > 0 && samba_ctx_stop(ctx)) {
            st = SAMBA_ERR_INTERRUPTED;
            break;
        }
#ifdef _OPENMP
#pragma omp parallel for num_threads(samba_ctx_threads(ctx)) schedule(dynamic, 1) if (nitems > 1)
#endif
        for (it = 0; it < nitems; it++) {
            const int64_t bb = it / nblk, blk = it % nblk;
            const int64_t g = blk / nbg, j = blk % nbg;
            const int64_t c0 = g * dpg + j * SCAN_LANES;
            const int nch =
                (int)(dpg - j * SCAN_LANES < SCAN_LANES ? dpg - j * SCAN_LANES : SCAN_LANES);
            fn(a, bb, c0, nch, t0, t1, hbuf + it * N * SCAN_LANES, a2buf + blk * N * SCAN_LANES,
               bcbuf + ((bb * a->ngroups + g) * a->seqlen + t0) * 2 * N);
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
    free(bcbuf);
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
    if ((s->state == NULL && s->dstate > 0) || s->x == NULL || s->dt == NULL || s->A == NULL ||
        s->B == NULL || s->C == NULL || s->y == NULL) {
        return SAMBA_ERR_ARG;
    }
#if SAMBA_X86_DISPATCH
    if (scan_use_avx512()) {
        const int64_t nblk = (s->dim + 15) / 16;
        const int64_t nitems = s->batch * nblk;
        int64_t it;
#ifdef _OPENMP
#pragma omp parallel for num_threads(samba_ctx_threads(ctx))                                       \
    schedule(static) if (s->batch * s->dim * (s->dstate + 8) >= (1 << 16))
#endif
        for (it = 0; it < nitems; it++) {
            const int64_t b = it / nblk, d0 = (it % nblk) * 16;
            scan_step_avx512(s, b, d0, (int)(s->dim - d0 < 16 ? s->dim - d0 : 16));
        }
        return SAMBA_OK;
    }
#endif
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
