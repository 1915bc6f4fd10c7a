/*
 * attention_bwd.c - attention with a two-sided window, GQA and softcap: a forward that also
 * returns the log-sum-exp, and the FlashAttention-2-style backward that recomputes the
 * probabilities from it (fp32 in, fp32 accumulate).
 *
 * Scores (query i at key position p = i + Lk - Lq, query head h, kv head h / (H/Hkv)):
 *   r_ij = scale q_i . k_j;  s_ij = cap tanh(r_ij / cap) if cap > 0 else r_ij
 *   key j is visible when (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
 *   P_ij = exp(s_ij - lse_i), lse_i = log sum_j exp(s_ij);  out_i = sum_j P_ij v_j
 * A query that sees no key gets out = 0 and lse = -inf (and zero gradients).
 * Backward (Delta_i = dout_i . out_i):
 *   dP_ij = dout_i . v_j;  dS_ij = P_ij (dP_ij - Delta_i) (1 - tanh^2 with softcap)
 *   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i;  dv_j = sum_i P_ij dout_i
 * Two passes without atomics: one over query rows (dq, Delta), one over key rows (dk, dv,
 * summed over the query heads of the kv head); each recomputes the scores it needs.
 * Vectorisation: K, V (for query rows) and Q, dout (for key rows) are first copied
 * transposed, (headdim, seqlen) per head. The backward works on tiles of 4 neighbouring
 * query (or key) rows over the union of their visible keys (queries): the scores of the tile
 * are register blocks of 4 rows x 32 columns built with broadcast-FMAs (no horizontal sums),
 * each loaded column serving all 4 rows; the gradient rows are then accumulated along headdim
 * in blocks of 4 rows x 32 floats, each loaded key (query) row serving all 4. Pairs outside a
 * row's own range are left out (not multiplied by 0, which would turn inf or NaN inputs the
 * row never sees into NaN). The row kernels are compiled per ISA
 * (simd.h dispatch). Rows are spread over OpenMP threads in blocks; ctx is polled between
 * chunks of rows.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */
/* -std=c99 turns off floating-point contraction; the dot products and row sums below are
 * chains of multiply-adds, so let the compiler fuse them (FMA rounds once: never less
 * accurate). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define ABWD_CHUNK_WORK ((int64_t)1 << 26) /* score evaluations x headdim between polls */
#define ABWD_RB 64 /* floats per register block (4 AVX-512 / 8 AVX2 vectors) */
#define ABWD_PAR_MIN ((int64_t)1 << 16)    /* fewer (query, key) x headdim: one thread */

