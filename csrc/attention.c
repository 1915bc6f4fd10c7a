/*
 * attention.c - causal sliding-window / full attention with GQA (prefill), flash-style.
 *
 * q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd); out (B, Lq, H, hd).  Query i sits at key index
 * i + off (off = Lk - Lq) and sees keys j with pos - W < j <= pos (W <= 0: all j <= pos).
 *
 * Design (online softmax, the L x L matrix is never stored; cost grows as L * W):
 *   - A task is one (batch b, kv head g, tile of bq query positions).  Its columns are the
 *     M = bq * G (position, query head) pairs of the G = H / Hkv query heads that share kv
 *     head g, so each K/V tile loaded serves all of them (GQA).  bq * G ~ 64.
 *   - The tile's queries are packed transposed and pre-scaled: qt (hd, Mp) = q * scale *
 *     log2(e) (Mp = M rounded up to 16, zero padding), so the softmax runs in base 2.
 *   - Keys are visited in tiles of ATTN_BK rows, only those inside the tile's window.
 *     st (nk, Mp) = K_tile qt is computed straight from the strided K rows (no K packing):
 *     each micro-kernel step broadcasts one K element and FMAs a row of qt.  The softmax
 *     state (running max m, sum l) is then per column, i.e. SIMD across queries.
 *   - Only tiles that cross the causal diagonal or the window's far edge are masked.
 *   - o (M, hd) = alpha * o + P V with P = st after exp2, again straight from strided V rows.
 *   - AVX-512 register-blocked micro-kernels (runtime dispatch, hd % 16 == 0) and a portable
 *     C path with the same tiling for everything else.
 *   - Tasks run with OpenMP in rounds of bounded cost; ctx is polled between rounds on the
 *     calling thread.  Scratch is malloc'ed per call (one slice per thread).
 */
#include "samba.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define SAMBA_ATTN_AVX512 1
#include <immintrin.h>
#endif

#define ATTN_BK 64      /* keys per tile */
#define ATTN_MCOLS 64   /* target (position, head) columns per query tile */
#define ATTN_LOG2E 1.4426950408889634

typedef struct attn_plan {
    int64_t B, Lq, Lk, H, Hkv, hd, G, off, W;
    float scale2;   /* softmax_scale * log2(e) */
    int64_t bq;     /* query positions per tile */
    int64_t nqt;    /* query tiles per (b, kv head) */
    int64_t Mp;     /* max padded columns of a tile (multiple of 16) */
    const float *q, *k, *v;
    float *out;
} attn_plan;

/* Per-thread scratch, all 64-byte aligned slices of one buffer. */
typedef struct attn_scratch {
    float *qt;      /* (hd, Mp) */
    float *st;      /* (ATTN_BK, Mp) */
    float *o;       /* (Mp, hd) */
    float *m, *l, *alpha; /* (Mp) */
    int32_t *colq;  /* (Mp) column -> position within the tile */
} attn_scratch;

static int64_t
attn_round16(int64_t x)
{
    return (x + 15) / 16 * 16;
}

static size_t
attn_scratch_floats(const attn_plan *P)
{
    return (size_t)(P->hd * P->Mp + ATTN_BK * P->Mp + P->Mp * P->hd + 4 * P->Mp) + 16 * 8;
}

static void
attn_scratch_carve(const attn_plan *P, float *base, attn_scratch *s)
{
    float *p = base;
#define ATTN_TAKE(n) (p = (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63), p += (n), p - (n))
    s->qt = ATTN_TAKE(P->hd * P->Mp);
    s->st = ATTN_TAKE(ATTN_BK * P->Mp);
    s->o = ATTN_TAKE(P->Mp * P->hd);
    s->m = ATTN_TAKE(P->Mp);
    s->l = ATTN_TAKE(P->Mp);
    s->alpha = ATTN_TAKE(P->Mp);
    s->colq = (int32_t *)ATTN_TAKE(P->Mp);
#undef ATTN_TAKE
}

