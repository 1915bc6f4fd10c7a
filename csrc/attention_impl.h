/*
 * attention_impl.h - internals shared by attention.c (driver, scalar path) and
 * attention_simd.c (SIMD tile kernels instantiated from attention_tile.h).  Not public.
 *
 * A task is one (batch b, kv head g, tile of nq query positions p0 ..).  Its M = nq * G
 * columns are the (position, query head) pairs of the G = H / Hkv query heads of kv head g,
 * column c = (position p0 + c / G, head g * G + c % G); Mp = M rounded up to 16.
 * Query i sits at key position p = i + off (off = Lk - Lq) and sees the keys j with
 * (left < 0 or j >= p - left) and (right < 0 or j <= p + right), 0 <= j < Lk; one that sees
 * none gets out = 0 and lse = -inf.
 */
#ifndef SAMBA_ATTENTION_IMPL_H
#define SAMBA_ATTENTION_IMPL_H

#include "samba.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ATTN_BK 64    /* keys per tile */
#define ATTN_MCOLS 64 /* target columns per query tile */
#define ATTN_LOG2E 1.4426950408889634

typedef struct attn_plan {
    int64_t B, Lq, Lk, H, Hkv, hd, G, off;
    int64_t left, right; /* window sides, < 0: unbounded (causal: right = 0) */
    float qscale;        /* the packed queries' factor: scale log2(e), or scale with softcap */
    float softcap;       /* > 0: s = softcap tanh(s / softcap) before the softmax */
    const float *alibi;  /* NULL, or the ALiBi slope of (b, h) at alibi[b * alibi_bs + h] */
    int64_t alibi_bs;
    int64_t bq;          /* query positions per tile */
    int64_t nqt;         /* query tiles per (b, kv head) */
    int64_t Mp;          /* padded columns of a full tile (multiple of 16) */
    const float *q, *k, *v;
    float *out;
    float *lse; /* (B, H, Lq) natural-log log-sum-exp, or NULL */
} attn_plan;

/* Per-thread scratch (64-byte aligned slices of one buffer). */
typedef struct attn_scratch {
    float *qt;            /* (hd, Mp) queries, transposed and scaled by qscale */
    float *st;            /* (ATTN_BK, Mp) scores, then probabilities */
    float *o;             /* (Mp, hd) unnormalised output rows */
    float *m, *l, *alpha; /* (Mp) running max, running sum, rescale of this key tile */
    int32_t *colq;        /* (Mp) column -> query position within the tile (c / G) */
    int32_t *hi, *lo;     /* (Mp) masked tile: column c sees rows lo[c] < j <= hi[c] */
} attn_scratch;

/* Tile kernel: computes out rows of one task. */
typedef void (*attn_tile_fn)(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
                             const attn_scratch *S);

/* The forward of samba_attn_fwd and samba_attn_fwd_lse (attention.c), arguments already
 * checked by the caller: out and, when a->lse is set, lse. */
samba_status samba_attn_fwd_run(const samba_attn_ext_args *a, const samba_ctx *ctx);

/* SIMD tile kernel for this CPU and head dim, or NULL (attention_simd.c); the level is
 * samba_isa()'s (simd.h: SAMBA_EXT_ISA=avx512|avx2|vec|scalar caps it, for tests). */
attn_tile_fn samba_attn_pick_simd(int64_t hd, const char **name);

static int64_t
attn_round16(int64_t x)
{
    return (x + 15) / 16 * 16;
}

/* Key range [*klo, *khi] seen by query positions p0 .. p0 + nq - 1 (empty: *klo > *khi). */
static void
attn_key_range(const attn_plan *P, int64_t p0, int64_t nq, int64_t *klo, int64_t *khi)
{
    int64_t lo = 0, hi = P->Lk - 1;
    if (P->left >= 0 && p0 + P->off - P->left > 0) {
        lo = p0 + P->off - P->left;
    }
    if (P->right >= 0 && p0 + nq - 1 + P->off + P->right < hi) {
        hi = p0 + nq - 1 + P->off + P->right;
    }
    *klo = lo;
    *khi = hi;
}

/* 1 if key tile [k0, k0 + nk) is not entirely visible to every query p0 .. p0 + nq - 1. */
static int
attn_tile_needs_mask(const attn_plan *P, int64_t p0, int64_t nq, int64_t k0, int64_t nk)
{
    if (P->right >= 0 && k0 + nk - 1 > p0 + P->off + P->right) {
        return 1; /* past the right edge of the first query */
    }
    return P->left >= 0 && k0 < p0 + nq - 1 + P->off - P->left; /* left of the last one's */
}

/* qt[d * Mp + c] = q[b, p0 + c / G, g * G + c % G, d] * qscale (c < M), 0 for M <= c < Mp;
 * colq[c] = c / G. */