static int64_t
abwd_min(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t
abwd_max(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* visible keys [*lo, *hi) of query i */
static void
abwd_key_range(const samba_attn_ext_args *a, int64_t i, int64_t *lo, int64_t *hi)
{
    const int64_t p = i + a->seqlen_k - a->seqlen_q;
    *lo = a->window_left < 0 ? 0 : abwd_max(0, p - a->window_left);
    *hi = a->window_right < 0 ? a->seqlen_k : abwd_min(a->seqlen_k, p + a->window_right + 1);
    if (*hi < *lo) {
        *hi = *lo;
    }
}

/* queries [*lo, *hi) that see key j */
static void
abwd_query_range(const samba_attn_ext_args *a, int64_t j, int64_t *lo, int64_t *hi)
{
    const int64_t off = a->seqlen_k - a->seqlen_q;
    *lo = a->window_right < 0 ? 0 : abwd_max(0, j - a->window_right - off);
    *hi = a->window_left < 0 ? a->seqlen_q : abwd_min(a->seqlen_q, j + a->window_left - off + 1);
    if (*hi < *lo) {
        *hi = *lo;
    }
}

static samba_status
abwd_check(const samba_attn_ext_args *a)
{
    if (a == NULL || a->batch < 0 || a->seqlen_q < 0 || a->seqlen_k < 0 || a->nheads < 1 ||
        a->nheads_kv < 1 || a->nheads % a->nheads_kv != 0 || a->headdim < 1 ||
        !(a->softcap >= 0.0f) || isinf(a->softcap) || !isfinite(a->softmax_scale)) {
        return SAMBA_ERR_ARG;
    }
    return SAMBA_OK;
}

typedef struct abwd_job {
    const samba_attn_ext_args *a;
    float *kt, *vt;   /* (B, Hkv, hd, Lk) */
    float *qt, *dot;  /* (B, H, hd, Lq) */
    float *delta;     /* (B, H, Lq) */
} abwd_job;

#define Q_OFF(a, b, i, h) ((((b) * (a)->seqlen_q + (i)) * (a)->nheads + (h)) * (a)->headdim)
#define K_OFF(a, b, j, h) ((((b) * (a)->seqlen_k + (j)) * (a)->nheads_kv + (h)) * (a)->headdim)
#define LSE_AT(a, b, h, i) ((((b) * (a)->nheads + (h)) * (a)->seqlen_q) + (i))

/* s[0..n) = x . Mt[:, lo + jj] for a transposed (hd, ld) matrix Mt */
SAMBA_ALWAYS_INLINE void
abwd_rowdots(const float *restrict x, const float *restrict mt, int64_t ld, int64_t lo,
             int64_t n, int64_t hd, float *restrict s)
{
    int64_t jb = 0, jj, c, q;
    /* blocks of ABWD_RB scores held in registers across the headdim loop */
    for (; jb + ABWD_RB <= n; jb += ABWD_RB) {
        float acc[ABWD_RB];
        for (q = 0; q < ABWD_RB; q++) {
            acc[q] = 0.0f;
        }
        for (c = 0; c < hd; c++) {
            const float xc = x[c];
            const float *restrict row = mt + c * ld + lo + jb;
            for (q = 0; q < ABWD_RB; q++) {
                acc[q] += xc * row[q];
            }
        }
        for (q = 0; q < ABWD_RB; q++) {
            s[jb + q] = acc[q];
        }
    }
    for (jj = jb; jj < n; jj++) {
        s[jj] = 0.0f;
    }
    for (c = 0; c < hd && jb < n; c++) {
        const float xc = x[c];
        const float *restrict row = mt + c * ld + lo;
        for (jj = jb; jj < n; jj++) {
            s[jj] += xc * row[jj];
        }
    }
}

/* o[0..hd) += sum_jj w[jj] rows[jj][0..hd) (rows ldr floats apart), o held in registers in
 * blocks of ABWD_RB */
SAMBA_ALWAYS_INLINE void
abwd_rowsum(float *restrict o, const float *restrict w, const float *restrict rows, int64_t ldr,
            int64_t n, int64_t hd)
{
    int64_t xb = 0, jj, q;
    for (; xb + ABWD_RB <= hd; xb += ABWD_RB) {
        float acc[ABWD_RB];
        for (q = 0; q < ABWD_RB; q++) {
            acc[q] = o[xb + q];
        }
        for (jj = 0; jj < n; jj++) {
            const float wj = w[jj];
            const float *restrict r = rows + jj * ldr + xb;
            for (q = 0; q < ABWD_RB; q++) {
                acc[q] += wj * r[q];
            }
        }
        for (q = 0; q < ABWD_RB; q++) {
            o[xb + q] = acc[q];
        }
    }
    if (xb < hd) {
        for (jj = 0; jj < n; jj++) {
            const float wj = w[jj];
            const float *restrict r = rows + jj * ldr;
            for (q = xb; q < hd; q++) {
                o[q] += wj * r[q];
            }
        }
    }
}

#define ABWD_TR 4  /* rows (queries or keys) per register tile */
#define ABWD_TB 32 /* columns (keys, queries or headdim) per register tile */

/* s[r lds + jj] = x[r] . Mt[:, lo + jj] for the ABWD_TR rows x[r]: each loaded column of Mt
 * is reused by all rows, ABWD_TR x ABWD_TB scores held in registers across the headdim loop */
SAMBA_ALWAYS_INLINE void
abwd_tiledots(const float *const *x, const float *restrict mt, int64_t ld, int64_t lo,
              int64_t n, int64_t hd, float *restrict s, int64_t lds)
{
    int64_t jb = 0, jj, c, q, r;
    for (; jb + ABWD_TB <= n; jb += ABWD_TB) {
        float acc[ABWD_TR][ABWD_TB];
        for (r = 0; r < ABWD_TR; r++) {
            for (q = 0; q < ABWD_TB; q++) {
                acc[r][q] = 0.0f;
            }
        }
        for (c = 0; c < hd; c++) {
            const float *restrict row = mt + c * ld + lo + jb;
            for (r = 0; r < ABWD_TR; r++) {
                const float xc = x[r][c];
                for (q = 0; q < ABWD_TB; q++) {
                    acc[r][q] += xc * row[q];
                }
            }
        }
        for (r = 0; r < ABWD_TR; r++) {
            for (q = 0; q < ABWD_TB; q++) {
                s[r * lds + jb + q] = acc[r][q];
            }
        }
    }
    for (r = 0; r < ABWD_TR && jb < n; r++) {
        float *restrict sr = s + r * lds;
        for (jj = jb; jj < n; jj++) {
            sr[jj] = 0.0f;
        }
        for (c = 0; c < hd; c++) {
            const float xc = x[r][c];
            const float *restrict row = mt + c * ld + lo;
            for (jj = jb; jj < n; jj++) {
                sr[jj] += xc * row[jj];
            }
        }
    }
}

/* o[r][0..hd) += sum_jj w[r ldw + jj] rows[jj][0..hd) for the ABWD_TR rows o[r] (rows ldr
 * floats apart): each loaded row is reused by all outputs, held in registers */
SAMBA_ALWAYS_INLINE void
abwd_tilesum_all(float *const *o, const float *restrict w, int64_t ldw, const float *restrict rows,
             int64_t ldr, int64_t n, int64_t hd)
{
    int64_t xb = 0, jj, q, r;
    for (; xb + ABWD_TB <= hd; xb += ABWD_TB) {
        float acc[ABWD_TR][ABWD_TB];
        for (r = 0; r < ABWD_TR; r++) {
            for (q = 0; q < ABWD_TB; q++) {
                acc[r][q] = o[r][xb + q];
            }
        }
        for (jj = 0; jj < n; jj++) {
            const float *restrict src = rows + jj * ldr + xb;
            for (r = 0; r < ABWD_TR; r++) {
                const float wj = w[r * ldw + jj];
                for (q = 0; q < ABWD_TB; q++) {
                    acc[r][q] += wj * src[q];
                }
            }
        }
        for (r = 0; r < ABWD_TR; r++) {
            for (q = 0; q < ABWD_TB; q++) {
                o[r][xb + q] = acc[r][q];
            }
        }
    }
    for (r = 0; r < ABWD_TR && xb < hd; r++) {
        for (jj = 0; jj < n; jj++) {
            const float wj = w[r * ldw + jj];
            const float *restrict src = rows + jj * ldr;
            for (q = xb; q < hd; q++) {
                o[r][q] += wj * src[q];
            }
        }
    }
}

/* abwd_tilesum_all restricted to the columns [j0[r], j1[r]) of each row: the columns all rows
 * share as one tile, the rest row by row, so a row never multiplies a row of `rows` it does
 * not see (0 x inf or NaN there would leak into its sum) */
SAMBA_ALWAYS_INLINE void
abwd_tilesum(float *const *o, const float *restrict w, int64_t ldw, const float *restrict rows,
             int64_t ldr, const int64_t *j0, const int64_t *j1, int64_t hd)
{
    int64_t c0 = j0[0], c1 = j1[0], r, e0, e1;
    for (r = 1; r < ABWD_TR; r++) {
        c0 = abwd_max(c0, j0[r]);
        c1 = abwd_min(c1, j1[r]);
    }
    c1 = abwd_max(c0, c1);
    if (c1 > c0) {
        abwd_tilesum_all(o, w + c0, ldw, rows + c0 * ldr, ldr, c1 - c0, hd);
    }
    for (r = 0; r < ABWD_TR; r++) {
        e1 = abwd_min(j1[r], c0);
        if (e1 > j0[r]) {
            abwd_rowsum(o[r], w + r * ldw + j0[r], rows + j0[r] * ldr, ldr, e1 - j0[r], hd);
        }
        e0 = abwd_max(j0[r], c1);
        if (j1[r] > e0) {
            abwd_rowsum(o[r], w + r * ldw + e0, rows + e0 * ldr, ldr, j1[r] - e0, hd);
        }
    }
}

/* scores in place: s = scale s, softcap; t[jj] = tanh(r / cap) (only with softcap) */
SAMBA_ALWAYS_INLINE void
abwd_softcap(const samba_attn_ext_args *a, float *restrict s, float *restrict t, int64_t n)
{
    int64_t jj;
    if (a->softcap > 0.0f) {
        for (jj = 0; jj < n; jj++) {
            t[jj] = tanhf(a->softmax_scale * s[jj] / a->softcap);
            s[jj] = a->softcap * t[jj];
        }
    }
    else {
        for (jj = 0; jj < n; jj++) {
            s[jj] *= a->softmax_scale;
        }
    }
}

/* forward of query row (b, i, h) -> out row, lse */
SAMBA_ALWAYS_INLINE void
afwd_row(const abwd_job *jb, int64_t b, int64_t i, int64_t h, float *s, float *t)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t hd = a->headdim, hk = h / (a->nheads / a->nheads_kv);
    const float *restrict q = a->q + Q_OFF(a, b, i, h);
    float *restrict o = a->out + Q_OFF(a, b, i, h);
    int64_t lo, hi, n, jj, x;
    float m = -INFINITY, sum = 0.0f;

    abwd_key_range(a, i, &lo, &hi);
    n = hi - lo;
    for (x = 0; x < hd; x++) {
        o[x] = 0.0f;
    }
    if (n <= 0) {
        if (a->lse != NULL) {
            a->lse[LSE_AT(a, b, h, i)] = -INFINITY;
        }
        return;
    }
    abwd_rowdots(q, jb->kt + (b * a->nheads_kv + hk) * hd * a->seqlen_k, a->seqlen_k, lo, n,
                 hd, s);
    abwd_softcap(a, s, t, n);
    for (jj = 0; jj < n; jj++) {
        m = s[jj] > m ? s[jj] : m;
    }
    for (jj = 0; jj < n; jj++) {
        s[jj] = samba_expf(s[jj] - m);
        sum += s[jj];
    }
    abwd_rowsum(o, s, a->v + K_OFF(a, b, lo, hk), a->nheads_kv * hd, n, hd);
    for (x = 0; x < hd; x++) {
        o[x] /= sum;
    }
    if (a->lse != NULL) {
        a->lse[LSE_AT(a, b, h, i)] = m + logf(sum);
    }
}

/* w[0..j0) = w[j1..n) = 0: the tile's columns outside one row's range */
SAMBA_ALWAYS_INLINE void
abwd_zero_outside(float *restrict w, int64_t j0, int64_t j1, int64_t n)
{
    int64_t jj;
    for (jj = 0; jj < j0; jj++) {
        w[jj] = 0.0f;
    }
    for (jj = j1; jj < n; jj++) {
        w[jj] = 0.0f;
    }
}

/* dq rows and Delta of the nr <= ABWD_TR queries i0.. (b, h), as one tile over the union of
 * their key ranges; pairs outside a row's own range get dS = 0. dummy: hd floats (the dq of
 * the unused tile rows). */
SAMBA_ALWAYS_INLINE void
abwd_q_tile(const abwd_job *jb, int64_t b, int64_t i0, int64_t nr, int64_t h, float *s,
            float *dp, float *t, int64_t ls, float *dummy)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t hd = a->headdim, hk = h / (a->nheads / a->nheads_kv);
    const int64_t kvoff = (b * a->nheads_kv + hk) * hd * a->seqlen_k;
    const float *qr[ABWD_TR], *gr[ABWD_TR];
    float *dqr[ABWD_TR], lse[ABWD_TR], dl[ABWD_TR];
    int64_t lo[ABWD_TR], hi[ABWD_TR], c0[ABWD_TR], c1[ABWD_TR], ulo = a->seqlen_k, uhi = 0;
    int64_t n, jj, r, x;

    for (r = 0; r < ABWD_TR; r++) {
        const int64_t i = i0 + (r < nr ? r : 0);
        const float *go = a->dout + Q_OFF(a, b, i, h), *out = a->out + Q_OFF(a, b, i, h);
        qr[r] = a->q + Q_OFF(a, b, i, h);
        gr[r] = go;
        dqr[r] = r < nr ? a->dq + Q_OFF(a, b, i, h) : dummy;
        lse[r] = a->lse[LSE_AT(a, b, h, i)];
        dl[r] = 0.0f;
        for (x = 0; x < hd; x++) {
            dl[r] += go[x] * out[x];
            dqr[r][x] = 0.0f;
        }
        jb->delta[LSE_AT(a, b, h, i)] = dl[r];
        abwd_key_range(a, i, &lo[r], &hi[r]);
        if (r >= nr || !(lse[r] > -INFINITY)) {
            hi[r] = lo[r]; /* no keys: dq stays 0 */
        }
        if (hi[r] > lo[r]) {
            ulo = abwd_min(ulo, lo[r]);
            uhi = abwd_max(uhi, hi[r]);
        }
    }
    if (uhi <= ulo) {
        return;
    }
    n = uhi - ulo;
    abwd_tiledots(qr, jb->kt + kvoff, a->seqlen_k, ulo, n, hd, s, ls);
    abwd_tiledots(gr, jb->vt + kvoff, a->seqlen_k, ulo, n, hd, dp, ls);
    for (r = 0; r < ABWD_TR; r++) {
        float *sr = s + r * ls, *dpr = dp + r * ls, *tr = t + r * ls;
        const int64_t j0 = hi[r] > lo[r] ? lo[r] - ulo : 0, j1 = hi[r] > lo[r] ? hi[r] - ulo : 0;
        c0[r] = j0;
        c1[r] = j1;
        abwd_softcap(a, sr, tr, n);
        for (jj = j0; jj < j1; jj++) {
            const float p = samba_expf(sr[jj] - lse[r]);
            sr[jj] = p * (dpr[jj] - dl[r]) * a->softmax_scale;
        }
        if (a->softcap > 0.0f) {
            for (jj = j0; jj < j1; jj++) {
                sr[jj] *= 1.0f - tr[jj] * tr[jj];
            }
        }
        abwd_zero_outside(sr, j0, j1, n);
    }
    abwd_tilesum(dqr, s, ls, a->k + K_OFF(a, b, ulo, hk), a->nheads_kv * hd, c0, c1, hd);
}

