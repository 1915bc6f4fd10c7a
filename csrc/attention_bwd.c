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
 * transposed, (headdim, seqlen) per head, so a row's scores against all its visible keys
 * (or queries) are computed 16 at a time with broadcast-FMAs, without horizontal sums; the
 * gradient rows are then accumulated along headdim. The row kernels are compiled per ISA
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

/* dq row (b, i, h) and Delta */
SAMBA_ALWAYS_INLINE void
abwd_q_row(const abwd_job *jb, int64_t b, int64_t i, int64_t h, float *s, float *dp, float *t)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t hd = a->headdim, hk = h / (a->nheads / a->nheads_kv);
    const float *restrict q = a->q + Q_OFF(a, b, i, h);
    const float *restrict go = a->dout + Q_OFF(a, b, i, h);
    const float *restrict out = a->out + Q_OFF(a, b, i, h);
    float *restrict dq = a->dq + Q_OFF(a, b, i, h);
    const float lse = a->lse[LSE_AT(a, b, h, i)];
    const int64_t kvoff = (b * a->nheads_kv + hk) * hd * a->seqlen_k;
    float dl = 0.0f;
    int64_t lo, hi, n, jj, x;

    for (x = 0; x < hd; x++) {
        dl += go[x] * out[x];
        dq[x] = 0.0f;
    }
    jb->delta[LSE_AT(a, b, h, i)] = dl;
    abwd_key_range(a, i, &lo, &hi);
    n = hi - lo;
    if (n <= 0 || !(lse > -INFINITY)) {
        return;
    }
    abwd_rowdots(q, jb->kt + kvoff, a->seqlen_k, lo, n, hd, s);
    abwd_rowdots(go, jb->vt + kvoff, a->seqlen_k, lo, n, hd, dp);
    abwd_softcap(a, s, t, n);
    for (jj = 0; jj < n; jj++) {
        const float p = samba_expf(s[jj] - lse);
        float ds = p * (dp[jj] - dl) * a->softmax_scale;
        if (a->softcap > 0.0f) {
            ds *= 1.0f - t[jj] * t[jj];
        }
        s[jj] = ds;
    }
    abwd_rowsum(dq, s, a->k + K_OFF(a, b, lo, hk), a->nheads_kv * hd, n, hd);
}

/* dk, dv rows (b, j, hk) */
SAMBA_ALWAYS_INLINE void
abwd_kv_row(const abwd_job *jb, int64_t b, int64_t j, int64_t hk, float *s, float *dp,
            float *t)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t hd = a->headdim, grp = a->nheads / a->nheads_kv;
    const float *restrict k = a->k + K_OFF(a, b, j, hk);
    const float *restrict v = a->v + K_OFF(a, b, j, hk);
    float *restrict dk = a->dk + K_OFF(a, b, j, hk);
    float *restrict dv = a->dv + K_OFF(a, b, j, hk);
    int64_t lo, hi, n, h, ii, x;

    for (x = 0; x < hd; x++) {
        dk[x] = 0.0f;
        dv[x] = 0.0f;
    }
    abwd_query_range(a, j, &lo, &hi);
    n = hi - lo;
    if (n <= 0) {
        return;
    }
    for (h = hk * grp; h < (hk + 1) * grp; h++) {
        const int64_t qoff = (b * a->nheads + h) * hd * a->seqlen_q;
        const float *restrict lse = a->lse + LSE_AT(a, b, h, lo);
        const float *restrict dl = jb->delta + LSE_AT(a, b, h, lo);
        abwd_rowdots(k, jb->qt + qoff, a->seqlen_q, lo, n, hd, s);
        abwd_rowdots(v, jb->dot + qoff, a->seqlen_q, lo, n, hd, dp);
        abwd_softcap(a, s, t, n);
        for (ii = 0; ii < n; ii++) {
            /* lse = -inf (a query without keys) cannot occur here: query lo + ii sees j */
            const float p = samba_expf(s[ii] - lse[ii]);
            float ds = p * (dp[ii] - dl[ii]) * a->softmax_scale;
            if (a->softcap > 0.0f) {
                ds *= 1.0f - t[ii] * t[ii];
            }
            s[ii] = p;
            dp[ii] = ds;
        }
        abwd_rowsum(dv, s, a->dout + Q_OFF(a, b, lo, h), a->nheads * hd, n, hd);
        abwd_rowsum(dk, dp, a->q + Q_OFF(a, b, lo, h), a->nheads * hd, n, hd);
    }
}

/* rows [r0, r1) of one kind (0 forward, 1 dq, 2 dk/dv); scratch: 3 max(Lq, Lk) floats */
SAMBA_ALWAYS_INLINE void
abwd_rows_body(const abwd_job *jb, int kind, int64_t r0, int64_t r1, float *scratch)
{
    const samba_attn_ext_args *a = jb->a;
    const int64_t ls = a->seqlen_q > a->seqlen_k ? a->seqlen_q : a->seqlen_k;
    float *s = scratch, *dp = scratch + ls, *t = scratch + 2 * ls;
    int64_t r;
    for (r = r0; r < r1; r++) {
        if (kind == 2) {
            /* r = (b, hk, j), j fastest: neighbouring rows share Q^T / dout^T columns */
            const int64_t j = r % a->seqlen_k, hk = (r / a->seqlen_k) % a->nheads_kv;
            abwd_kv_row(jb, r / (a->seqlen_k * a->nheads_kv), j, hk, s, dp, t);
        }
        else {
            /* r = (b, h, i), i fastest */
            const int64_t i = r % a->seqlen_q, h = (r / a->seqlen_q) % a->nheads;
            const int64_t b = r / (a->seqlen_q * a->nheads);
            if (kind == 0) {
                afwd_row(jb, b, i, h, s, t);
            }
            else {
                abwd_q_row(jb, b, i, h, s, dp, t);
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

#define ABWD_BLOCK 8 /* rows per OpenMP work item */

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
    float *scratch = (float *)malloc((size_t)nt * (size_t)(3 * abwd_max(1, ls)) * sizeof(float));

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
               scratch + (size_t)tid * (size_t)(3 * abwd_max(1, ls)));
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
