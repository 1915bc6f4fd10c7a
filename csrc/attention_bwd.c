/*
 * attention_bwd.c - attention with a two-sided window, GQA and softcap: the forward that also
 * returns the log-sum-exp (attention.c's kernel), and the FlashAttention-2-style backward that
 * recomputes the probabilities from it (fp32 in, fp32 accumulate). This file is the argument
 * check and the backward's driver (packing, tasks, threads, stop polling); the backward's tile
 * kernels are attention_bwd_tile.h, instantiated per instruction set in attention_bwd_simd.c.
 *
 * Scores (query i at key position p = i + Lk - Lq, query head h, kv head h / (H/Hkv)):
 *   r_ij = scale q_i . k_j;  s_ij = cap tanh(r_ij / cap) if cap > 0 else r_ij
 *   key j is visible when (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
 *   P_ij = exp(s_ij - lse_i), lse_i = log sum_j exp(s_ij);  out_i = sum_j P_ij v_j
 * A query that sees no key gets out = 0 and lse = -inf (and zero gradients).
 * Backward (Delta_i = dout_i . out_i):
 *   dP_ij = dout_i . v_j;  dS_ij = P_ij (dP_ij - Delta_i) (1 - tanh^2 with softcap)
 *   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i;  dv_j = sum_i P_ij dout_i
 *
 * Backward: one pass over key tiles of ABWD_BK keys. A key tile of kv head hk visits every
 * query tile (ABWD_BQ queries) of the hk's query heads that sees it, computes S, P, dP, dS of
 * the tile pair once and all three products of the pair (dV += P^T dO, dK += dS^T Q into the
 * key tile's sums, kept in cache until the tile is done; dQ += dS K straight into dq): the
 * backward's five products, 10 x headdim flops per visible pair, nothing recomputed.
 * Tasks are (batch, kv head, chunk of key tiles); each owns its dk, dv rows. A task's dq
 * terms go to dq itself for the first chunk of a (batch, kv head) and to a zeroed buffer
 * per later chunk, added to dq at the end (no atomics, fixed summation order). Chunks (more
 * than one only when there are fewer (batch, kv head) pairs than threads can share evenly)
 * cut the key tiles into equal work, bounded by the buffers' memory.
 * The backward packs K^T and V^T per key tile once per call (headdim x ABWD_BK blocks), and q
 * and dout head-major (the rows of one head hd floats apart instead of H hd: in the (B, L, H,
 * hd) layout a tile's 64 rows at a 2 KiB stride share 8 of the L1 cache's 64 sets). Tasks
 * run in rounds of bounded work, ctx polled between rounds on the calling thread.
 * Forward: samba_attn_fwd_lse runs attention.c's kernel (samba_attn_fwd's, with GQA-packed
 * query tiles and the online softmax across queries), which also writes lse.
 *
 * Notes on the backward (b1 L2048 h8/2x64, causal, full or window 256 (w256); one thread,
 * AVX-512; time over the floor = the backward's products (10 x headdim flops per visible pair)
 * at a one-thread BLAS 1024^3 product's speed, ~100 GFLOP/s; each step A/B against the
 * previous one, best of alternating calls in one process on a loaded machine, so +-3%):
 *   v0 rows in register tiles of 4 x 32, two backward passes (S, dP computed twice)
 *      -> v1 64 x 64 tiles, one backward pass, 6 x 4-vector blocks: full 2.60x -> 1.12x,
 *      w256 3.54x -> 1.29x
 *   v2 finite inputs: masked tiles add each register block's union range at once:
 *      1.17x -> 1.14x, 1.30x -> 1.26x
 *   v4 masked tiles compute only the score vectors their rows see: w256 1.23x -> 1.18x;
 *      full unchanged at 1.08x
 * At 2 threads on the quiet machine (2-thread BLAS ~200 GFLOP/s; v0 and v4 A/B, v4 also in
 * benchmarks/results/cpu_backward.md): full 143 ms -> 60 ms (2.7x -> 1.2x the floor), w256
 * 44 ms -> 16 ms (3.5x -> 1.3x). What remains is the elementwise work (an exponential per
 * pair), the masked tiles' partly empty score products (2 of 5 key tiles per query tile at
 * window 256) and the packing. Full causal at head dim 128: 1.10x; at 32: 1.20x.
 * v5: the forward's own tiles gave way to attention.c's kernel (see above).
 * v6: q and dout packed head-major: full causal 75 -> 70 ms at 2 threads (4 alternating runs
 *      per side; this 2-vCPU machine also gives ~62 ms runs for v5, in other periods).
 */