/* dk, dv rows of the nr <= ABWD_TR keys j0.. (b, hk), as one tile over the union of their
 * query ranges; pairs outside a row's own range get P = dS = 0. dummy: 2 hd floats. */
SAMBA_ALWAYS_INLINE void
abwd_kv_tile(const abwd_job *jb, int64_t b, int64_t j0, int64_t nr, int64_t hk, float *s,
             float *dp, float *t, int64_t ls, float *dummy)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t hd = a->headdim, grp = a->nheads / a->nheads_kv;
    const float *kr[ABWD_TR], *vr[ABWD_TR];
    float *dkr[ABWD_TR], *dvr[ABWD_TR];
    int64_t lo[ABWD_TR], hi[ABWD_TR], c0[ABWD_TR], c1[ABWD_TR], ulo = a->seqlen_q, uhi = 0;
    int64_t n, h, ii, r, x;

    for (r = 0; r < ABWD_TR; r++) {
        const int64_t j = j0 + (r < nr ? r : 0);
        kr[r] = a->k + K_OFF(a, b, j, hk);
        vr[r] = a->v + K_OFF(a, b, j, hk);
        dkr[r] = r < nr ? a->dk + K_OFF(a, b, j, hk) : dummy;
        dvr[r] = r < nr ? a->dv + K_OFF(a, b, j, hk) : dummy + hd;
        for (x = 0; x < hd; x++) {
            dkr[r][x] = 0.0f;
            dvr[r][x] = 0.0f;
        }
        abwd_query_range(a, j, &lo[r], &hi[r]);
        if (r >= nr) {
            hi[r] = lo[r];
        }
        if (hi[r] > lo[r]) {
            ulo = abwd_min(ulo, lo[r]);
            uhi = abwd_max(uhi, hi[r]);
        }
    }
    if (uhi <= ulo) {
        return;
    }
    n = uhi - ulo;
    for (h = hk * grp; h < (hk + 1) * grp; h++) {
        const int64_t qoff = (b * a->nheads + h) * hd * a->seqlen_q;
        const float *restrict lse = a->lse + LSE_AT(a, b, h, ulo);
        const float *restrict dl = jb->delta + LSE_AT(a, b, h, ulo);
        abwd_tiledots(kr, jb->qt + qoff, a->seqlen_q, ulo, n, hd, s, ls);
        abwd_tiledots(vr, jb->dot + qoff, a->seqlen_q, ulo, n, hd, dp, ls);
        for (r = 0; r < ABWD_TR; r++) {
            float *sr = s + r * ls, *dpr = dp + r * ls, *tr = t + r * ls;
            const int64_t i0 = hi[r] > lo[r] ? lo[r] - ulo : 0;
            const int64_t i1 = hi[r] > lo[r] ? hi[r] - ulo : 0;
            c0[r] = i0;
            c1[r] = i1;
            abwd_softcap(a, sr, tr, n);
            /* lse = -inf (a query without keys) cannot occur in range: the query sees j */
            for (ii = i0; ii < i1; ii++) {
                const float p = samba_expf(sr[ii] - lse[ii]);
                dpr[ii] = p * (dpr[ii] - dl[ii]) * a->softmax_scale;
                sr[ii] = p;
            }
            if (a->softcap > 0.0f) {
                for (ii = i0; ii < i1; ii++) {
                    dpr[ii] *= 1.0f - tr[ii] * tr[ii];
                }
            }
            abwd_zero_outside(sr, i0, i1, n);
            abwd_zero_outside(dpr, i0, i1, n);
        }
        abwd_tilesum(dvr, s, ls, a->dout + Q_OFF(a, b, ulo, h), a->nheads * hd, c0, c1, hd);
        abwd_tilesum(dkr, dp, ls, a->q + Q_OFF(a, b, ulo, h), a->nheads * hd, c0, c1, hd);
    }
}

