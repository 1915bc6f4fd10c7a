/*
 * attention_bwd_tile.h - the tile kernels of attention_bwd.c, written once over vector macros
 * and included by attention_bwd_simd.c once per instruction set (no include guard on purpose).
 * The includer defines:
 *   ABT_SFX  suffix of the generated names       ABT_TGT  function attribute or empty
 *   ABT_V    vector type of ABT_VW floats         ABT_VW   floats per vector
 *   ABT_R, ABT_NV  register block: rows x vectors (<= 6 x 4)
 *   VLOADU(p) VSTOREU(p, x) VSET1(s) VZERO() VFMA(a, b, c) = a b + c, VMUL, VADD, VSUB,
 *   VEXP2(x) (2^x for x <= 0, exactly 0 for x = -inf), VIOTA() (lanes 0, 1, ..),
 *   VKEEP(x, c, lo, hi, f) (x where lo <= c < hi lane by lane, else f; all float vectors).
 * Requires hd % ABT_VW == 0 (vectors run along hd, and along the keys of a tile).
 *
 * Every product is one register-blocked kernel (abt_mk): C (R x NV vectors) (+)= sum over k of
 * W[r, k] M[k, :], a broadcast of W times a row of M, each loaded row of M serving R rows of C
 * and each broadcast NV vectors; W's strides are free, so P^T and dS^T need no copy:
 *   S  (nq x nk) = Q K^T        W = the query rows, M = K^T (packed per key tile)
 *   dP (nq x nk) = dO V^T       W = the dout rows, M = V^T (packed)
 *   dV (nk x hd) += P^T dO      W = P read by columns, M = the dout rows
 *   dK (nk x hd) += dS^T Q      W = dS read by columns, M = the query rows
 *   dQ (nq x hd) += dS K        W = dS, M = the key rows
 * Tiles that every row of the tile sees whole use the plain products. In the others (the
 * causal diagonal, the window's far edge, the sequence ends) P and dS are 0 outside each
 * row's range, and the three rank updates add each row's own range only (abt_gemm_ranged):
 * the range all rows of a register block share as one block, each row's rest on its own, so a
 * row never multiplies an element it does not see (0 x inf or NaN there would leak into it).
 */
#define ABT_CAT2(a, b) a##_##b
#define ABT_CAT(a, b) ABT_CAT2(a, b)
#define ABT_F(name) ABT_CAT(name, ABT_SFX)
#define ABT_INLINE ABT_TGT static inline __attribute__((always_inline))

/* c[r ldc + VW v ..] = (acc ? c[..] : 0) + sum_{k < n} w[r wr + k wk] m[k ldm + VW v ..],
 * r < R, v < NV */
