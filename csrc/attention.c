/*
 * attention.c - causal sliding-window / full attention with GQA (prefill), flash-style:
 * the driver (tasks, rounds, stop polling, scratch) and the scalar tile path.
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
 *   - Keys are visited in tiles of ATTN_BK rows, only those inside the tile's window, and
 *     only tiles crossing the causal diagonal or the window's far edge are masked.
 *   - The tile kernels: attention_tile.h (register-blocked SIMD micro-kernels, instantiated
 *     for AVX-512 / AVX2 / portable vectors in attention_simd.c, picked at run time) and the
 *     scalar path below for head dims that are not a multiple of 4.
 *   - Tasks run with OpenMP in rounds of bounded cost; ctx is polled between rounds on the
 *     calling thread.  Scratch is malloc'ed per call (one slice per thread).
 */
#include "attention_impl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static size_t
attn_scratch_floats(const attn_plan *P)
{
    return (size_t)(P->hd * P->Mp + ATTN_BK * P->Mp + P->Mp * P->hd + 6 * P->Mp) + 16 * 10;
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
    s->hi = (int32_t *)ATTN_TAKE(P->Mp);
    s->lo = (int32_t *)ATTN_TAKE(P->Mp);
#undef ATTN_TAKE
}

/* ------------------------------------------------------------------ scalar path (any hd) --- */

static void
attn_tile_scalar(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
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
        if (P->softcap > 0.0f) {
            attn_softcap_tile(P, st, nk, Mp);
        }
        if (P->alibi != NULL) {
            attn_alibi_tile(P, b, g, p0, k0, nk, M, Mp, st);
        }
        if (masked) {
            attn_mask_bounds(P, p0, k0, Mp, S->colq, S->hi, S->lo);
            for (j = 0; j < nk; j++) {
                for (c = 0; c < Mp; c++) {
                    if (!(j <= S->hi[c] && j > S->lo[c])) {
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
                attn_row_range(S->lo[c], S->hi[c], nk, &jlo, &jhi); /* masked V never read */
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
    attn_store_out(P, b, g, p0, M, o, m, l);
}

/* ------------------------------------------------------------------------ driver --- */

samba_status
samba_attn_fwd_run(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    attn_plan P;
    int64_t T, t, per;
    int nth;
    attn_tile_fn tile;
    const char *isa = "scalar";
    float *scratch;
    double budget;

    if (a->batch == 0 || a->seqlen_q == 0 || a->nheads == 0 || a->headdim == 0) {
        return SAMBA_OK;
    }
    if (a->q == NULL || a->out == NULL || (a->seqlen_k > 0 && (a->k == NULL || a->v == NULL))) {
        return SAMBA_ERR_ARG;
    }
    if (a->seqlen_k >= ((int64_t)1 << 30) || a->seqlen_q >= ((int64_t)1 << 30)) {
        return SAMBA_ERR_UNSUPPORTED; /* masks use 32-bit key offsets */
    }
    P.B = a->batch;
    P.Lq = a->seqlen_q;
    P.Lk = a->seqlen_k;
    P.H = a->nheads;
    P.Hkv = a->nheads_kv;
    P.hd = a->headdim;
    P.G = P.H / P.Hkv;
    P.off = P.Lk - P.Lq;
    /* a side longer than any distance between a query and a key is unbounded (and keeps the
     * mask arithmetic far from overflow) */
    P.left = a->window_left > P.Lk + P.Lq ? -1 : a->window_left;
    P.right = a->window_right > P.Lk + P.Lq ? -1 : a->window_right;
    P.softcap = a->softcap;
    P.alibi = a->alibi_slopes;
    P.alibi_bs = a->alibi_batch_stride;
    P.qscale = (float)((double)a->softmax_scale * (a->softcap > 0.0f ? 1.0 : ATTN_LOG2E));
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
    P.lse = a->lse;

    tile = samba_attn_pick_simd(P.hd, &isa);
    if (tile == NULL) {
        tile = attn_tile_scalar;
    }
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
    budget = (strcmp(isa, "avx512") == 0 ? 1.5e9 : strcmp(isa, "scalar") == 0 ? 3e7 : 3e8) * nth;

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
            cost += 2.0 * (double)(nq * P.G) * (double)(khi >= klo ? khi - klo + 1 : 1) *
                    (double)P.hd;
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
            tile(&P, bg / P.Hkv, bg % P.Hkv, p0, nq, &S);
        }
        t = t_end;
    }
    free(scratch);
    return SAMBA_OK;
}

samba_status
samba_attn_fwd(const samba_attn_args *a, const samba_ctx *ctx)
{
    samba_attn_ext_args e;

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
    memset(&e, 0, sizeof e);
    e.batch = a->batch;
    e.seqlen_q = a->seqlen_q;
    e.seqlen_k = a->seqlen_k;
    e.nheads = a->nheads;
    e.nheads_kv = a->nheads_kv;
    e.headdim = a->headdim;
    /* a window covering every key is full causal attention */
    e.window_left = a->window > 0 && a->window < a->seqlen_k ? a->window - 1 : -1;
    e.window_right = 0;
    e.softmax_scale = a->softmax_scale;
    e.q = a->q;
    e.k = a->k;
    e.v = a->v;
    e.out = a->out;
    if (a->k == NULL || a->v == NULL) {
        return SAMBA_ERR_ARG;
    }
    return samba_attn_fwd_run(&e, ctx);
}