#include "attention_bwd_impl.h"
#include "attention_impl.h" /* samba_attn_fwd_run */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ABWD_CHUNK_WORK ((int64_t)1 << 26) /* visible pairs x headdim per task between polls */
#define ABWD_PAR_MIN ((int64_t)1 << 16)    /* fewer (query, key) x headdim: one thread */
#define ABWD_MAX_SPLIT 64                  /* key chunks per (batch, kv head) at most */

static samba_status
abwd_check(const samba_attn_ext_args *a)
{
    if (a == NULL || a->batch < 0 || a->seqlen_q < 0 || a->seqlen_k < 0 || a->nheads < 1 ||
        a->nheads_kv < 1 || a->nheads % a->nheads_kv != 0 || a->headdim < 1 ||
        !(a->softcap >= 0.0f) || isinf(a->softcap) || !isfinite(a->softmax_scale) ||
        a->alibi_batch_stride < 0) {
        return SAMBA_ERR_ARG;
    }
    return SAMBA_OK;
}

static void
abwd_plan_init(abwd_plan *P, const samba_attn_ext_args *a)
{
    memset(P, 0, sizeof *P);
    P->B = a->batch;
    P->Lq = a->seqlen_q;
    P->Lk = a->seqlen_k;
    P->H = a->nheads;
    P->Hkv = a->nheads_kv;
    P->hd = a->headdim;
    P->grp = a->nheads / a->nheads_kv;
    P->off = a->seqlen_k - a->seqlen_q;
    P->left = a->window_left;
    P->right = a->window_right;
    P->nkt = (a->seqlen_k + ABWD_BK - 1) / ABWD_BK;
    P->scale = a->softmax_scale;
    P->softcap = a->softcap;
    P->alibi = a->alibi_slopes;
    P->alibi_bs = a->alibi_batch_stride;
    P->q = a->q;
    P->k = a->k;
    P->v = a->v;
    P->dout = a->dout;
    P->out = a->out;
    P->lse = a->lse;
}

static int
abwd_threads(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    if (a->batch * a->seqlen_q * a->nheads * a->seqlen_k * a->headdim < ABWD_PAR_MIN) {
        return 1; /* waking threads would cost more than the work */
    }
    return samba_ctx_threads(ctx);
}

/* 1 if x[0..n) is all finite (exponent bits not all ones) */
static int
abwd_row_finite(const float *x, int64_t n)
{
    uint32_t bad = 0, u;
    int64_t i;
    for (i = 0; i < n; i++) {
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad == 0;
}

/* dst (B, Hkv, nkt, hd, ABWD_BK) = src (B, Lk, Hkv, hd) transposed per key tile, zero past Lk;
 * returns 1 if src is all finite */
static int
abwd_pack_t(const abwd_plan *P, const float *src, float *dst, int nt)
{
    const int64_t n = P->B * P->Hkv * P->nkt, hd = P->hd;
    int64_t task;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1) reduction(| : bad)
    for (task = 0; task < n; task++) {
        const int64_t t = task % P->nkt, hk = (task / P->nkt) % P->Hkv, b = task / (P->nkt * P->Hkv);
        float *d = dst + task * hd * ABWD_BK;
        int64_t c, x;
        for (c = 0; c < ABWD_BK; c++) {
            const int64_t j = t * ABWD_BK + c;
            const float *row = src + ((b * P->Lk + j) * P->Hkv + hk) * hd;
            for (x = 0; x < hd; x++) {
                d[x * ABWD_BK + c] = j < P->Lk ? row[x] : 0.0f;
            }
            if (j < P->Lk) {
                bad |= !abwd_row_finite(row, hd);
            }
        }
    }
    return !bad;
}

/* dst (B, H, Lq, hd) = src (B, Lq, H, hd): the query-side rows of one head made contiguous */
static void
abwd_head_major(const abwd_plan *P, const float *src, float *dst, int nt)
{
    const int64_t n = P->B * P->H, hd = P->hd;
    int64_t bh;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (bh = 0; bh < n; bh++) {
        const int64_t b = bh / P->H, h = bh % P->H;
        int64_t i;
        for (i = 0; i < P->Lq; i++) {
            memcpy(dst + (bh * P->Lq + i) * hd, src + ((b * P->Lq + i) * P->H + h) * hd,
                   (size_t)hd * sizeof(float));
        }
    }
}

