/*
 * attention_impl.h - internals shared by attention.c (driver, scalar path) and
 * attention_simd.c (SIMD tile kernels instantiated from attention_tile.inc).  Not public.
 *
 * A task is one (batch b, kv head g, tile of nq query positions p0 ..).  Its M = nq * G
 * columns are the (position, query head) pairs of the G = H / Hkv query heads of kv head g,
 * column c = (position p0 + c / G, head g * G + c % G); Mp = M rounded up to 16.
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
    int64_t W;    /* window, 0 = full causal (also when window >= Lk) */
    float scale2; /* softmax_scale * log2(e): the softmax runs in base 2 */
    int64_t bq;   /* query positions per tile */
    int64_t nqt;  /* query tiles per (b, kv head) */
    int64_t Mp;   /* padded columns of a full tile (multiple of 16) */
    const float *q, *k, *v;
    float *out;
} attn_plan;

/* Per-thread scratch (64-byte aligned slices of one buffer). */
typedef struct attn_scratch {
    float *qt;            /* (hd, Mp) queries, transposed and scaled by scale2 */
    float *st;            /* (ATTN_BK, Mp) scores, then probabilities */
    float *o;             /* (Mp, hd) unnormalised output rows */
    float *m, *l, *alpha; /* (Mp) running max, running sum, rescale of this key tile */
    int32_t *colq;        /* (Mp) column -> query position within the tile (c / G) */
    int32_t *hi, *lo;     /* (Mp) masked tile: column c sees rows lo[c] < j <= hi[c] */
} attn_scratch;

/* Tile kernel: computes out rows of one task. */
typedef void (*attn_tile_fn)(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
                             const attn_scratch *S);

/* SIMD tile kernel for this CPU and head dim, or NULL (attention_simd.c); the level is
 * samba_isa()'s (simd.h: SAMBA_EXT_ISA=avx512|avx2|vec|scalar caps it, for tests). */
attn_tile_fn samba_attn_pick_simd(int64_t hd, const char **name);

static int64_t
attn_round16(int64_t x)
{
    return (x + 15) / 16 * 16;
}

/* Key range [*klo, *khi] seen by query positions p0 .. p0 + nq - 1. */
static void
attn_key_range(const attn_plan *P, int64_t p0, int64_t nq, int64_t *klo, int64_t *khi)
{
    int64_t lo = 0;
    if (P->W > 0) {
        lo = p0 + P->off - P->W + 1;
        lo = lo < 0 ? 0 : lo;
    }
    *klo = lo;
    *khi = p0 + nq - 1 + P->off;
}

/* 1 if key tile [k0, k0 + nk) is not entirely visible to every query p0 .. p0 + nq - 1. */
static int
attn_tile_needs_mask(const attn_plan *P, int64_t p0, int64_t nq, int64_t k0, int64_t nk)
{
    if (k0 + nk - 1 > p0 + P->off) {
        return 1; /* crosses the causal diagonal of the first query */
    }
    return P->W > 0 && k0 <= p0 + nq - 1 + P->off - P->W; /* behind the last one's window */
}

/* qt[d * Mp + c] = q[b, p0 + c / G, g * G + c % G, d] * scale2 (c < M), 0 for M <= c < Mp;
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
            qt[d * Mp + c] = src[d] * P->scale2;
        }
    }
    for (d = 0; d < hd; d++) {
        for (c = M; c < Mp; c++) {
            qt[d * Mp + c] = 0.0f;
        }
    }
}

/* Visible rows of a masked key tile at k0: column c sees lo[c] < j <= hi[c]. */
static void
attn_mask_bounds(const attn_plan *P, int64_t p0, int64_t k0, int64_t Mp, const int32_t *colq,
                 int32_t *hi, int32_t *lo)
{
    int64_t h0 = p0 + P->off - k0, c;
    h0 = h0 > (1 << 30) ? (1 << 30) : h0 < -(1 << 30) ? -(1 << 30) : h0;
    for (c = 0; c < Mp; c++) {
        hi[c] = colq[c] + (int32_t)h0;
        lo[c] = P->W > 0 ? hi[c] - (int32_t)P->W : INT32_MIN;
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

/* out[b, p0 + c / G, g * G + c % G, :] = o[c] / l[c] for c < M. */
static void
attn_store_out(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t M, const float *o,
               const float *l)
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

#endif /* SAMBA_ATTENTION_IMPL_H */
