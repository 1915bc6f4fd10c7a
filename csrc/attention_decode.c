/*
 * attention_decode.c - one-token decode attention over a ring-buffer KV cache (GQA).
 *
 * q (B, H, hd); k_cache, v_cache (B, C, Hkv, hd); pos, n_valid (B); out (B, H, hd).
 * Batch b attends to the n = n_valid[b] newest keys: logical key u = 0 .. n-1 (oldest first)
 * sits in slot (pos[b] - n + 1 + u) mod C, so the newest (u = n-1) is in slot pos[b] mod C.
 *
 * Split-K ("flash-decoding"): a task is (b, kv head g, chunk of DEC_CHUNK logical keys) and
 * serves the G = H / Hkv query heads of g, each K/V row loaded once for all of them.  It
 * writes a partial (max m, sum l, unnormalised o) per head in base 2 (scores, then
 * exponentials, then P V: no per-key rescaling); a second pass merges the chunks of each
 * (b, h).  Memory-bound: one pass over the valid part of the cache, rows prefetched ahead.
 */
#include "samba.h"
#include "simd.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DEC_CHUNK 256
#define DEC_LOG2E 1.4426950408889634

typedef struct dec_plan {
    int64_t B, H, Hkv, hd, C, G, nch;
    float scale2;
    const float *q, *kc, *vc;
    const int64_t *pos, *nv;
    float *part; /* (B, Hkv, nch, G, hd + 2): o[hd], m, l */
} dec_plan;

/* Slot of logical key u of batch b. */
static int64_t
dec_slot(const dec_plan *P, int64_t b, int64_t u)
{
    int64_t s = (P->pos[b] - P->nv[b] + 1 + u) % P->C;
    return s < 0 ? s + P->C : s;
}

static float
dec_dot_generic(const float *x, const float *y, int64_t n)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float s = 0.0f;
    int64_t d = 0;
    int i;
    for (; d + 8 <= n; d += 8) {
        for (i = 0; i < 8; i++) {
            acc[i] += x[d + i] * y[d + i];
        }
    }
    for (; d < n; d++) {
        s += x[d] * y[d];
    }
    for (i = 0; i < 8; i++) {
        s += acc[i];
    }
    return s;
}

static void
dec_axpy_generic(float *o, float p, const float *v, int64_t n)
{
    int64_t d;
    for (d = 0; d < n; d++) {
        o[d] += p * v[d];
    }
}

/* Prefetches one cache row (hd floats): the rows of a head lie Hkv * hd floats apart,
 * often a page or more, where hardware prefetchers stop. */
static void
dec_prefetch_row(const float *r, int64_t hd)
{
    int64_t d;
    for (d = 0; d < hd; d += 16) {
        __builtin_prefetch(r + d, 0, 3);
    }
}

#define DEC_AHEAD 4 /* rows prefetched ahead */

/* What a task (b, kv head g, chunk ch) works on: logical keys [u0, u0 + nk), the cache rows of
 * kv head g (row stride rs floats: one slot holds every kv head), the G query rows of g and
 * the task's partials (G x (hd + 2): o, m, l). */
typedef struct dec_view {
    int64_t u0, nk, rs;
    const float *kb, *vb, *qb;
    float *part;
} dec_view;

static dec_view
dec_view_of(const dec_plan *P, int64_t b, int64_t g, int64_t ch)
{
    const int64_t hd = P->hd, G = P->G, n = P->nv[b];
    dec_view V;
    V.u0 = ch * DEC_CHUNK;
    V.nk = (V.u0 + DEC_CHUNK < n ? V.u0 + DEC_CHUNK : n) - V.u0;
    V.rs = P->Hkv * hd;
    V.kb = P->kc + (b * P->C * P->Hkv + g) * hd;
    V.vb = P->vc + (b * P->C * P->Hkv + g) * hd;
    V.qb = P->q + (b * P->H + g * G) * hd;
    V.part = P->part + ((b * P->Hkv + g) * P->nch + ch) * G * (hd + 2);
    return V;
}

/* Partial attention of the G heads of kv head g over logical keys [u0, u1) of batch b:
 * scores s (G, nk) in scratch, then per head m = max s, p = 2^(s - m), l = sum p, and
 * o = sum p v (unnormalised) into the task's partial (o[hd], m, l per head). */
