/*
 * attention_tile.h - the SIMD tile kernel of attention.c, written once over vector macros
 * and included by attention_simd.c once per instruction set (no include guard on purpose).
 * The includer defines:
 *   ATTN_SFX   suffix of the generated names       ATTN_TGT   function attribute or empty
 *   ATTN_V     vector type of ATTN_VW floats       ATTN_VW    floats per vector
 *   ATTN_QK_R, ATTN_QK_NV, ATTN_PV_R, ATTN_PV_NV   register blocking (rows x vectors, <= 6 x 4)
 *   VLOAD(p) VLOADU(p) VSTORE(p, x) VSET1(s) VZERO() VFMA(a, b, c) = a * b + c, VMUL, VADD,
 *   VSUB, VMAX(a, b) (b when either is NaN), VEXP2(x) (2^x for x <= 0; exact 0 below -126;
 *   NaN stays NaN), VDEADZERO(x) (0 where x == -inf, else x).
 * Requires hd % ATTN_VW == 0 (vectors run along hd in P V, and along the columns elsewhere).
 *
 * One task = one query tile (see attention_impl.h):
 *   st (nk, Mp) = K_tile qt     straight from the strided K rows: broadcast k[j, d], FMA a row
 *                               of qt (no K packing; the packed qt is reused by every key tile)
 *   softcap                     when set: s = cap tanh(s / cap) (scalar tanhf)
 *   ALiBi                       when set: s -= slope |p - j| (attn_alibi_tile)
 *   mask                        only tiles crossing a window edge (the causal diagonal is one)
 *   online softmax              per column, i.e. SIMD across queries; base 2
 *   o (M, hd) = alpha o + P V   straight from the strided V rows: broadcast P[c, j], FMA a row
 *                               of V; in masked tiles each row only reads its visible keys,
 *                               so masked K/V values (even NaN) never reach a query.
 */
#define ATTN_CAT2(a, b) a##_##b
#define ATTN_CAT(a, b) ATTN_CAT2(a, b)
#define ATTN_F(name) ATTN_CAT(name, ATTN_SFX)