/* rows [r0, r1) of one kind (0 forward, 1 dq, 2 dk/dv), the backward ones in tiles of up to
 * ABWD_TR neighbouring rows; scratch: ABWD_SCRATCH floats */
#define ABWD_SCRATCH(ls, hd) (3 * ABWD_TR * (ls) + 2 * (hd))
SAMBA_ALWAYS_INLINE void
abwd_rows_body(const abwd_job *jb, int kind, int64_t r0, int64_t r1, float *scratch)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t ls = abwd_max(1, a->seqlen_q > a->seqlen_k ? a->seqlen_q : a->seqlen_k);
    float *s = scratch, *dp = scratch + ABWD_TR * ls, *t = scratch + 2 * ABWD_TR * ls;
    float *dummy = scratch + 3 * ABWD_TR * ls;
    int64_t r, nr;
    for (r = r0; r < r1; r += nr) {
        if (kind == 2) {
            /* r = (b, hk, j), j fastest: neighbouring rows share Q^T / dout^T columns */
            const int64_t j = r % a->seqlen_k, hk = (r / a->seqlen_k) % a->nheads_kv;
            nr = abwd_min(ABWD_TR, abwd_min(r1 - r, a->seqlen_k - j));
            abwd_kv_tile(jb, r / (a->seqlen_k * a->nheads_kv), j, nr, hk, s, dp, t, ls, dummy);
        }
        else {
            /* r = (b, h, i), i fastest */
            const int64_t i = r % a->seqlen_q, h = (r / a->seqlen_q) % a->nheads;
            const int64_t b = r / (a->seqlen_q * a->nheads);
            if (kind == 0) {
                nr = 1;
                afwd_row(jb, b, i, h, s, t);
            }
            else {
                nr = abwd_min(ABWD_TR, abwd_min(r1 - r, a->seqlen_q - i));
                abwd_q_tile(jb, b, i, nr, h, s, dp, t, ls, dummy);
            }
        }
    }
}