static void
dec_task(const dec_plan *P, int64_t b, int64_t g, int64_t ch, float *s)
{
    const dec_view V = dec_view_of(P, b, g, ch);
    const int64_t hd = P->hd, G = P->G, u0 = V.u0, nk = V.nk, rs = V.rs;
    const float *kb = V.kb, *vb = V.vb, *qb = V.qb;
    float *part = V.part;
    int64_t gq, u, d;

    /* scores */
    for (u = 0; u < nk; u++) {
        const float *kr = kb + dec_slot(P, b, u0 + u) * rs;
        if (u + DEC_AHEAD < nk) {
            dec_prefetch_row(kb + dec_slot(P, b, u0 + u + DEC_AHEAD) * rs, hd);
        }
        for (gq = 0; gq < G; gq++) {
            const float dot = dec_dot_generic(qb + gq * hd, kr, hd);
            s[gq * nk + u] = dot * P->scale2;
        }
    }
    /* softmax numerators per head */
    for (gq = 0; gq < G; gq++) {
        float *sg = s + gq * nk, *o = part + gq * (hd + 2);
        float m = -INFINITY, l = 0.0f;
        for (u = 0; u < nk; u++) {
            if (sg[u] > m || sg[u] != sg[u]) {
                m = sg[u]; /* a NaN score propagates */
            }
        }
        for (u = 0; u < nk; u++) {
            sg[u] = m == -INFINITY ? 0.0f : exp2f(sg[u] - m);
            l += sg[u];
        }
        for (d = 0; d < hd; d++) {
            o[d] = 0.0f;
        }
        o[hd] = m;
        o[hd + 1] = l;
    }
    /* o = sum_u p[u] v[u] */
    for (u = 0; u < nk; u++) {
        const float *vr = vb + dec_slot(P, b, u0 + u) * rs;
        if (u + DEC_AHEAD < nk) {
            dec_prefetch_row(vb + dec_slot(P, b, u0 + u + DEC_AHEAD) * rs, hd);
        }
        for (gq = 0; gq < G; gq++) {
            dec_axpy_generic(part + gq * (hd + 2), s[gq * nk + u], vr, hd);
        }
    }
}

#if SAMBA_X86_DISPATCH
/* r lane i = the sum of the lanes of v[i], i < 16: a transpose-and-add network (45 operations
 * for 16 sums instead of 16 horizontal reductions) */
SAMBA_V512 __m512
dec_hsum16(const __m512 *v)
{
    __m512 t[8], w[4], x, y;
    int i;
    for (i = 0; i < 8; i++) { /* per 128-bit quarter: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    for (i = 0; i < 4; i++) { /* quarter q of w[i]: the quarter-q sums of v[4i .. 4i+3] */
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    }
    x = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
    y = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x88), _mm512_shuffle_f32x4(w[2], w[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xdd));
}

#define DEC_HB 6 /* heads per register block of P V (6 x 4 accumulators) */

/* 16 scores (q . k_j, j < 16) of one head: per block of 4 vectors of hd, the query's vectors
 * stay in registers and each key row adds its 4 products (one FMA per 16 products) */
SAMBA_V512 __m512
dec_scores16(const float *qg, const float *const *rows, int64_t nv4)
{
    __m512 acc[16];
    int64_t d0;
    int j;
#pragma GCC unroll 16
    for (j = 0; j < 16; j++) {
        acc[j] = _mm512_setzero_ps();
    }
    for (d0 = 0; d0 < nv4; d0 += 4) {
        const int64_t o = 16 * d0;
        if (nv4 - d0 >= 4) {
            const __m512 q0 = _mm512_loadu_ps(qg + o), q1 = _mm512_loadu_ps(qg + o + 16);
            const __m512 q2 = _mm512_loadu_ps(qg + o + 32), q3 = _mm512_loadu_ps(qg + o + 48);
#pragma GCC unroll 16
            for (j = 0; j < 16; j++) {
                const float *k = rows[j] + o;
                __m512 a = _mm512_fmadd_ps(q0, _mm512_loadu_ps(k), acc[j]);
                a = _mm512_fmadd_ps(q1, _mm512_loadu_ps(k + 16), a);
                a = _mm512_fmadd_ps(q2, _mm512_loadu_ps(k + 32), a);
                acc[j] = _mm512_fmadd_ps(q3, _mm512_loadu_ps(k + 48), a);
            }
        }
        else {
            int64_t v;
            for (v = 0; v < nv4 - d0; v++) {
                const __m512 qv = _mm512_loadu_ps(qg + o + 16 * v);
#pragma GCC unroll 16
                for (j = 0; j < 16; j++) {
                    acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows[j] + o + 16 * v), acc[j]);
                }
            }
        }
    }
    return dec_hsum16(acc);
}