/* Key range [*klo, *khi] seen by query positions p0 .. p0 + nq - 1. */
static void
attn_key_range(const attn_plan *P, int64_t p0, int64_t nq, int64_t *klo, int64_t *khi)
{
    int64_t lo = 0;
    if (P->W > 0) {
        lo = p0 + P->off - P->W + 1;
        if (lo < 0) {
            lo = 0;
        }
    }
    *klo = lo;
    *khi = p0 + nq - 1 + P->off;
}

/* Does key tile [k0, k0 + nk) need a mask for queries p0 .. p0 + nq - 1? */
static int
attn_tile_needs_mask(const attn_plan *P, int64_t p0, int64_t nq, int64_t k0, int64_t nk)
{
    if (k0 + nk - 1 > p0 + P->off) {
        return 1; /* crosses the causal diagonal of the first query */
    }
    if (P->W > 0 && k0 <= p0 + nq - 1 + P->off - P->W) {
        return 1; /* reaches past the window of the last query */
    }
    return 0;
}

/* Packs the queries of a tile: qt[d * Mp + c] = q[b, p0 + c / G, g * G + c % G, d] * scale2
 * for c < M, zero for M <= c < Mp. */
static void
attn_pack_q(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq, int64_t Mp,
            float *qt, int32_t *colq)
{
    const int64_t G = P->G, hd = P->hd, M = nq * G;
    int64_t c, d;

    for (c = 0; c < Mp; c++) {
        colq[c] = (int32_t)(c / G);
    }
    for (c = 0; c < M; c++) {
        const float *src = P->q + ((b * P->Lq + p0 + c / G) * P->H + g * G + c % G) * hd;
        for (d = 0; d < hd; d++) {
            qt[d * Mp + c] = src[d] * P->scale2;
        }
    }
    for (d = 0; d < hd; d++) {
        for (c = M; c < Mp; c++) {
            qt[d * Mp + c] = 0.0f;
        }
    }
}

/* Mask bounds of key tile k0 for a tile at p0: column c is valid for row j iff
 * j <= colq[c] + hi0 and (W <= 0 or j > colq[c] + hi0 - W). Clamped to int32. */
static int32_t
attn_hi0(const attn_plan *P, int64_t p0, int64_t k0)
{
    int64_t h = p0 + P->off - k0;
    if (h > (1 << 30)) {
        h = 1 << 30;
    }
    if (h < -(1 << 30)) {
        h = -(1 << 30);
    }
    return (int32_t)h;
}

/* Valid rows [*jlo, *jhi) of a masked key tile of nk rows for a column at position cq. */
static void
attn_row_range(const attn_plan *P, int32_t cq, int32_t hi0, int64_t nk, int64_t *jlo,
               int64_t *jhi)
{
    const int64_t hi = (int64_t)cq + hi0; /* last valid row */
    int64_t lo = P->W > 0 ? hi - P->W + 1 : 0, e = hi + 1;
    lo = lo < 0 ? 0 : lo;
    e = e > nk ? nk : e;
    *jlo = lo < e ? lo : e;
    *jhi = e > *jlo ? e : *jlo;
}

/* Writes out rows of a finished tile: out[b, p0 + c / G, g * G + c % G, :] = o[c] / l[c]. */
static void
attn_store_out(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t M,
               const float *o, const float *l)
{
    const int64_t G = P->G, hd = P->hd;
    int64_t c, d;

    for (c = 0; c < M; c++) {
        float *dst = P->out + ((b * P->Lq + p0 + c / G) * P->H + g * G + c % G) * hd;
        const float inv = 1.0f / l[c];
        for (d = 0; d < hd; d++) {
            dst[d] = o[c * hd + d] * inv;
        }
    }
}

/* ------------------------------------------------------------------ portable C path --- */