typedef void (*abwd_rows_fn)(const abwd_job *, int, int64_t, int64_t, float *);

SAMBA_VEC_FN static void
abwd_rows_c(const abwd_job *jb, int kind, int64_t r0, int64_t r1, float *scratch)
{
    abwd_rows_body(jb, kind, r0, r1, scratch);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
abwd_rows_avx2(const abwd_job *jb, int kind, int64_t r0, int64_t r1, float *scratch)
{
    abwd_rows_body(jb, kind, r0, r1, scratch);
}

SAMBA_VEC_FN SAMBA_TARGET_AVX512 static void
abwd_rows_avx512(const abwd_job *jb, int kind, int64_t r0, int64_t r1, float *scratch)
{
    abwd_rows_body(jb, kind, r0, r1, scratch);
}
#endif

static abwd_rows_fn
abwd_pick(void)
{
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: return abwd_rows_avx512;
    case SAMBA_ISA_AVX2: return abwd_rows_avx2;
    default: break;
    }
#endif
    return abwd_rows_c;
}

/* dst (B, Hs, hd, Ls) = src (B, Ls, Hs, hd) transposed per head */
static void
abwd_transpose(const float *src, float *dst, int64_t batch, int64_t ls, int64_t hs,
               int64_t hd, int nt)
{
    int64_t bh;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (bh = 0; bh < batch * hs; bh++) {
        const int64_t b = bh / hs, h = bh % hs;
        float *d = dst + bh * hd * ls;
        int64_t l, x;
        for (l = 0; l < ls; l++) {
            const float *row = src + ((b * ls + l) * hs + h) * hd;
            for (x = 0; x < hd; x++) {
                d[x * ls + l] = row[x];
            }
        }
    }
}