static void
attn_pack_q(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq, int64_t Mp, float *qt,
            int32_t *colq)
{
    const int64_t G = P->G, hd = P->hd, M = nq * G;
    int64_t c, d;

    for (c = 0; c < Mp; c++) {
        colq[c] = (int32_t)(c / G);
    }
    for (c = 0; c < M; c++) {
        const float *src = P->q + ((b * P->Lq + p0 + c / G) * P->H + g * G + c % G) * hd;
        for (d = 0; d < hd; d++) {
            qt[d * Mp + c] = src[d] * P->qscale;
        }
    }
    for (d = 0; d < hd; d++) {
        for (c = M; c < Mp; c++) {
            qt[d * Mp + c] = 0.0f;
        }
    }
}

static int32_t
attn_clamp30(int64_t x)
{
    return (int32_t)(x > (1 << 30) ? (1 << 30) : x < -(1 << 30) ? -(1 << 30) : x);
}

/* Visible rows of a masked key tile at k0: column c sees lo[c] < j <= hi[c]. */
static void
attn_mask_bounds(const attn_plan *P, int64_t p0, int64_t k0, int64_t Mp, const int32_t *colq,
                 int32_t *hi, int32_t *lo)
{
    const int64_t h0 = p0 + P->off - k0; /* query p0's own key, tile-relative */
    const int32_t hr = P->right < 0 ? (1 << 30) : attn_clamp30(h0 + P->right);
    const int32_t ll = P->left < 0 ? -(1 << 30) : attn_clamp30(h0 - P->left - 1);
    int64_t c;
    for (c = 0; c < Mp; c++) { /* colq < 2^24 (Mp is small): no overflow */
        hi[c] = P->right < 0 ? hr : hr + colq[c];
        lo[c] = P->left < 0 ? ll : ll + colq[c];
    }
}

/* With a softcap: the scores of rows j < nk of a tile (raw q.k scale) become
 * softcap tanh(s / softcap) log2(e), the base-2 scores of the softmax. */
static void
attn_softcap_tile(const attn_plan *P, float *st, int64_t nk, int64_t Mp)
{
    const float cap = P->softcap, inv = 1.0f / P->softcap;
    int64_t i;
    for (i = 0; i < nk * Mp; i++) {
        st[i] = cap * tanhf(st[i] * inv) * (float)ATTN_LOG2E;
    }
}

/* ALiBi: the base-2 scores of rows j < nk of the key tile at k0 get -slope log2(e) |p - k0 - j|
 * (p: column c's query position plus off; slope: its head's, in batch row b); the padding
 * columns M .. Mp are left as they are. */
static void
attn_alibi_tile(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t k0, int64_t nk,
                int64_t M, int64_t Mp, float *st)
{
    const float *slope = P->alibi + b * P->alibi_bs + g * P->G;
    int64_t c, j;
    for (c = 0; c < M; c++) {
        const float s2 = slope[c % P->G] * (float)ATTN_LOG2E;
        const int64_t d0 = p0 + c / P->G + P->off - k0; /* distance to row 0 */
        for (j = 0; j < nk; j++) {
            st[j * Mp + c] -= s2 * fabsf((float)(d0 - j));
        }
    }
}

/* Visible rows [*jlo, *jhi) of a masked tile of nk rows for bounds (lo, hi]. */
static void
attn_row_range(int32_t lo, int32_t hi, int64_t nk, int64_t *jlo, int64_t *jhi)
{
    int64_t a = (int64_t)lo + 1, e = (int64_t)hi + 1;
    a = a < 0 ? 0 : a;
    e = e > nk ? nk : e;
    *jlo = a < e ? a : e;
    *jhi = e > *jlo ? e : *jlo;
}

/* out[b, p0 + c / G, g * G + c % G, :] = o[c] / l[c] for c < M (0 where the query saw no
 * key: l = 0), and lse = (m + log2 l) ln 2 (-inf there) when P->lse is set. */
static void
attn_store_out(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t M, const float *o,
               const float *m, const float *l)
{
    const int64_t G = P->G, hd = P->hd;
    int64_t c, d;

    for (c = 0; c < M; c++) {
        const int64_t i = p0 + c / G, h = g * G + c % G;
        float *dst = P->out + ((b * P->Lq + i) * P->H + h) * hd;
        const float inv = l[c] == 0.0f ? 0.0f : 1.0f / l[c];
        for (d = 0; d < hd; d++) {
            dst[d] = o[c * hd + d] * inv;
        }
        if (P->lse != NULL) {
            P->lse[(b * P->H + h) * P->Lq + i] =
                l[c] == 0.0f ? -INFINITY : (float)(((double)m[c] + log2((double)l[c])) / ATTN_LOG2E);
        }
    }
}

#endif /* SAMBA_ATTENTION_IMPL_H */