static void
attn_tile_generic(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
                  const attn_scratch *S)
{
    const int64_t hd = P->hd, M = nq * P->G, Mp = attn_round16(M);
    const int64_t ks = P->Hkv * hd;
    const float *kb = P->k + (b * P->Lk * P->Hkv + g) * hd;
    const float *vb = P->v + (b * P->Lk * P->Hkv + g) * hd;
    float *qt = S->qt, *st = S->st, *o = S->o, *m = S->m, *l = S->l;
    int64_t klo, khi, k0, c, j, d;

    attn_pack_q(P, b, g, p0, nq, Mp, qt, S->colq);
    for (c = 0; c < Mp; c++) {
        m[c] = -INFINITY;
        l[c] = 0.0f;
    }
    memset(o, 0, sizeof(float) * (size_t)(M * hd));
    attn_key_range(P, p0, nq, &klo, &khi);

    for (k0 = klo; k0 <= khi; k0 += ATTN_BK) {
        const int64_t nk = khi - k0 + 1 < ATTN_BK ? khi - k0 + 1 : ATTN_BK;
        /* st (nk, Mp) = K_tile qt */
        for (j = 0; j < nk; j++) {
            const float *kr = kb + (k0 + j) * ks;
            float *sr = st + j * Mp;
            for (c = 0; c < Mp; c++) {
                sr[c] = 0.0f;
            }
            for (d = 0; d < hd; d++) {
                const float kd = kr[d];
                const float *qd = qt + d * Mp;
                for (c = 0; c < Mp; c++) {
                    sr[c] += kd * qd[c];
                }
            }
        }
        const int masked = attn_tile_needs_mask(P, p0, nq, k0, nk);
        const int32_t hi0 = masked ? attn_hi0(P, p0, k0) : 0;
        if (masked) {
            for (j = 0; j < nk; j++) {
                for (c = 0; c < Mp; c++) {
                    const int64_t hi = (int64_t)S->colq[c] + hi0;
                    if (j > hi || (P->W > 0 && j <= hi - P->W)) {
                        st[j * Mp + c] = -INFINITY;
                    }
                }
            }
        }
        /* online softmax per column, then o = alpha * o + P V */
        for (c = 0; c < M; c++) {
            float mx = m[c], mu, alpha, sum = 0.0f;
            int64_t jlo = 0, jhi = nk;
            for (j = 0; j < nk; j++) {
                const float s = st[j * Mp + c];
                mx = s > mx ? s : mx;
            }
            mu = mx == -INFINITY ? 0.0f : mx;
            alpha = exp2f(m[c] - mu);
            for (j = 0; j < nk; j++) {
                const float p = exp2f(st[j * Mp + c] - mu);
                st[j * Mp + c] = p;
                sum += p;
            }
            l[c] = l[c] * alpha + sum;
            m[c] = mx;
            for (d = 0; d < hd; d++) {
                o[c * hd + d] *= alpha;
            }
            if (masked) {
                attn_row_range(P, S->colq[c], hi0, nk, &jlo, &jhi); /* masked V never read */
            }
            for (j = jlo; j < jhi; j++) {
                const float p = st[j * Mp + c];
                const float *vr = vb + (k0 + j) * ks;
                float *oc = o + c * hd;
                for (d = 0; d < hd; d++) {
                    oc[d] += p * vr[d];
                }
            }
        }
    }
    attn_store_out(P, b, g, p0, M, o, l);
}

/* ------------------------------------------------------------------------ AVX-512 --- */
#ifdef SAMBA_ATTN_AVX512

#define ATTN_AVX512 __attribute__((target("avx512f,fma")))
#define ATTN_INLINE static inline __attribute__((always_inline))

/* 2^x for x <= 0 (or NaN): round-to-nearest split, degree-6 polynomial on [-0.5, 0.5]
 * (max relative error ~1e-7), exact 0 for x < -126 (masked -inf included); NaN stays NaN. */