#define ABWD_BLOCK 8 /* rows per OpenMP work item (a multiple of ABWD_TR) */

/* keys (or queries) a row visits at most: the window's width, capped at len */
static int64_t
abwd_span(const samba_attn_ext_args *a, int64_t len)
{
    if (a->window_left < 0 || a->window_right < 0) {
        return len;
    }
    return abwd_min(len, a->window_left + a->window_right + 1);
}

/* Runs `rows` rows of one kind in chunks, polling ctx between chunks. */
static samba_status
abwd_run(const abwd_job *jb, int kind, int64_t rows, int64_t per_row, int nt,
         const samba_ctx *ctx)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t ls = a->seqlen_q > a->seqlen_k ? a->seqlen_q : a->seqlen_k;
    const abwd_rows_fn fn = abwd_pick();
    int64_t chunk = ABWD_CHUNK_WORK / abwd_max(1, per_row), r0;
    const size_t per_thread = (size_t)ABWD_SCRATCH(abwd_max(1, ls), a->headdim);
    float *scratch = (float *)malloc((size_t)nt * per_thread * sizeof(float));

    if (scratch == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    chunk = abwd_max(chunk, ABWD_BLOCK);
    for (r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t r1 = abwd_min(rows, r0 + chunk);
        int64_t rb;
        if (samba_ctx_stop(ctx)) {
            free(scratch);
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (rb = r0; rb < r1; rb += ABWD_BLOCK) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            fn(jb, kind, rb, abwd_min(r1, rb + ABWD_BLOCK),
               scratch + (size_t)tid * per_thread);
        }
    }
    free(scratch);
    return SAMBA_OK;
}