/* 1 if x[0..n) is all finite */
static int
abwd_finite(const float *x, int64_t n, int nt)
{
    int64_t blk;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1) reduction(| : bad)
    for (blk = 0; blk < (n + 4095) / 4096; blk++) {
        bad |= !abwd_row_finite(x + blk * 4096, abwd_min(4096, n - blk * 4096));
    }
    return !bad;
}

/* per-thread scratch slices (64-byte aligned) */
static void
abwd_carve(float *base, int64_t hd, abwd_scratch *S)
{
    float *p = base;
#define ABWD_TAKE(n) (p = (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63), p += (n), p - (n))
    S->s = ABWD_TAKE(ABWD_BQ * ABWD_BK);
    S->dp = ABWD_TAKE(ABWD_BQ * ABWD_BK);
    S->dk = ABWD_TAKE(ABWD_BK * hd);
    S->dv = ABWD_TAKE(ABWD_BK * hd);
#undef ABWD_TAKE
}

#define ABWD_NRANGES (2 * ABWD_BQ + 2 * ABWD_BK) /* int64s per thread: clo chi rlo rhi */

typedef struct abwd_ws {
    float *scratch; /* nt slices */
    int64_t *ranges; /* nt x ABWD_NRANGES */
    size_t per;
} abwd_ws;

static int
abwd_ws_alloc(abwd_ws *w, int64_t hd, int nt)
{
    w->per = (size_t)(ABWD_SCRATCH_FLOATS(hd) + 16 * 8);
    /* zeroed: masked tiles read (and discard) score columns no product wrote yet */
    w->scratch = (float *)calloc((size_t)nt * w->per, sizeof(float));
    w->ranges = (int64_t *)malloc((size_t)nt * ABWD_NRANGES * sizeof(int64_t));
    if (w->scratch == NULL || w->ranges == NULL) {
        free(w->scratch);
        free(w->ranges);
        return -1;
    }
    return 0;
}

static void
abwd_ws_get(const abwd_ws *w, int64_t hd, abwd_scratch *S)
{
    int tid = 0;
    int64_t *rg;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    abwd_carve(w->scratch + (size_t)tid * w->per, hd, S);
    rg = w->ranges + (size_t)tid * ABWD_NRANGES;
    S->clo = rg;
    S->chi = rg + ABWD_BQ;
    S->rlo = rg + 2 * ABWD_BQ;
    S->rhi = rg + 2 * ABWD_BQ + ABWD_BK;
}

static void
abwd_ws_free(abwd_ws *w)
{
    free(w->scratch);
    free(w->ranges);
}

/* ------------------------------------------------------------------------ forward --- */

/* The forward is attention.c's kernel (GQA-packed query tiles, online softmax), which also
 * writes the log-sum-exp. */
samba_status
samba_attn_fwd_lse(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    const samba_status st = abwd_check(a);
    if (st != SAMBA_OK || a->batch * a->seqlen_q * a->nheads == 0) {
        return st;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL) {
        return SAMBA_ERR_ARG;
    }
    return samba_attn_fwd_run(a, ctx);
}

/* ----------------------------------------------------------------------- backward --- */

/* delta[b, h, i] = dout[b, i, h] . out[b, i, h]; returns 1 if dout and q are all finite */
static int
abwd_delta(const abwd_plan *P, float *delta, int nt)
{
    const int64_t rows = P->B * P->Lq * P->H, hd = P->hd;
    int64_t r;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1) reduction(| : bad)
    for (r = 0; r < rows; r++) {
        const int64_t h = r % P->H, i = (r / P->H) % P->Lq, b = r / (P->H * P->Lq);
        const float *g = P->dout + r * hd, *o = P->out + r * hd;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, s;
        int64_t x, l;
        for (x = 0; x + 8 <= hd; x += 8) { /* 8 partial sums: vectorises */
            for (l = 0; l < 8; l++) {
                acc[l] += g[x + l] * o[x + l];
            }
        }
        for (; x < hd; x++) {
            acc[0] += g[x] * o[x];
        }
        s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        delta[(b * P->H + h) * P->Lq + i] = s;
        bad |= !abwd_row_finite(g, hd) || !abwd_row_finite(P->q + r * hd, hd);
    }
    return !bad;
}

/* The split of each (batch, kv head)'s key tiles into chunks: chunk c is tiles
 * [tb[c], tb[c + 1]); its dq terms touch queries [qlo[c], qhi[c]). */
