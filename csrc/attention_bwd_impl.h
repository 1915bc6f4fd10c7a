/*
 * attention_bwd_impl.h - internals shared by attention_bwd.c (driver: arguments, packing,
 * tasks, threads) and attention_bwd_simd.c (the tile kernels of attention_bwd_tile.h, one
 * instantiation per instruction set). Not public.
 *
 * Tiles: key tiles of ABWD_BK keys start at multiples of ABWD_BK; query tiles of up to ABWD_BQ
 * queries start where the query's key position p = i + Lk - Lq is a multiple of ABWD_BQ
 * (= ABWD_BK), so a causal diagonal falls inside one tile of each row and column of tiles.
 */
#ifndef SAMBA_ATTENTION_BWD_IMPL_H
#define SAMBA_ATTENTION_BWD_IMPL_H

#include "samba.h"

#include <stdint.h>

#define ABWD_BK 64 /* keys per tile (also the row length of the packed K^T / V^T tiles) */
#define ABWD_BQ 64 /* queries per tile */

typedef struct abwd_plan {
    int64_t B, Lq, Lk, H, Hkv, hd, grp, off; /* grp = H / Hkv, off = Lk - Lq */
    int64_t left, right;                      /* window; < 0: unbounded on that side */
    int64_t nkt;                              /* key tiles: ceil(Lk / ABWD_BK) */
    float scale, softcap;
    const float *alibi; /* NULL, or the ALiBi slope of (b, h) at alibi[b * alibi_bs + h] */
    int64_t alibi_bs;
    int finite; /* the rows the rank updates read (q, k, dout) are finite */
    const float *q, *k, *v, *dout, *out, *lse; /* the argument arrays */
    const float *kt, *vt; /* (B, Hkv, nkt, hd, ABWD_BK): K^T, V^T per key tile, zero padded */
    const float *delta;   /* (B, H, Lq): dout_i . out_i */
    const float *qh, *gh; /* (B, H, Lq, hd): q and dout head-major (rows hd floats apart) */
    float *dk, *dv;       /* backward outputs (dq: see abwd_dqdst) */
} abwd_plan;

/* Where a backward task accumulates dq: row i of query head hk * grp + gi at
 * base + gi * hstride + (i - row0) * ld (the dq argument itself, or a partial-sum buffer). */
typedef struct abwd_dqdst {
    float *base;
    int64_t hstride, ld, row0;
} abwd_dqdst;

/* Per-thread scratch of the tile kernels (floats; ABWD_SCRATCH_FLOATS(hd) of them). */
typedef struct abwd_scratch {
    float *s, *dp;       /* (ABWD_BQ, ABWD_BK): scores then P; dP then dS */
    float *dk, *dv;      /* (ABWD_BK, hd): one key tile's dk, dv sums */
    int64_t *clo, *chi;  /* (ABWD_BQ): per query row, its keys [clo, chi) in the tile */
    int64_t *rlo, *rhi;  /* (ABWD_BK): per key, its queries [rlo, rhi) in the tile */
} abwd_scratch;

#define ABWD_SCRATCH_FLOATS(hd) (2 * ABWD_BQ * ABWD_BK + 2 * ABWD_BK * (hd) + 16 * 4)

/* One instruction set's kernels. */
typedef struct abwd_kernels {
    /* dk, dv rows of key tile t of (b, hk), and its dq terms added at D */
    void (*bwd_key_tile)(const abwd_plan *P, const abwd_scratch *S, int64_t b, int64_t hk,
                         int64_t t, const abwd_dqdst *D);
    const char *name;
} abwd_kernels;

/* The kernels for samba_isa()'s level whose vector width divides hd (attention_bwd_simd.c). */
const abwd_kernels *samba_abwd_pick(int64_t hd);

static inline int64_t
abwd_min(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static inline int64_t
abwd_max(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* visible keys [*lo, *hi) of query i (empty: *lo == *hi) */
static inline void
abwd_key_range(const abwd_plan *P, int64_t i, int64_t *lo, int64_t *hi)
{
    const int64_t p = i + P->off;
    *lo = P->left < 0 ? 0 : abwd_max(0, p - P->left);
    *hi = P->right < 0 ? P->Lk : abwd_min(P->Lk, p + P->right + 1);
    if (*hi < *lo) {
        *hi = *lo;
    }
}

/* queries [*lo, *hi) that see key j (empty: *lo == *hi) */
static inline void
abwd_query_range(const abwd_plan *P, int64_t j, int64_t *lo, int64_t *hi)
{
    *lo = P->right < 0 ? 0 : abwd_max(0, j - P->right - P->off);
    *hi = P->left < 0 ? P->Lq : abwd_min(P->Lq, j + P->left - P->off + 1);
    if (*hi < *lo) {
        *hi = *lo;
    }
}

/* end of the query tile that starts at i: the next i' > i with i' + off a multiple of ABWD_BQ */
static inline int64_t
abwd_qtile_end(const abwd_plan *P, int64_t i)
{
    int64_t m = (i + P->off) % ABWD_BQ;
    m += m < 0 ? ABWD_BQ : 0;
    return i + ABWD_BQ - m;
}

#endif /* SAMBA_ATTENTION_BWD_IMPL_H */
