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

/* Partial attention of the G heads of kv head g over logical keys [u0, u1) of batch b:
 * scores s (G, nk) in scratch, then per head m = max s, p = 2^(s - m), l = sum p, and
 * o = sum p v (unnormalised) into the task's partial (o[hd], m, l per head). */
static void
dec_task(const dec_plan *P, int64_t b, int64_t g, int64_t ch, int avx, float *s)
{
    const int64_t hd = P->hd, G = P->G;
    const int64_t n = P->nv[b];
    const int64_t u0 = ch * DEC_CHUNK;
    const int64_t u1 = u0 + DEC_CHUNK < n ? u0 + DEC_CHUNK : n, nk = u1 - u0;
    const int64_t rs = P->Hkv * hd;
    const float *kb = P->kc + (b * P->C * P->Hkv + g) * hd;
    const float *vb = P->vc + (b * P->C * P->Hkv + g) * hd;
    const float *qb = P->q + (b * P->H + g * G) * hd;
    float *part = P->part + ((b * P->Hkv + g) * P->nch + ch) * G * (hd + 2);
    int64_t gq, u, d;

    (void)avx;
    /* scores */
    for (u = 0; u < nk; u++) {
        const float *kr = kb + dec_slot(P, b, u0 + u) * rs;
        if (u + DEC_AHEAD < nk) {
            dec_prefetch_row(kb + dec_slot(P, b, u0 + u + DEC_AHEAD) * rs, hd);
        }
        for (gq = 0; gq < G; gq++) {
#if SAMBA_X86_DISPATCH
            const float dot =
                avx ? samba_v512_dot(qb + gq * hd, kr, hd) : dec_dot_generic(qb + gq * hd, kr, hd);
#else
            const float dot = dec_dot_generic(qb + gq * hd, kr, hd);
#endif
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
#if SAMBA_X86_DISPATCH
            if (avx) {
                samba_v512_axpy(part + gq * (hd + 2), s[gq * nk + u], vr, hd);
                continue;
            }
#endif
            dec_axpy_generic(part + gq * (hd + 2), s[gq * nk + u], vr, hd);
        }
    }
}

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
    T = batch * nheads_kv * P.nch;
    scratch = (float *)malloc(sizeof(float) * (size_t)(nth * P.G * DEC_CHUNK));
    if (scratch == NULL) {
        free(P.part);
        return SAMBA_ERR_ALLOC;
    }
    /* rounds of ~64 MiB of cache reads between stop polls */
    step = (int64_t)((64 << 20) / (DEC_CHUNK * 8 * headdim)) + nth;
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
            const int64_t ch = i % P.nch, bg = i / P.nch, bb = bg / P.Hkv;
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            if (ch * DEC_CHUNK < P.nv[bb]) {
                dec_task(&P, bb, bg % P.Hkv, ch, avx, scratch + (size_t)tid * P.G * DEC_CHUNK);
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