ATTN_AVX512 ATTN_INLINE __m512
attn_exp2_avx512(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    __m512 xi, f, p;
    x = _mm512_max_ps(_mm512_set1_ps(-127.0f), x); /* NaN x passes through */
    xi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm512_sub_ps(x, xi);
    p = _mm512_set1_ps(1.5337576830683796e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399860363037684e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618519534356884e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503289975178886e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264660871389e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472056005106e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, xi);
}

/* st[r * Mp + 16 v ..] = sum_d kr[r * ks + d] * qt[d * Mp + 16 v ..] for r < R, v < NV. */
ATTN_AVX512 ATTN_INLINE void
attn_qk_block(const float *qt, int64_t Mp, const float *kr, int64_t ks, int64_t hd,
              float *st, const int R, const int NV)
{
    __m512 acc[6][4];
    int64_t d;
    int r, v;

    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            acc[r][v] = _mm512_setzero_ps();
        }
    }
    for (d = 0; d < hd; d++) {
        const float *qd = qt + d * Mp;
        __m512 qv[4];
        for (v = 0; v < NV; v++) {
            qv[v] = _mm512_load_ps(qd + 16 * v);
        }
        for (r = 0; r < R; r++) {
            const __m512 kv = _mm512_set1_ps(kr[r * ks + d]);
            for (v = 0; v < NV; v++) {
                acc[r][v] = _mm512_fmadd_ps(kv, qv[v], acc[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            _mm512_store_ps(st + r * Mp + 16 * v, acc[r][v]);
        }
    }
}

#define ATTN_QK_CASE(R, NV)                                                                \
    case (R) * 8 + (NV):                                                                   \
        attn_qk_block(qt, Mp, kr, ks, hd, st, R, NV);                                      \
        break;

ATTN_AVX512 static void
attn_qk_dispatch(const float *qt, int64_t Mp, const float *kr, int64_t ks, int64_t hd,
                 float *st, int R, int NV)
{
    switch (R * 8 + NV) {
        ATTN_QK_CASE(6, 4) ATTN_QK_CASE(6, 3) ATTN_QK_CASE(6, 2) ATTN_QK_CASE(6, 1)
        ATTN_QK_CASE(5, 4) ATTN_QK_CASE(5, 3) ATTN_QK_CASE(5, 2) ATTN_QK_CASE(5, 1)
        ATTN_QK_CASE(4, 4) ATTN_QK_CASE(4, 3) ATTN_QK_CASE(4, 2) ATTN_QK_CASE(4, 1)
        ATTN_QK_CASE(3, 4) ATTN_QK_CASE(3, 3) ATTN_QK_CASE(3, 2) ATTN_QK_CASE(3, 1)
        ATTN_QK_CASE(2, 4) ATTN_QK_CASE(2, 3) ATTN_QK_CASE(2, 2) ATTN_QK_CASE(2, 1)
        ATTN_QK_CASE(1, 4) ATTN_QK_CASE(1, 3) ATTN_QK_CASE(1, 2) ATTN_QK_CASE(1, 1)
    default:
        break;
    }
}

/* o rows r < R, columns 16 v ..: o = alpha[r] * o + sum_j st[j * Mp + r] * vr[j * vs + ..]. */
ATTN_AVX512 ATTN_INLINE void
attn_pv_block(const float *st, int64_t Mp, const float *vr, int64_t vs, int64_t nk,
              float *o, int64_t hd, const float *alpha, const int R, const int NV)
{
    __m512 acc[6][4];
    int64_t j;
    int r, v;

    for (r = 0; r < R; r++) {
        const __m512 a = _mm512_set1_ps(alpha[r]);
        for (v = 0; v < NV; v++) {
            acc[r][v] = _mm512_mul_ps(a, _mm512_load_ps(o + r * hd + 16 * v));
        }
    }
    for (j = 0; j < nk; j++) {
        const float *vj = vr + j * vs;
        const float *sj = st + j * Mp;
        __m512 vv[4];
        for (v = 0; v < NV; v++) {
            vv[v] = _mm512_loadu_ps(vj + 16 * v);
        }
        for (r = 0; r < R; r++) {
            const __m512 p = _mm512_set1_ps(sj[r]);
            for (v = 0; v < NV; v++) {
                acc[r][v] = _mm512_fmadd_ps(p, vv[v], acc[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            _mm512_store_ps(o + r * hd + 16 * v, acc[r][v]);
        }
    }
}

#define ATTN_PV_CASE(R, NV)                                                                \
    case (R) * 8 + (NV):                                                                   \
        attn_pv_block(st, Mp, vr, vs, nk, o, hd, alpha, R, NV);                            \
        break;

ATTN_AVX512 static void
attn_pv_dispatch(const float *st, int64_t Mp, const float *vr, int64_t vs, int64_t nk,
                 float *o, int64_t hd, const float *alpha, int R, int NV)
{
    switch (R * 8 + NV) {
        ATTN_PV_CASE(6, 4) ATTN_PV_CASE(6, 3) ATTN_PV_CASE(6, 2) ATTN_PV_CASE(6, 1)
        ATTN_PV_CASE(5, 4) ATTN_PV_CASE(5, 3) ATTN_PV_CASE(5, 2) ATTN_PV_CASE(5, 1)
        ATTN_PV_CASE(4, 4) ATTN_PV_CASE(4, 3) ATTN_PV_CASE(4, 2) ATTN_PV_CASE(4, 1)
        ATTN_PV_CASE(3, 4) ATTN_PV_CASE(3, 3) ATTN_PV_CASE(3, 2) ATTN_PV_CASE(3, 1)
        ATTN_PV_CASE(2, 4) ATTN_PV_CASE(2, 3) ATTN_PV_CASE(2, 2) ATTN_PV_CASE(2, 1)
        ATTN_PV_CASE(1, 4) ATTN_PV_CASE(1, 3) ATTN_PV_CASE(1, 2) ATTN_PV_CASE(1, 1)
    default:
        break;
    }
}

#define ATTN_QK_ROWS 6
#define ATTN_PV_ROWS 6

ATTN_AVX512 static void
attn_tile_avx512(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
                 const attn_scratch *S)
{
    const int64_t hd = P->hd, M = nq * P->G, Mp = attn_round16(M);
    const int64_t ks = P->Hkv * hd;
    const float *kb = P->k + (b * P->Lk * P->Hkv + g) * hd;
    const float *vb = P->v + (b * P->Lk * P->Hkv + g) * hd;
    float *qt = S->qt, *st = S->st, *o = S->o, *m = S->m, *l = S->l, *alpha = S->alpha;
    int64_t klo, khi, k0, c, j, cb, db;

    attn_pack_q(P, b, g, p0, nq, Mp, qt, S->colq);
    for (c = 0; c < Mp; c += 16) {
        _mm512_store_ps(m + c, _mm512_set1_ps(-INFINITY));
        _mm512_store_ps(l + c, _mm512_setzero_ps());
    }
    memset(o, 0, sizeof(float) * (size_t)(Mp * hd));
    attn_key_range(P, p0, nq, &klo, &khi);

    for (k0 = klo; k0 <= khi; k0 += ATTN_BK) {
        const int64_t nk = khi - k0 + 1 < ATTN_BK ? khi - k0 + 1 : ATTN_BK;
        const float *kt = kb + k0 * ks;

        /* st (nk, Mp) = K_tile qt */
        for (j = 0; j < nk; j += ATTN_QK_ROWS) {
            const int R = (int)(nk - j < ATTN_QK_ROWS ? nk - j : ATTN_QK_ROWS);
            for (cb = 0; cb < Mp; cb += 64) {
                const int NV = (int)(Mp - cb < 64 ? (Mp - cb) / 16 : 4);
                attn_qk_dispatch(qt + cb, Mp, kt + j * ks, ks, hd, st + j * Mp + cb, R, NV);
            }
        }
        const int masked = attn_tile_needs_mask(P, p0, nq, k0, nk);
        const int32_t hi0 = masked ? attn_hi0(P, p0, k0) : 0;

        if (masked) {
            const __m512i hiv = _mm512_set1_epi32(hi0);
            const __m512i w = _mm512_set1_epi32((int32_t)P->W); /* W < Lk */
            const __m512 ninf = _mm512_set1_ps(-INFINITY);
            for (c = 0; c < Mp; c += 16) {
                const __m512i hi = _mm512_add_epi32(_mm512_load_si512(S->colq + c), hiv);
                const __m512i lo = _mm512_sub_epi32(hi, w);
                for (j = 0; j < nk; j++) {
                    const __m512i jv = _mm512_set1_epi32((int32_t)j);
                    __mmask16 ok = _mm512_cmp_epi32_mask(jv, hi, _MM_CMPINT_LE);
                    if (P->W > 0) {
                        ok &= _mm512_cmp_epi32_mask(jv, lo, _MM_CMPINT_NLE);
                    }
                    _mm512_store_ps(st + j * Mp + c,
                                    _mm512_mask_mov_ps(ninf, ok, _mm512_load_ps(st + j * Mp + c)));
                }
            }
        }
        /* online softmax, SIMD across columns */
        for (c = 0; c < Mp; c += 16) {
            const __m512 mo = _mm512_load_ps(m + c);
            __m512 mx = mo, mu, al, sum = _mm512_setzero_ps();
            __mmask16 dead;
            for (j = 0; j < nk; j++) {
                mx = _mm512_max_ps(_mm512_load_ps(st + j * Mp + c), mx);
            }
            dead = _mm512_cmp_ps_mask(mx, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
            mu = _mm512_mask_mov_ps(mx, dead, _mm512_setzero_ps());
            al = attn_exp2_avx512(_mm512_sub_ps(mo, mu));
            for (j = 0; j < nk; j++) {
                const __m512 p = attn_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(st + j * Mp + c), mu));
                _mm512_store_ps(st + j * Mp + c, p);
                sum = _mm512_add_ps(sum, p);
            }
            _mm512_store_ps(l + c, _mm512_fmadd_ps(_mm512_load_ps(l + c), al, sum));
            _mm512_store_ps(m + c, mx);
            _mm512_store_ps(alpha + c, al);
        }
        /* o (M, hd) = alpha * o + P V */
        if (masked) {
            /* row by row over its own valid keys only, so that masked keys (even NaN or
             * Inf values) never reach a query that does not see them */
            for (c = 0; c < M; c++) {
                int64_t jlo, jhi;
                attn_row_range(P, S->colq[c], hi0, nk, &jlo, &jhi);
                for (db = 0; db < hd; db += 64) {
                    const int NV = (int)(hd - db < 64 ? (hd - db) / 16 : 4);
                    attn_pv_dispatch(st + jlo * Mp + c, Mp, vb + (k0 + jlo) * ks + db, ks,
                                     jhi - jlo, o + c * hd + db, hd, alpha + c, 1, NV);
                }
            }
            continue;
        }
        for (c = 0; c < M; c += ATTN_PV_ROWS) {
            const int R = (int)(M - c < ATTN_PV_ROWS ? M - c : ATTN_PV_ROWS);
            for (db = 0; db < hd; db += 64) {
                const int NV = (int)(hd - db < 64 ? (hd - db) / 16 : 4);
                attn_pv_dispatch(st + c, Mp, vb + k0 * ks + db, ks, nk, o + c * hd + db, hd,
                                 alpha + c, R, NV);
            }
        }
    }
    attn_store_out(P, b, g, p0, M, o, l);
}

static int
attn_use_avx512(int64_t hd)
{
    return hd % 16 == 0 && __builtin_cpu_supports("avx512f");
}
#else
static int
attn_use_avx512(int64_t hd)
{
    (void)hd;
    return 0;
}
#endif /* SAMBA_ATTN_AVX512 */

/* ------------------------------------------------------------------------ driver --- */

samba_status
samba_attn_fwd(const samba_attn_args *a, const samba_ctx *ctx)
{
    attn_plan P;
    int64_t T, t, per;
    int nth, avx;
    float *scratch;
    double budget;

    if (a == NULL) {
        return SAMBA_ERR_ARG;
    }
    if (a->batch < 0 || a->seqlen_q < 0 || a->seqlen_k < a->seqlen_q || a->nheads < 0 ||
        a->nheads_kv < 0 || a->headdim < 0) {
        return SAMBA_ERR_ARG;
    }
    if (a->batch == 0 || a->seqlen_q == 0 || a->nheads == 0 || a->headdim == 0) {
        return SAMBA_OK;
    }
    if (a->nheads_kv == 0 || a->nheads % a->nheads_kv != 0) {
        return SAMBA_ERR_ARG;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL) {
        return SAMBA_ERR_ARG;
    }
    P.B = a->batch;
    P.Lq = a->seqlen_q;
    P.Lk = a->seqlen_k;
    P.H = a->nheads;
    P.Hkv = a->nheads_kv;
    P.hd = a->headdim;
    P.G = P.H / P.Hkv;
    P.off = P.Lk - P.Lq;
    /* a window covering every key is full causal attention */
    P.W = a->window > 0 && a->window < P.Lk ? a->window : 0;
    P.scale2 = (float)((double)a->softmax_scale * ATTN_LOG2E);
    P.bq = P.G >= ATTN_MCOLS ? 1 : ATTN_MCOLS / P.G;
    if (P.bq > P.Lq) {
        P.bq = P.Lq;
    }
    P.nqt = (P.Lq + P.bq - 1) / P.bq;
    P.Mp = attn_round16(P.bq * P.G);
    P.q = a->q;
    P.k = a->k;
    P.v = a->v;
    P.out = a->out;

    avx = attn_use_avx512(P.hd);
    T = P.B * P.Hkv * P.nqt;
    nth = samba_ctx_threads(ctx);
    if (nth < 1) {
        nth = 1;
    }
    if ((int64_t)nth > T) {
        nth = (int)T;
    }
    per = (int64_t)attn_scratch_floats(&P);
    scratch = (float *)malloc(sizeof(float) * (size_t)(per * nth) + 64);
    if (scratch == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    /* FMAs per round: tens of ms at the expected speed of each path. */
    budget = (avx ? 6e8 : 6e7) * nth;

    for (t = 0; t < T;) {
        int64_t t_end = t, i;
        double cost = 0.0;
        if (samba_ctx_stop(ctx)) {
            free(scratch);
            return SAMBA_ERR_INTERRUPTED;
        }
        while (t_end < T && (cost < budget || t_end - t < nth)) {
            const int64_t qi = t_end % P.nqt, p0 = qi * P.bq;
            const int64_t nq = P.Lq - p0 < P.bq ? P.Lq - p0 : P.bq;
            int64_t klo, khi;
            attn_key_range(&P, p0, nq, &klo, &khi);
            cost += 2.0 * (double)(nq * P.G) * (double)(khi - klo + 1) * (double)P.hd;
            t_end++;
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
#endif
        for (i = t; i < t_end; i++) {
            int tid = 0;
            attn_scratch S;
            const int64_t qi = i % P.nqt, bg = i / P.nqt;
            const int64_t p0 = qi * P.bq;
            const int64_t nq = P.Lq - p0 < P.bq ? P.Lq - p0 : P.bq;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            attn_scratch_carve(&P, scratch + (size_t)tid * (size_t)per, &S);
#ifdef SAMBA_ATTN_AVX512
            if (avx) {
                attn_tile_avx512(&P, bg / P.Hkv, bg % P.Hkv, p0, nq, &S);
                continue;
            }
#endif
            attn_tile_generic(&P, bg / P.Hkv, bg % P.Hkv, p0, nq, &S);
        }
        t = t_end;
    }
    free(scratch);
    return SAMBA_OK;
}
