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
 * Rows are spread over OpenMP threads; ctx is polled between chunks of rows.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ABWD_CHUNK_WORK ((int64_t)1 << 24) /* score evaluations x headdim between polls */

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

static inline float
abwd_dot(const float *restrict x, const float *restrict y, int64_t n)
{
    float acc = 0.0f;
    int64_t i;
#pragma omp simd reduction(+ : acc)
    for (i = 0; i < n; i++) {
        acc += x[i] * y[i];
    }
    return acc;
}

/* score s and, with softcap, t = tanh(r / cap) (for the derivative) */
static inline float
abwd_score(const samba_attn_ext_args *a, const float *q, const float *k, float *t)
{
    const float r = a->softmax_scale * abwd_dot(q, k, a->headdim);
    if (a->softcap > 0.0f) {
        *t = tanhf(r / a->softcap);
        return a->softcap * *t;
    }
    *t = 0.0f;
    return r;
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

#define Q_ROW(a, base, b, i, h) ((base) + (((b) * (a)->seqlen_q + (i)) * (a)->nheads + (h)) * (a)->headdim)
#define K_ROW(a, base, b, j, h) ((base) + (((b) * (a)->seqlen_k + (j)) * (a)->nheads_kv + (h)) * (a)->headdim)
#define LSE_AT(a, b, h, i) (((b) * (a)->nheads + (h)) * (a)->seqlen_q + (i))

/* Forward of one query row (b, i, h): out row and lse. s: scratch (Lk). */
static void
afwd_row(const samba_attn_ext_args *a, int64_t b, int64_t i, int64_t h, float *s)
{
    const int64_t hd = a->headdim, hk = h / (a->nheads / a->nheads_kv);
    const float *q = Q_ROW(a, a->q, b, i, h);
    float *o = Q_ROW(a, a->out, b, i, h);
    int64_t lo, hi, j, x;
    float m = -INFINITY, sum = 0.0f, t;

    abwd_key_range(a, i, &lo, &hi);
    memset(o, 0, (size_t)hd * sizeof(float));
    if (hi <= lo) {
        if (a->lse != NULL) {
            a->lse[LSE_AT(a, b, h, i)] = -INFINITY;
        }
        return;
    }
    for (j = lo; j < hi; j++) {
        s[j] = abwd_score(a, q, K_ROW(a, a->k, b, j, hk), &t);
        m = s[j] > m ? s[j] : m;
    }
    for (j = lo; j < hi; j++) {
        const float p = expf(s[j] - m);
        const float *v = K_ROW(a, a->v, b, j, hk);
        sum += p;
#pragma omp simd
        for (x = 0; x < hd; x++) {
            o[x] += p * v[x];
        }
    }
    for (x = 0; x < hd; x++) {
        o[x] /= sum;
    }
    if (a->lse != NULL) {
        a->lse[LSE_AT(a, b, h, i)] = m + logf(sum);
    }
}

/* dq row (b, i, h) and Delta. */
static void
abwd_q_row(const samba_attn_ext_args *a, int64_t b, int64_t i, int64_t h, float *delta)
{
    const int64_t hd = a->headdim, hk = h / (a->nheads / a->nheads_kv);
    const float *q = Q_ROW(a, a->q, b, i, h);
    const float *go = Q_ROW(a, a->dout, b, i, h);
    float *dq = Q_ROW(a, a->dq, b, i, h);
    const float lse = a->lse[LSE_AT(a, b, h, i)];
    const float dl = abwd_dot(go, Q_ROW(a, a->out, b, i, h), hd);
    int64_t lo, hi, j, x;

    delta[LSE_AT(a, b, h, i)] = dl;
    memset(dq, 0, (size_t)hd * sizeof(float));
    abwd_key_range(a, i, &lo, &hi);
    if (hi <= lo || !(lse > -INFINITY)) {
        return;
    }
    for (j = lo; j < hi; j++) {
        const float *k = K_ROW(a, a->k, b, j, hk);
        float t, ds;
        const float s = abwd_score(a, q, k, &t);
        const float p = expf(s - lse);
        const float dp = abwd_dot(go, K_ROW(a, a->v, b, j, hk), hd);
        ds = p * (dp - dl);
        if (a->softcap > 0.0f) {
            ds *= 1.0f - t * t;
        }
        ds *= a->softmax_scale;
#pragma omp simd
        for (x = 0; x < hd; x++) {
            dq[x] += ds * k[x];
        }
    }
}

/* dk, dv rows (b, j, hk). */
static void
abwd_kv_row(const samba_attn_ext_args *a, int64_t b, int64_t j, int64_t hk,
            const float *delta)
{
    const int64_t hd = a->headdim, grp = a->nheads / a->nheads_kv;
    const float *k = K_ROW(a, a->k, b, j, hk);
    const float *v = K_ROW(a, a->v, b, j, hk);
    float *dk = K_ROW(a, a->dk, b, j, hk);
    float *dv = K_ROW(a, a->dv, b, j, hk);
    int64_t lo, hi, i, h, x;

    memset(dk, 0, (size_t)hd * sizeof(float));
    memset(dv, 0, (size_t)hd * sizeof(float));
    abwd_query_range(a, j, &lo, &hi);
    for (h = hk * grp; h < (hk + 1) * grp; h++) {
        for (i = lo; i < hi; i++) {
            const float *q = Q_ROW(a, a->q, b, i, h);
            const float *go = Q_ROW(a, a->dout, b, i, h);
            const float lse = a->lse[LSE_AT(a, b, h, i)];
            float t, p, ds;
            if (!(lse > -INFINITY)) {
                continue;
            }
            p = expf(abwd_score(a, q, k, &t) - lse);
            ds = p * (abwd_dot(go, v, hd) - delta[LSE_AT(a, b, h, i)]);
            if (a->softcap > 0.0f) {
                ds *= 1.0f - t * t;
            }
            ds *= a->softmax_scale;
#pragma omp simd
            for (x = 0; x < hd; x++) {
                dv[x] += p * go[x];
                dk[x] += ds * q[x];
            }
        }
    }
}

/* Runs fn over `rows` items in chunks, polling ctx between chunks. kind 0: forward rows
 * (b, i, h); 1: dq rows (b, i, h); 2: kv rows (b, j, hk). */
static samba_status
abwd_run(const samba_attn_ext_args *a, int kind, int64_t rows, int64_t per_row, float *delta,
         float *scratch, int nt, const samba_ctx *ctx)
{
    int64_t chunk = ABWD_CHUNK_WORK / abwd_max(1, per_row), r0;
    if (chunk < 1) {
        chunk = 1;
    }
    for (r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t r1 = abwd_min(rows, r0 + chunk);
        int64_t r;
        if (samba_ctx_stop(ctx)) {
            return SAMBA_ERR_INTERRUPTED;
        }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1)
        for (r = r0; r < r1; r++) {
            if (kind == 2) {
                const int64_t hk = r % a->nheads_kv, j = (r / a->nheads_kv) % a->seqlen_k;
                abwd_kv_row(a, r / (a->nheads_kv * a->seqlen_k), j, hk, delta);
            }
            else {
                const int64_t h = r % a->nheads, i = (r / a->nheads) % a->seqlen_q;
                const int64_t b = r / (a->nheads * a->seqlen_q);
                if (kind == 0) {
                    int tid = 0;
#ifdef _OPENMP
                    tid = omp_get_thread_num();
#endif
                    afwd_row(a, b, i, h, scratch + (size_t)tid * (size_t)a->seqlen_k);
                }
                else {
                    abwd_q_row(a, b, i, h, delta);
                }
            }
        }
    }
    return SAMBA_OK;
}