/* o[r] (the NV vectors at o + r (hd + 2)) = sum_u p[r nk + u] v_u[0 .. 16 NV), r < R, over the
 * keys u < nk of a chunk (V rows at vb + slot(u0 + u) rs); R, NV constants after inlining */
SAMBA_V512 void
dec_pv_block(const dec_plan *P, int64_t b, int64_t u0, int64_t nk, const float *p, const float *vb,
             float *o, const int R, const int NV, int64_t pfo)
{
    const int64_t rs = P->Hkv * P->hd, ostride = P->hd + 2;
    __m512 acc[DEC_HB][4];
    int64_t u;
    int r, v;
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            acc[r][v] = _mm512_setzero_ps();
        }
    }
    for (u = 0; u < nk; u++) {
        const float *vr = vb + dec_slot(P, b, u0 + u) * rs;
        __m512 vv[4];
        if (pfo >= 0 && u + DEC_AHEAD < nk) { /* whole cache rows, ahead of the first pass */
            dec_prefetch_row(vb + dec_slot(P, b, u0 + u + DEC_AHEAD) * rs - pfo, rs);
        }
        for (v = 0; v < NV; v++) {
            vv[v] = _mm512_loadu_ps(vr + 16 * v);
        }
        for (r = 0; r < R; r++) {
            const __m512 pr = _mm512_set1_ps(p[r * nk + u]);
            for (v = 0; v < NV; v++) {
                acc[r][v] = _mm512_fmadd_ps(pr, vv[v], acc[r][v]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < NV; v++) {
            _mm512_storeu_ps(o + r * ostride + 16 * v, acc[r][v]);
        }
    }
}

/* runtime (R, NV) -> an unrolled dec_pv_block */
/* clang-format off */
#define DEC_PVC(R_, NV_)                                                                   \
    case (R_) * 8 + (NV_):                                                                 \
        dec_pv_block(P, b, u0, nk, p, vb, o, (R_), (NV_), pfo);                            \
        break;
/* clang-format on */
SAMBA_TARGET_AVX512 static void
dec_pv(const dec_plan *P, int64_t b, int64_t u0, int64_t nk, const float *p, const float *vb,
       float *o, int R, int NV, int64_t pfo)
{
    switch (R * 8 + NV) {
        DEC_PVC(1, 1) DEC_PVC(1, 2) DEC_PVC(1, 3) DEC_PVC(1, 4)
        DEC_PVC(2, 1) DEC_PVC(2, 2) DEC_PVC(2, 3) DEC_PVC(2, 4)
        DEC_PVC(3, 1) DEC_PVC(3, 2) DEC_PVC(3, 3) DEC_PVC(3, 4)
        DEC_PVC(4, 1) DEC_PVC(4, 2) DEC_PVC(4, 3) DEC_PVC(4, 4)
        DEC_PVC(5, 1) DEC_PVC(5, 2) DEC_PVC(5, 3) DEC_PVC(5, 4)
        DEC_PVC(6, 1) DEC_PVC(6, 2) DEC_PVC(6, 3) DEC_PVC(6, 4)
    default: break;
    }
}
#undef DEC_PVC

/* dec_task for AVX-512 (hd % 16 == 0): scores 16 keys x one head at a time (one FMA per 16
 * products, the 16 dot products reduced together), the softmax numerators 16 at a time,
 * P V in register blocks of up to 6 heads x 64 floats of hd, each V row loaded once per block. */
SAMBA_TARGET_AVX512 static void
dec_task_avx512(const dec_plan *P, int64_t b, int64_t g, int64_t ch, float *s)
{
    const dec_view V = dec_view_of(P, b, g, ch);
    const int64_t hd = P->hd, G = P->G, nv4 = hd / 16, u0 = V.u0, nk = V.nk, rs = V.rs;
    const float *kb = V.kb, *vb = V.vb, *qb = V.qb;
    float *part = V.part;
    /* kv head 0 prefetches whole cache rows (all kv heads, contiguous), later ones find them */
    const int64_t pfo = g == 0 ? 0 : g * hd, pfn = g == 0 ? rs : hd;
    const float *rows[16];
    int64_t gq, u, j, d0;

    /* scores s (G, nk); past the chunk's end the rows repeat its first key (stored nowhere) */
    for (u = 0; u < nk; u += 16) {
        const int nb = (int)(nk - u < 16 ? nk - u : 16);
        const __mmask16 keep = (__mmask16)((1u << nb) - 1u);
        for (j = 0; j < 16; j++) {
            rows[j] = kb + dec_slot(P, b, u0 + u + (j < nb ? j : 0)) * rs;
            if (j < nb && u + 16 + j < nk) {
                dec_prefetch_row(kb + dec_slot(P, b, u0 + u + 16 + j) * rs - pfo, pfn);
            }
        }
        for (gq = 0; gq < G; gq++) {
            _mm512_mask_storeu_ps(
                s + gq * nk + u, keep,
                _mm512_mul_ps(dec_scores16(qb + gq * hd, rows, nv4), _mm512_set1_ps(P->scale2)));
        }
    }
    /* per head: m = max s (NaN if any score is NaN), p = 2^(s - m), l = sum p */
    for (gq = 0; gq < G; gq++) {
        float *sg = s + gq * nk, *o = part + gq * (hd + 2);
        __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
        __mmask16 nan = 0;
        float m;
        for (u = 0; u < nk; u += 16) {
            const __mmask16 keep = (__mmask16)(nk - u >= 16 ? 0xffffu : (1u << (nk - u)) - 1u);
            const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), keep, sg + u);
            nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
            mx = _mm512_max_ps(mx, x);
        }
        m = nan ? NAN : _mm512_reduce_max_ps(mx);
        if (m == -INFINITY) { /* no finite score: every p is 0 */
            for (u = 0; u < nk; u++) {
                sg[u] = 0.0f;
            }
        }
        else {
            const __m512 mv = _mm512_set1_ps(m);
            for (u = 0; u < nk; u += 16) {
                const __mmask16 keep =
                    (__mmask16)(nk - u >= 16 ? 0xffffu : (1u << (nk - u)) - 1u);
                const __m512 p = _mm512_maskz_mov_ps(
                    keep, samba_v512_exp2(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, sg + u), mv)));
                _mm512_mask_storeu_ps(sg + u, keep, p);
                sum = _mm512_add_ps(sum, p);
            }
        }
        o[hd] = m;
        o[hd + 1] = _mm512_reduce_add_ps(sum);
    }
    /* o = sum_u p[u] v[u]: blocks of up to 6 heads x 4 vectors of hd */
    for (gq = 0; gq < G; gq += DEC_HB) {
        const int R = (int)(G - gq < DEC_HB ? G - gq : DEC_HB);
        for (d0 = 0; d0 < nv4; d0 += 4) {
            const int NV = (int)(nv4 - d0 < 4 ? nv4 - d0 : 4);
            dec_pv(P, b, u0, nk, s + gq * nk, vb + 16 * d0, part + gq * (hd + 2) + 16 * d0, R,
                   NV, g == 0 && gq == 0 && d0 == 0 ? g * hd + 16 * d0 : -1);
        }
    }
}
#endif /* SAMBA_X86_DISPATCH */