/* st[r * Mp + VW v ..] = sum_d kr[r * ks + d] * qt[d * Mp + VW v ..], r < R, v < NV. */
ATTN_TGT static inline __attribute__((always_inline)) void
ATTN_F(attn_qk_block)(const float *qt, int64_t Mp, const float *kr, int64_t ks, int64_t hd,
                      float *st, const int R, const int NV)
{
    ATTN_V acc[6][4];
    int64_t d;
    int r, v;

    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            acc[r][v] = VZERO();
        }
    }
    for (d = 0; d < hd; d++) {
        const float *qd = qt + d * Mp;
        ATTN_V qv[4];
        for (v = 0; v < NV; v++) {
            qv[v] = VLOAD(qd + ATTN_VW * v);
        }
        for (r = 0; r < R; r++) {
            const ATTN_V kv = VSET1(kr[r * ks + d]);
            for (v = 0; v < NV; v++) {
                acc[r][v] = VFMA(kv, qv[v], acc[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            VSTORE(st + r * Mp + ATTN_VW * v, acc[r][v]);
        }
    }
}

/* o rows r < R, vectors v < NV: o = alpha[r] o + sum_{j < nk} st[j * Mp + r] vr[j * vs ..]. */
ATTN_TGT static inline __attribute__((always_inline)) void
ATTN_F(attn_pv_block)(const float *st, int64_t Mp, const float *vr, int64_t vs, int64_t nk,
                      float *o, int64_t hd, const float *alpha, const int R, const int NV)
{
    ATTN_V acc[6][4];
    int64_t j;
    int r, v;

    for (r = 0; r < R; r++) {
        const ATTN_V a = VSET1(alpha[r]);
        for (v = 0; v < NV; v++) {
            acc[r][v] = VMUL(a, VLOAD(o + r * hd + ATTN_VW * v));
        }
    }
    for (j = 0; j < nk; j++) {
        const float *vj = vr + j * vs;
        const float *sj = st + j * Mp;
        ATTN_V vv[4];
        for (v = 0; v < NV; v++) {
            vv[v] = VLOADU(vj + ATTN_VW * v);
        }
        for (r = 0; r < R; r++) {
            const ATTN_V p = VSET1(sj[r]);
            for (v = 0; v < NV; v++) {
                acc[r][v] = VFMA(p, vv[v], acc[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            VSTORE(o + r * hd + ATTN_VW * v, acc[r][v]);
        }
    }
}

/* Runtime (R, NV) -> unrolled block; cases above the ISA's blocking are never taken. */
/* clang-format off */
#define ATTN_QKC(R_, NV_)                                                                  \
    case (R_) * 8 + (NV_):                                                                 \
        if ((R_) <= ATTN_QK_R && (NV_) <= ATTN_QK_NV) {                                    \
            ATTN_F(attn_qk_block)(qt, Mp, kr, ks, hd, st, (R_), (NV_));                    \
        }                                                                                  \
        break;
#define ATTN_PVC(R_, NV_)                                                                  \
    case (R_) * 8 + (NV_):                                                                 \
        if ((R_) <= ATTN_PV_R && (NV_) <= ATTN_PV_NV) {                                    \
            ATTN_F(attn_pv_block)(st, Mp, vr, vs, nk, o, hd, alpha, (R_), (NV_));          \
        }                                                                                  \
        break;
#define ATTN_CASES(X)                                                                      \
    X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(2, 1) X(2, 2) X(2, 3) X(2, 4)                        \
    X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(4, 1) X(4, 2) X(4, 3) X(4, 4)                        \
    X(5, 1) X(5, 2) X(5, 3) X(5, 4) X(6, 1) X(6, 2) X(6, 3) X(6, 4)
/* clang-format on */

ATTN_TGT static void
ATTN_F(attn_qk)(const float *qt, int64_t Mp, const float *kr, int64_t ks, int64_t hd, float *st,
                int R, int NV)
{
    switch (R * 8 + NV) {
        ATTN_CASES(ATTN_QKC)
    default: break;
    }
}

ATTN_TGT static void
ATTN_F(attn_pv)(const float *st, int64_t Mp, const float *vr, int64_t vs, int64_t nk, float *o,
                int64_t hd, const float *alpha, int R, int NV)
{
    switch (R * 8 + NV) {
        ATTN_CASES(ATTN_PVC)
    default: break;
    }
}

#undef ATTN_QKC
#undef ATTN_PVC
#undef ATTN_CASES

ATTN_TGT static void
ATTN_F(attn_tile)(const attn_plan *P, int64_t b, int64_t g, int64_t p0, int64_t nq,
                  const attn_scratch *S)
{
    const int64_t hd = P->hd, M = nq * P->G, Mp = attn_round16(M);
    const int64_t ks = P->Hkv * hd;
    const float *kb = P->k + (b * P->Lk * P->Hkv + g) * hd;
    const float *vb = P->v + (b * P->Lk * P->Hkv + g) * hd;
    float *qt = S->qt, *st = S->st, *o = S->o, *m = S->m, *l = S->l, *alpha = S->alpha;
    const int64_t cstep = ATTN_VW * ATTN_QK_NV, dstep = ATTN_VW * ATTN_PV_NV;
    int64_t klo, khi, k0, c, j, cb, db;

    attn_pack_q(P, b, g, p0, nq, Mp, qt, S->colq);
    for (c = 0; c < Mp; c++) {
        m[c] = -INFINITY;
        l[c] = 0.0f;
    }
    memset(o, 0, sizeof(float) * (size_t)(M * hd));
    attn_key_range(P, p0, nq, &klo, &khi);

    for (k0 = klo; k0 <= khi; k0 += ATTN_BK) {
        const int64_t nk = khi - k0 + 1 < ATTN_BK ? khi - k0 + 1 : ATTN_BK;
        const float *kt = kb + k0 * ks;
        const int masked = attn_tile_needs_mask(P, p0, nq, k0, nk);

        /* st (nk, Mp) = K_tile qt */
        for (j = 0; j < nk; j += ATTN_QK_R) {
            const int R = (int)(nk - j < ATTN_QK_R ? nk - j : ATTN_QK_R);
            for (cb = 0; cb < Mp; cb += cstep) {
                const int NV = (int)(Mp - cb < cstep ? (Mp - cb) / ATTN_VW : ATTN_QK_NV);
                ATTN_F(attn_qk)(qt + cb, Mp, kt + j * ks, ks, hd, st + j * Mp + cb, R, NV);
            }
        }
        if (P->softcap > 0.0f) {
            attn_softcap_tile(P, st, nk, Mp);
        }
        if (P->alibi != NULL) {
            attn_alibi_tile(P, b, g, p0, k0, nk, M, Mp, st);
        }
        if (masked) {
            const int32_t *hi = S->hi, *lo = S->lo;
            attn_mask_bounds(P, p0, k0, Mp, S->colq, S->hi, S->lo);
            for (j = 0; j < nk; j++) {
                float *sj = st + j * Mp;
                const int32_t jj = (int32_t)j;
                for (c = 0; c < Mp; c++) {
                    sj[c] = (jj <= hi[c] && jj > lo[c]) ? sj[c] : -INFINITY;
                }
            }
        }
        /* online softmax, SIMD across columns */
        for (c = 0; c < Mp; c += ATTN_VW) {
            const ATTN_V mo = VLOAD(m + c);
            ATTN_V mx = mo, mu, al, sum = VZERO();
            for (j = 0; j < nk; j++) {
                mx = VMAX(VLOAD(st + j * Mp + c), mx);
            }
            mu = VDEADZERO(mx); /* no visible key yet: keep everything at 0 */
            al = VEXP2(VSUB(mo, mu));
            for (j = 0; j < nk; j++) {
                const ATTN_V p = VEXP2(VSUB(VLOAD(st + j * Mp + c), mu));
                VSTORE(st + j * Mp + c, p);
                sum = VADD(sum, p);
            }
            VSTORE(l + c, VFMA(VLOAD(l + c), al, sum));
            VSTORE(m + c, mx);
            VSTORE(alpha + c, al);
        }
        /* o (M, hd) = alpha o + P V */
        if (masked) {
            for (c = 0; c < M; c++) {
                int64_t jlo, jhi;
                attn_row_range(S->lo[c], S->hi[c], nk, &jlo, &jhi);
                for (db = 0; db < hd; db += dstep) {
                    const int NV = (int)(hd - db < dstep ? (hd - db) / ATTN_VW : ATTN_PV_NV);
                    ATTN_F(attn_pv)
                    (st + jlo * Mp + c, Mp, vb + (k0 + jlo) * ks + db, ks, jhi - jlo,
                     o + c * hd + db, hd, alpha + c, 1, NV);
                }
            }
            continue;
        }
        for (c = 0; c < M; c += ATTN_PV_R) {
            const int R = (int)(M - c < ATTN_PV_R ? M - c : ATTN_PV_R);
            for (db = 0; db < hd; db += dstep) {
                const int NV = (int)(hd - db < dstep ? (hd - db) / ATTN_VW : ATTN_PV_NV);
                ATTN_F(attn_pv)
                (st + c, Mp, vb + k0 * ks + db, ks, nk, o + c * hd + db, hd, alpha + c, R, NV);
            }
        }
    }
    attn_store_out(P, b, g, p0, M, o, m, l);
}

#undef ATTN_F
#undef ATTN_CAT
#undef ATTN_CAT2
/* the parameters of this instantiation */
#undef ATTN_SFX
#undef ATTN_TGT
#undef ATTN_V
#undef ATTN_VW
#undef ATTN_QK_R
#undef ATTN_QK_NV
#undef ATTN_PV_R
#undef ATTN_PV_NV