ABT_INLINE void
ABT_F(abt_mk)(float *c, int64_t ldc, const float *w, int64_t wr, int64_t wk, const float *m,
              int64_t ldm, int64_t n, int acc, const int R, const int NV)
{
    ABT_V a[ABT_R][ABT_NV];
    int64_t k;
    int r, v;

    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            a[r][v] = acc ? VLOADU(c + r * ldc + ABT_VW * v) : VZERO();
        }
    }
    for (k = 0; k < n; k++) {
        const float *mk = m + k * ldm, *wk_ = w + k * wk;
        ABT_V mv[ABT_NV];
        for (v = 0; v < NV; v++) {
            mv[v] = VLOADU(mk + ABT_VW * v);
        }
        for (r = 0; r < R; r++) {
            const ABT_V wv = VSET1(wk_[r * wr]);
            for (v = 0; v < NV; v++) {
                a[r][v] = VFMA(wv, mv[v], a[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            VSTOREU(c + r * ldc + ABT_VW * v, a[r][v]);
        }
    }
}

/* runtime (R, NV) -> unrolled kernel; cases above the ISA's block are never taken */
/* clang-format off */
#define ABT_MKC(R_, NV_)                                                                   \
    case (R_) * 8 + (NV_):                                                                 \
        if ((R_) <= ABT_R && (NV_) <= ABT_NV) {                                            \
            ABT_F(abt_mk)(c, ldc, w, wr, wk, m, ldm, n, acc, (R_), (NV_));                 \
        }                                                                                  \
        break;
/* clang-format on */

ABT_TGT static void
ABT_F(abt_mkx)(float *c, int64_t ldc, const float *w, int64_t wr, int64_t wk, const float *m,
               int64_t ldm, int64_t n, int acc, int R, int NV)
{
    switch (R * 8 + NV) {
        ABT_MKC(1, 1) ABT_MKC(1, 2) ABT_MKC(1, 3) ABT_MKC(1, 4)
        ABT_MKC(2, 1) ABT_MKC(2, 2) ABT_MKC(2, 3) ABT_MKC(2, 4)
        ABT_MKC(3, 1) ABT_MKC(3, 2) ABT_MKC(3, 3) ABT_MKC(3, 4)
        ABT_MKC(4, 1) ABT_MKC(4, 2) ABT_MKC(4, 3) ABT_MKC(4, 4)
        ABT_MKC(5, 1) ABT_MKC(5, 2) ABT_MKC(5, 3) ABT_MKC(5, 4)
        ABT_MKC(6, 1) ABT_MKC(6, 2) ABT_MKC(6, 3) ABT_MKC(6, 4)
    default: break;
    }
}
#undef ABT_MKC

/* c (rows x cols) (+)= W (rows x n) M (n x cols), W[r, k] = w[r wr + k wk]; cols % VW == 0 */
ABT_TGT static void
ABT_F(abt_gemm)(float *c, int64_t ldc, const float *w, int64_t wr, int64_t wk, const float *m,
                int64_t ldm, int64_t n, int64_t rows, int64_t cols, int acc)
{
    const int64_t cstep = ABT_VW * ABT_NV;
    int64_t r0, cb;
    for (r0 = 0; r0 < rows; r0 += ABT_R) {
        const int R = (int)(rows - r0 < ABT_R ? rows - r0 : ABT_R);
        for (cb = 0; cb < cols; cb += cstep) {
            const int NV = (int)(cols - cb < cstep ? (cols - cb) / ABT_VW : ABT_NV);
            ABT_F(abt_mkx)(c + r0 * ldc + cb, ldc, w + r0 * wr, wr, wk, m + cb, ldm, n, acc, R,
                           NV);
        }
    }
}

/* abt_gemm (no accumulation) restricted, per register block of rows, to the vectors of columns
 * that cover the union of its rows' [lo[r], hi[r]); the other columns are left as they are */
ABT_TGT static void
ABT_F(abt_gemm_cols)(float *c, int64_t ldc, const float *w, int64_t wr, int64_t wk,
                     const float *m, int64_t ldm, int64_t n, int64_t rows, const int64_t *lo,
                     const int64_t *hi)
{
    const int64_t cstep = ABT_VW * ABT_NV;
    int64_t r0, r, cb, c0, c1;
    for (r0 = 0; r0 < rows; r0 += ABT_R) {
        const int R = (int)(rows - r0 < ABT_R ? rows - r0 : ABT_R);
        c0 = INT64_MAX;
        c1 = 0;
        for (r = r0; r < r0 + R; r++) {
            if (hi[r] > lo[r]) {
                c0 = lo[r] < c0 ? lo[r] : c0;
                c1 = hi[r] > c1 ? hi[r] : c1;
            }
        }
        if (c1 <= c0) {
            continue;
        }
        c0 = c0 / ABT_VW * ABT_VW;
        c1 = (c1 + ABT_VW - 1) / ABT_VW * ABT_VW;
        for (cb = c0; cb < c1; cb += cstep) {
            const int NV = (int)(c1 - cb < cstep ? (c1 - cb) / ABT_VW : ABT_NV);
            ABT_F(abt_mkx)(c + r0 * ldc + cb, ldc, w + r0 * wr, wr, wk, m + cb, ldm, n, 0, R, NV);
        }
    }
}

/* c row r += sum_{lo[r] <= k < hi[r]} W[r, k] M[k, :]. exact: per register block of rows,
 * the range they share as one block, then each row's rest on its own; else (W is 0 outside
 * each row's range and M finite, so the terms outside add exactly 0) the block over the union
 * of its rows' ranges. */
ABT_TGT static void
ABT_F(abt_gemm_ranged)(float *c, int64_t ldc, const float *w, int64_t wr, int64_t wk,
                       const float *m, int64_t ldm, int64_t rows, int64_t cols, const int64_t *lo,
                       const int64_t *hi, int exact)
{
    const int64_t cstep = ABT_VW * ABT_NV;
    int64_t r0, r, cb, k0, k1, piece;
    for (r0 = 0; r0 < rows; r0 += ABT_R) {
        const int R = (int)(rows - r0 < ABT_R ? rows - r0 : ABT_R);
        k0 = exact ? lo[r0] : INT64_MAX;
        k1 = exact ? hi[r0] : 0;
        for (r = r0; r < r0 + R; r++) {
            if (exact) { /* the intersection */
                k0 = lo[r] > k0 ? lo[r] : k0;
                k1 = hi[r] < k1 ? hi[r] : k1;
            }
            else if (hi[r] > lo[r]) { /* the union of the non-empty ranges */
                k0 = lo[r] < k0 ? lo[r] : k0;
                k1 = hi[r] > k1 ? hi[r] : k1;
            }
        }
        if (k1 > k0) {
            for (cb = 0; cb < cols; cb += cstep) {
                const int NV = (int)(cols - cb < cstep ? (cols - cb) / ABT_VW : ABT_NV);
                ABT_F(abt_mkx)(c + r0 * ldc + cb, ldc, w + r0 * wr + k0 * wk, wr, wk,
                               m + k0 * ldm + cb, ldm, k1 - k0, 1, R, NV);
            }
        }
        for (r = r0; r < r0 + R && exact; r++) {
            for (piece = 0; piece < 2; piece++) {
                /* [lo, k0) and [k1, hi) around the shared range, or all of [lo, hi) */
                int64_t a = lo[r], e = hi[r];
                if (k1 > k0) {
                    a = piece == 0 ? lo[r] : k1;
                    e = piece == 0 ? k0 : hi[r];
                }
                else if (piece == 1) {
                    break;
                }
                if (e <= a) {
                    continue;
                }
                for (cb = 0; cb < cols; cb += cstep) {
                    const int NV = (int)(cols - cb < cstep ? (cols - cb) / ABT_VW : ABT_NV);
                    ABT_F(abt_mkx)(c + r * ldc + cb, ldc, w + r * wr + a * wk, wr, wk,
                                   m + a * ldm + cb, ldm, e - a, 1, 1, NV);
                }
            }
        }
    }
}

/* one query row of a backward tile, in place: s (scores) -> P = e^(scale s - lse),
 * dp -> dS = scale P (dp - dl); masked: lanes outside [clo, chi) get P = dS = 0 */
ABT_INLINE void
ABT_F(abt_bwd_row)(float *s, float *dp, int64_t nkp, int64_t clo, int64_t chi, float lse,
                   float dl, float scale, const int masked)
{
    const ABT_V sc = VSET1(scale), nl = VSET1(-lse), dlv = VSET1(dl);
    const ABT_V l2e = VSET1(SAMBA_LOG2E), step = VSET1((float)ABT_VW);
    const ABT_V vlo = VSET1((float)clo), vhi = VSET1((float)chi);
    ABT_V ci = VIOTA();
    int64_t c;
    for (c = 0; c < nkp; c += ABT_VW) {
        ABT_V x = VFMA(VLOADU(s + c), sc, nl), p, ds;
        if (masked) {
            x = VKEEP(x, ci, vlo, vhi, VSET1(-INFINITY));
        }
        p = VEXP2(VMUL(x, l2e));
        ds = VMUL(VMUL(p, VSUB(VLOADU(dp + c), dlv)), sc);
        if (masked) {
            ds = VKEEP(ds, ci, vlo, vhi, VZERO());
            ci = VADD(ci, step);
        }
        VSTOREU(s + c, p);
        VSTOREU(dp + c, ds);
    }
}

/* abt_bwd_row with a softcap (cap > 0: s = cap tanh(scale r / cap), dS gets the factor
 * 1 - tanh^2) and / or ALiBi (s -= slope |d0 - c|, d0 = the query's key position less the
 * tile's first key; the bias does not depend on q or k, so dS keeps its form) */
ABT_INLINE void
ABT_F(abt_bwd_row_gen)(float *s, float *dp, int64_t nkp, int64_t clo, int64_t chi, float lse,
                       float dl, float scale, float cap, float slope, int64_t d0)
{
    int64_t c;
    for (c = 0; c < nkp; c++) {
        float p = 0.0f, ds = 0.0f;
        if (c >= clo && c < chi) {
            float x = scale * s[c], f = 1.0f;
            if (cap > 0.0f) {
                const float t = tanhf(x / cap);
                x = cap * t;
                f = 1.0f - t * t;
            }
            x -= slope * fabsf((float)(d0 - c));
            p = samba_expf(x - lse);
            ds = p * (dp[c] - dl) * scale * f;
        }
        s[c] = p;
        dp[c] = ds;
    }
}

/* The queries [i0, i0 + nq) of head hk * grp + gi against key tile [j0, j0 + nk) (K^T, V^T
 * packed at kt, vt): adds to the tile's dk, dv sums (S->dk, S->dv) and to dq at D. */
ABT_TGT static void
ABT_F(abt_bwd_block)(const abwd_plan *P, const abwd_scratch *S, int64_t b, int64_t hk,
                     int64_t gi, int64_t i0, int64_t nq, int64_t j0, int64_t nk, const float *kt,
                     const float *vt, const abwd_dqdst *D)
{
    const int64_t hd = P->hd, h = hk * P->grp + gi, ldq = hd, ldk = P->Hkv * hd;
    const int64_t nkp = (nk + ABT_VW - 1) / ABT_VW * ABT_VW;
    const float *qr = P->qh + ((b * P->H + h) * P->Lq + i0) * hd;
    const float *gr = P->gh + ((b * P->H + h) * P->Lq + i0) * hd;
    const float *kr = P->k + ((b * P->Lk + j0) * P->Hkv + hk) * hd;
    const float *lse = P->lse + (b * P->H + h) * P->Lq + i0;
    const float *dl = P->delta + (b * P->H + h) * P->Lq + i0;
    float *dqr = D->base + gi * D->hstride + (i0 - D->row0) * D->ld;
    int64_t *clo = S->clo, *chi = S->chi, *rlo = S->rlo, *rhi = S->rhi;
    int64_t r, c, lo, hi;
    int full = nk == nkp, any = 0;

    for (r = 0; r < nq; r++) {
        abwd_key_range(P, i0 + r, &lo, &hi);
        clo[r] = abwd_min(nk, abwd_max(0, lo - j0));
        chi[r] = abwd_max(clo[r], abwd_min(nk, hi - j0));
        full &= clo[r] == 0 && chi[r] == nk;
        any |= chi[r] > clo[r];
    }
    if (!any) {
        return;
    }
    if (full) {
        ABT_F(abt_gemm)(S->s, ABWD_BK, qr, ldq, 1, kt, ABWD_BK, hd, nq, nkp, 0);
        ABT_F(abt_gemm)(S->dp, ABWD_BK, gr, ldq, 1, vt, ABWD_BK, hd, nq, nkp, 0);
    }
    else { /* only the vectors of keys each block of rows sees; the rest is masked below */
        ABT_F(abt_gemm_cols)(S->s, ABWD_BK, qr, ldq, 1, kt, ABWD_BK, hd, nq, clo, chi);
        ABT_F(abt_gemm_cols)(S->dp, ABWD_BK, gr, ldq, 1, vt, ABWD_BK, hd, nq, clo, chi);
    }
    for (r = 0; r < nq; r++) {
        float *sr = S->s + r * ABWD_BK, *dpr = S->dp + r * ABWD_BK;
        if (chi[r] <= clo[r]) { /* P = dS = 0 (read as zeros by the union ranges below) */
            memset(sr, 0, sizeof(float) * (size_t)nkp);
            memset(dpr, 0, sizeof(float) * (size_t)nkp);
            continue;
        }
        if (P->softcap > 0.0f || P->alibi != NULL) {
            const float slope = P->alibi != NULL ? P->alibi[b * P->alibi_bs + h] : 0.0f;
            ABT_F(abt_bwd_row_gen)(sr, dpr, nkp, clo[r], chi[r], lse[r], dl[r], P->scale,
                                   P->softcap, slope, i0 + r + P->off - j0);
        }
        else if (full) {
            ABT_F(abt_bwd_row)(sr, dpr, nkp, 0, nkp, lse[r], dl[r], P->scale, 0);
        }
        else {
            ABT_F(abt_bwd_row)(sr, dpr, nkp, clo[r], chi[r], lse[r], dl[r], P->scale, 1);
        }
    }
    if (full) {
        ABT_F(abt_gemm)(S->dv, hd, S->s, 1, ABWD_BK, gr, ldq, nq, nk, hd, 1);
        ABT_F(abt_gemm)(S->dk, hd, S->dp, 1, ABWD_BK, qr, ldq, nq, nk, hd, 1);
        ABT_F(abt_gemm)(dqr, D->ld, S->dp, ABWD_BK, 1, kr, ldk, nk, nq, hd, 1);
        return;
    }
    for (c = 0; c < nk; c++) {
        abwd_query_range(P, j0 + c, &lo, &hi);
        rlo[c] = abwd_min(nq, abwd_max(0, lo - i0));
        rhi[c] = abwd_max(rlo[c], abwd_min(nq, hi - i0));
    }
    ABT_F(abt_gemm_ranged)(S->dv, hd, S->s, 1, ABWD_BK, gr, ldq, nk, hd, rlo, rhi, !P->finite);
    ABT_F(abt_gemm_ranged)(S->dk, hd, S->dp, 1, ABWD_BK, qr, ldq, nk, hd, rlo, rhi, !P->finite);
    ABT_F(abt_gemm_ranged)(dqr, D->ld, S->dp, ABWD_BK, 1, kr, ldk, nq, hd, clo, chi, !P->finite);
}

/* dk, dv rows of key tile t of (b, hk) over all queries of its grp query heads that see it,
 * and their dq terms added at D */
ABT_TGT static void
ABT_F(abt_bwd_key_tile)(const abwd_plan *P, const abwd_scratch *S, int64_t b, int64_t hk,
                        int64_t t, const abwd_dqdst *D)
{
    const int64_t hd = P->hd, j0 = t * ABWD_BK, nk = abwd_min(ABWD_BK, P->Lk - j0);
    const int64_t toff = ((b * P->Hkv + hk) * P->nkt + t) * hd * ABWD_BK;
    int64_t qlo, qhi, lo, hi, gi, i0, i1, r, x;

    memset(S->dk, 0, sizeof(float) * (size_t)(nk * hd));
    memset(S->dv, 0, sizeof(float) * (size_t)(nk * hd));
    abwd_query_range(P, j0, &qlo, &hi);
    abwd_query_range(P, j0 + nk - 1, &lo, &qhi);
    for (gi = 0; gi < P->grp && qhi > qlo; gi++) {
        for (i0 = qlo; i0 < qhi; i0 = i1) {
            i1 = abwd_min(qhi, abwd_qtile_end(P, i0));
            ABT_F(abt_bwd_block)(P, S, b, hk, gi, i0, i1 - i0, j0, nk, P->kt + toff,
                                 P->vt + toff, D);
        }
    }
    for (r = 0; r < nk; r++) {
        float *dk = P->dk + ((b * P->Lk + j0 + r) * P->Hkv + hk) * hd;
        float *dv = P->dv + ((b * P->Lk + j0 + r) * P->Hkv + hk) * hd;
        for (x = 0; x < hd; x++) {
            dk[x] = S->dk[r * hd + x];
            dv[x] = S->dv[r * hd + x];
        }
    }
}

#undef ABT_INLINE
#undef ABT_F
#undef ABT_CAT
#undef ABT_CAT2
/* the parameters of this instantiation */
#undef ABT_SFX
#undef ABT_TGT
#undef ABT_V
#undef ABT_VW
#undef ABT_R
#undef ABT_NV