/* out[b, h] = merge of the chunk partials of (b, h). */
static void
dec_merge(const dec_plan *P, int64_t b, int64_t h, float *out)
{
    const int64_t hd = P->hd, G = P->G, g = h / G, gq = h % G;
    const int64_t nch_b = (P->nv[b] + DEC_CHUNK - 1) / DEC_CHUNK;
    const int64_t stride = G * (hd + 2);
    const float *base = P->part + (b * P->Hkv + g) * P->nch * stride + gq * (hd + 2);
    float *dst = out + (b * P->H + h) * hd;
    float mx = -INFINITY, l = 0.0f, inv;
    int64_t ch, d;

    for (ch = 0; ch < nch_b; ch++) {
        const float mc = base[ch * stride + hd];
        if (mc > mx || mc != mc) {
            mx = mc;
        }
    }
    if (mx == -INFINITY) {
        mx = 0.0f;
    }
    for (d = 0; d < hd; d++) {
        dst[d] = 0.0f;
    }
    for (ch = 0; ch < nch_b; ch++) {
        const float *pc = base + ch * stride;
        const float w = exp2f(pc[hd] - mx);
        l += w * pc[hd + 1];
        for (d = 0; d < hd; d++) {
            dst[d] += w * pc[d];
        }
    }
    inv = 1.0f / l;
    for (d = 0; d < hd; d++) {
        dst[d] *= inv;
    }
}