samba_status
samba_attn_fwd_lse(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    samba_status st = abwd_check(a);
    const int64_t rows = a != NULL ? a->batch * a->seqlen_q * a->nheads : 0;
    abwd_job jb;
    int nt;

    if (st != SAMBA_OK || rows == 0) {
        return st;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL) {
        return SAMBA_ERR_ARG;
    }
    memset(&jb, 0, sizeof jb);
    jb.a = a;
    nt = samba_ctx_threads(ctx);
    if (rows * a->seqlen_k * a->headdim < ABWD_PAR_MIN) {
        nt = 1;
    }
    jb.kt = (float *)malloc((size_t)abwd_max(1, a->batch * a->seqlen_k * a->nheads_kv *
                                                a->headdim) * sizeof(float));
    if (jb.kt == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    abwd_transpose(a->k, jb.kt, a->batch, a->seqlen_k, a->nheads_kv, a->headdim, nt);
    st = abwd_run(&jb, 0, rows, abwd_span(a, a->seqlen_k) * a->headdim, nt, ctx);
    free(jb.kt);
    return st;
}

samba_status
samba_attn_bwd(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    samba_status st = abwd_check(a);
    int64_t qrows, kvrows, nk, nq;
    abwd_job jb;
    int nt;

    if (st != SAMBA_OK) {
        return st;
    }
    qrows = a->batch * a->seqlen_q * a->nheads;
    kvrows = a->batch * a->seqlen_k * a->nheads_kv;
    if (qrows + kvrows == 0) {
        return SAMBA_OK;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL || a->dout == NULL ||
        a->lse == NULL || a->dq == NULL || a->dk == NULL || a->dv == NULL) {
        return SAMBA_ERR_ARG;
    }
    nt = samba_ctx_threads(ctx);
    if (qrows * a->seqlen_k * a->headdim < ABWD_PAR_MIN) {
        nt = 1; /* waking threads would cost more than the work */
    }
    nk = abwd_max(1, kvrows * a->headdim);
    nq = abwd_max(1, qrows * a->headdim);
    memset(&jb, 0, sizeof jb);
    jb.a = a;
    jb.kt = (float *)malloc((size_t)(2 * nk + 2 * nq + abwd_max(1, qrows)) * sizeof(float));
    if (jb.kt == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    jb.vt = jb.kt + nk;
    jb.qt = jb.vt + nk;
    jb.dot = jb.qt + nq;
    jb.delta = jb.dot + nq;
    abwd_transpose(a->k, jb.kt, a->batch, a->seqlen_k, a->nheads_kv, a->headdim, nt);
    abwd_transpose(a->v, jb.vt, a->batch, a->seqlen_k, a->nheads_kv, a->headdim, nt);
    abwd_transpose(a->q, jb.qt, a->batch, a->seqlen_q, a->nheads, a->headdim, nt);
    abwd_transpose(a->dout, jb.dot, a->batch, a->seqlen_q, a->nheads, a->headdim, nt);
    st = abwd_run(&jb, 1, qrows, abwd_span(a, a->seqlen_k) * a->headdim, nt, ctx);
    if (st == SAMBA_OK) {
        st = abwd_run(&jb, 2, kvrows,
                      abwd_span(a, a->seqlen_q) * a->headdim * (a->nheads / a->nheads_kv),
                      nt, ctx);
    }
    free(jb.kt);
    return st;
}