typedef struct abwd_split {
    int64_t n, tb[ABWD_MAX_SPLIT + 1], qlo[ABWD_MAX_SPLIT], qhi[ABWD_MAX_SPLIT];
    int64_t boff[ABWD_MAX_SPLIT]; /* chunk c >= 1: its buffer's offset within a (b, hk) */
    int64_t buf;                  /* buffer floats per (b, hk) */
} abwd_split;

static void
abwd_split_make(const abwd_plan *P, const int64_t *work, int64_t n, abwd_split *sp)
{
    int64_t total = 0, acc = 0, t, c = 1, lo, hi;
    for (t = 0; t < P->nkt; t++) {
        total += work[t];
    }
    sp->n = n;
    sp->tb[0] = 0;
    for (t = 0; t < P->nkt && c < n; t++) { /* chunk c starts once c / n of the work is done */
        acc += work[t];
        while (c < n && acc * n >= total * c) {
            sp->tb[c++] = t + 1;
        }
    }
    while (c <= n) {
        sp->tb[c++] = P->nkt;
    }
    sp->buf = 0;
    for (c = 0; c < n; c++) {
        sp->qlo[c] = sp->qhi[c] = 0;
        if (sp->tb[c + 1] > sp->tb[c]) {
            abwd_query_range(P, sp->tb[c] * ABWD_BK, &sp->qlo[c], &hi);
            abwd_query_range(P, abwd_min(P->Lk, sp->tb[c + 1] * ABWD_BK) - 1, &lo, &sp->qhi[c]);
            sp->qhi[c] = abwd_max(sp->qlo[c], sp->qhi[c]);
        }
        sp->boff[c] = sp->buf;
        if (c > 0) {
            sp->buf += (sp->qhi[c] - sp->qlo[c]) * P->grp * P->hd;
        }
    }
}

/* share of busy threads when n equal tasks run on nt threads */
static double
abwd_eff(int64_t n, int nt)
{
    return (double)n / (double)(nt * ((n + nt - 1) / nt));
}

/* fewest chunks per (b, hk) that keep >= 90% of the threads busy, within the buffer budget */
static void
abwd_split_choose(const abwd_plan *P, const int64_t *work, int nt, abwd_split *sp)
{
    const int64_t pairs = P->B * P->Hkv, budget = abwd_max(2 * P->B * P->Lq * P->H * P->hd, 1 << 22);
    const int64_t smax = abwd_min(ABWD_MAX_SPLIT, abwd_max(1, P->nkt));
    int64_t s, best = 1;
    double beff = abwd_eff(pairs, nt);
    for (s = 2; s <= smax && beff < 0.9; s++) {
        abwd_split_make(P, work, s, sp);
        if (sp->buf * pairs > budget) {
            break;
        }
        if (abwd_eff(pairs * s, nt) > beff + 1e-9) {
            beff = abwd_eff(pairs * s, nt);
            best = s;
        }
    }
    abwd_split_make(P, work, best, sp);
}

/* dq[b, i, h] += the later chunks' buffers */
static void
abwd_reduce(const abwd_plan *P, const abwd_split *sp, const float *buf, float *dq, int nt)
{
    const int64_t rows = P->B * P->Lq * P->H, hd = P->hd;
    int64_t r;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (r = 0; r < rows; r++) {
        const int64_t h = r % P->H, i = (r / P->H) % P->Lq, b = r / (P->H * P->Lq);
        const int64_t hk = h / P->grp, gi = h % P->grp;
        float *d = dq + r * hd;
        int64_t c, x;
        for (c = 1; c < sp->n; c++) {
            if (i >= sp->qlo[c] && i < sp->qhi[c]) {
                const float *s = buf + (b * P->Hkv + hk) * sp->buf + sp->boff[c] +
                                 (gi * (sp->qhi[c] - sp->qlo[c]) + i - sp->qlo[c]) * hd;
                for (x = 0; x < hd; x++) {
                    d[x] += s[x];
                }
            }
        }
    }
}