samba_status
samba_attn_decode(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                  int64_t capacity, const float *q, const float *k_cache, const float *v_cache,
                  const int64_t *pos, const int64_t *n_valid, float softmax_scale, float *out,
                  const samba_ctx *ctx)
{
    dec_plan P;
    int64_t b, maxn = 0, T, t, step;
    int nth, avx = 0;
    float *scratch;

    if (batch < 0 || nheads < 0 || nheads_kv < 0 || headdim < 0 || capacity < 0) {
        return SAMBA_ERR_ARG;
    }
    if (batch == 0 || nheads == 0 || headdim == 0) {
        return SAMBA_OK;
    }
    if (nheads_kv == 0 || nheads % nheads_kv != 0 || capacity == 0) {
        return SAMBA_ERR_ARG;
    }
    if (q == NULL || k_cache == NULL || v_cache == NULL || pos == NULL || n_valid == NULL ||
        out == NULL) {
        return SAMBA_ERR_ARG;
    }
    for (b = 0; b < batch; b++) {
        if (n_valid[b] < 1 || n_valid[b] > capacity || pos[b] < 0) {
            return SAMBA_ERR_ARG;
        }
        maxn = n_valid[b] > maxn ? n_valid[b] : maxn;
    }
    P.B = batch;
    P.H = nheads;
    P.Hkv = nheads_kv;
    P.hd = headdim;
    P.C = capacity;
    P.G = nheads / nheads_kv;
    P.nch = (maxn + DEC_CHUNK - 1) / DEC_CHUNK;
    P.scale2 = (float)((double)softmax_scale * DEC_LOG2E);
    P.q = q;
    P.kc = k_cache;
    P.vc = v_cache;
    P.pos = pos;
    P.nv = n_valid;
    P.part = (float *)malloc(sizeof(float) * (size_t)(batch * nheads * P.nch * (headdim + 2)));
    if (P.part == NULL) {
        return SAMBA_ERR_ALLOC;
    }
#if SAMBA_X86_DISPATCH
    avx = headdim % 16 == 0 && samba_isa() >= SAMBA_ISA_AVX512;
#endif
    nth = samba_ctx_threads(ctx);
    nth = nth < 1 ? 1 : nth;
    T = batch * P.nch; /* a task: one chunk of one batch row, all its kv heads in turn */
    scratch = (float *)malloc(sizeof(float) * (size_t)(nth * P.G * DEC_CHUNK));
    if (scratch == NULL) {
        free(P.part);
        return SAMBA_ERR_ALLOC;
    }
    /* rounds of ~64 MiB of cache reads between stop polls */
    step = (int64_t)((64 << 20) / (DEC_CHUNK * 8 * headdim * nheads_kv)) + nth;
    for (t = 0; t < T; t += step) {
        const int64_t t_end = t + step < T ? t + step : T;
        int64_t i;
        if (samba_ctx_stop(ctx)) {
            free(P.part);
            free(scratch);
            return SAMBA_ERR_INTERRUPTED;
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
#endif
        for (i = t; i < t_end; i++) {
            const int64_t ch = i % P.nch, bb = i / P.nch;
            int64_t g;
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            for (g = 0; g < P.Hkv && ch * DEC_CHUNK < P.nv[bb]; g++) {
                float *s = scratch + (size_t)tid * P.G * DEC_CHUNK;
#if SAMBA_X86_DISPATCH
                if (avx) {
                    dec_task_avx512(&P, bb, g, ch, s);
                    continue;
                }
#endif
                dec_task(&P, bb, g, ch, s);
            }
        }
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nth)
#endif
    for (t = 0; t < batch * nheads; t++) {
        dec_merge(&P, t / nheads, t % nheads, out);
    }
    free(P.part);
    free(scratch);
    return SAMBA_OK;
}