samba_status
samba_attn_fwd_lse(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    samba_status st = abwd_check(a);
    const int64_t rows = a != NULL ? a->batch * a->seqlen_q * a->nheads : 0;
    float *scratch;
    int nt;

    if (st != SAMBA_OK || rows == 0) {
        return st;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL) {
        return SAMBA_ERR_ARG;
    }
    nt = samba_ctx_threads(ctx);
    scratch = (float *)malloc((size_t)nt * (size_t)abwd_max(1, a->seqlen_k) * sizeof(float));
    if (scratch == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    st = abwd_run(a, 0, rows, a->seqlen_k * a->headdim, NULL, scratch, nt, ctx);
    free(scratch);
    return st;
}

samba_status
samba_attn_bwd(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    samba_status st = abwd_check(a);
    int64_t qrows, kvrows;
    float *delta;
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
    delta = (float *)malloc((size_t)abwd_max(1, qrows) * sizeof(float));
    if (delta == NULL) {
        return SAMBA_ERR_ALLOC;
    }
    st = abwd_run(a, 1, qrows, a->seqlen_k * a->headdim, delta, NULL, nt, ctx);
    if (st == SAMBA_OK) {
        st = abwd_run(a, 2, kvrows, a->seqlen_q * a->headdim * (a->nheads / a->nheads_kv),
                      delta, NULL, nt, ctx);
    }
    free(delta);
    return st;
}