samba_status
samba_attn_bwd(const samba_attn_ext_args *a, const samba_ctx *ctx)
{
    samba_status st = abwd_check(a);
    const abwd_kernels *K;
    abwd_plan P;
    abwd_split sp;
    abwd_ws ws;
    float *pack, *buf = NULL;
    int64_t *work, *cur, npack, ntask, budget, t, task;
    int nt, busy;

    if (st != SAMBA_OK) {
        return st;
    }
    if (a->batch * (a->seqlen_q * a->nheads + a->seqlen_k * a->nheads_kv) == 0) {
        return SAMBA_OK;
    }
    if (a->q == NULL || a->k == NULL || a->v == NULL || a->out == NULL || a->dout == NULL ||
        a->lse == NULL || a->dq == NULL || a->dk == NULL || a->dv == NULL) {
        return SAMBA_ERR_ARG;
    }
    abwd_plan_init(&P, a);
    P.dk = a->dk;
    P.dv = a->dv;
    K = samba_abwd_pick(P.hd);
    nt = abwd_threads(a, ctx);
    npack = P.B * P.Hkv * P.nkt * P.hd * ABWD_BK;
    pack = (float *)malloc(
        (size_t)abwd_max(1, 2 * npack + P.B * P.H * P.Lq * (1 + 2 * P.hd)) * sizeof(float));
    work = (int64_t *)malloc((size_t)abwd_max(1, P.nkt) * sizeof(int64_t));
    if (pack == NULL || work == NULL) {
        free(pack);
        free(work);
        return SAMBA_ERR_ALLOC;
    }
    for (t = 0; t < P.nkt; t++) { /* visible pairs x hd of each key tile (+ a fixed cost) */
        int64_t j, lo, hi;
        work[t] = ABWD_BK * P.hd;
        for (j = t * ABWD_BK; j < abwd_min(P.Lk, (t + 1) * ABWD_BK); j++) {
            abwd_query_range(&P, j, &lo, &hi);
            work[t] += (hi - lo) * P.grp * P.hd;
        }
    }
    abwd_split_choose(&P, work, nt, &sp);
    ntask = P.B * P.Hkv * sp.n;
    cur = (int64_t *)malloc((size_t)abwd_max(1, ntask) * sizeof(int64_t));
    if (sp.buf > 0) {
        buf = (float *)calloc((size_t)(P.B * P.Hkv * sp.buf), sizeof(float));
    }
    if (cur == NULL || (sp.buf > 0 && buf == NULL) || abwd_ws_alloc(&ws, P.hd, nt) < 0) {
        free(pack);
        free(work);
        free(cur);
        free(buf);
        return SAMBA_ERR_ALLOC;
    }
    P.kt = pack;
    P.vt = pack + npack;
    P.delta = pack + 2 * npack;
    P.finite = abwd_pack_t(&P, a->k, pack, nt);
    abwd_pack_t(&P, a->v, pack + npack, nt);
    P.finite &= abwd_delta(&P, pack + 2 * npack, nt);
    P.qh = pack + 2 * npack + P.B * P.H * P.Lq;
    P.gh = P.qh + P.B * P.H * P.Lq * P.hd;
    abwd_head_major(&P, a->q, (float *)P.qh, nt);
    abwd_head_major(&P, a->dout, (float *)P.gh, nt);
    memset(a->dq, 0, sizeof(float) * (size_t)(P.B * P.Lq * P.H * P.hd));
    for (task = 0; task < ntask; task++) {
        cur[task] = sp.tb[task % sp.n];
    }
    budget = abwd_max(1, ABWD_CHUNK_WORK * nt / abwd_max(1, ntask));
    for (busy = ntask > 0; busy;) {
        if (samba_ctx_stop(ctx)) {
            st = SAMBA_ERR_INTERRUPTED;
            break;
        }
        busy = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1) reduction(| : busy)
        for (task = 0; task < ntask; task++) {
            const int64_t c = task % sp.n, bh = task / sp.n, b = bh / P.Hkv, hk = bh % P.Hkv;
            const int64_t end = sp.tb[c + 1];
            abwd_scratch S;
            abwd_dqdst D;
            int64_t done = 0;
            abwd_ws_get(&ws, P.hd, &S);
            if (c == 0) {
                D.base = a->dq + (b * P.Lq * P.H + hk * P.grp) * P.hd;
                D.hstride = P.hd;
                D.ld = P.H * P.hd;
                D.row0 = 0;
            }
            else {
                D.base = buf + bh * sp.buf + sp.boff[c];
                D.hstride = (sp.qhi[c] - sp.qlo[c]) * P.hd;
                D.ld = P.hd;
                D.row0 = sp.qlo[c];
            }
            while (cur[task] < end && done < budget) {
                K->bwd_key_tile(&P, &S, b, hk, cur[task], &D);
                done += work[cur[task]];
                cur[task]++;
            }
            busy |= cur[task] < end;
        }
    }
    if (st == SAMBA_OK && sp.n > 1) {
        abwd_reduce(&P, &sp, buf, a->dq, nt);
    }
    abwd_ws_free(&ws);
    free(pack);
    free(work);
    free(cur);
    free(buf);
    return st;
}
