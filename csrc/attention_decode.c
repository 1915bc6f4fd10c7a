/*
 * attention_decode.c - one-token decode attention over a ring-buffer KV cache (GQA).
 *
 * q (B, H, hd); k_cache, v_cache (B, C, Hkv, hd); pos, n_valid (B); out (B, H, hd).
 * Batch b attends to the n = n_valid[b] newest keys: logical key u = 0 .. n-1 (oldest first)
 * sits in slot (pos[b] - n + 1 + u) mod C, so the newest (u = n-1) is in slot pos[b] mod C.
 *
 * Split-K ("flash-decoding"): a task is (b, kv head g, chunk of DEC_CHUNK logical keys) and
 * serves the G = H / Hkv query heads of g, each K/V row loaded once for all of them.  It
 * writes a partial (max m, sum l, unnormalised o) per head in base 2; a second pass merges
 * the chunks of each (b, h).  Memory-bound: one pass over the valid part of the cache.
 */
#include "samba.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define SAMBA_DEC_AVX512 1
#include <immintrin.h>
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

#ifdef SAMBA_DEC_AVX512
__attribute__((target("avx512f,fma"))) static float
dec_dot_avx512(const float *x, const float *y, int64_t n) /* n % 16 == 0 */
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= n; d += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + d + 16), _mm512_loadu_ps(y + d + 16), a1);
    }
    for (; d < n; d += 16) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* o = o * alpha + p * v over n (n % 16 == 0) */
__attribute__((target("avx512f,fma"))) static void
dec_axpby_avx512(float *o, float alpha, float p, const float *v, int64_t n)
{
    const __m512 a = _mm512_set1_ps(alpha), pv = _mm512_set1_ps(p);
    int64_t d;
    for (d = 0; d < n; d += 16) {
        _mm512_storeu_ps(o + d, _mm512_fmadd_ps(pv, _mm512_loadu_ps(v + d),
                                                _mm512_mul_ps(a, _mm512_loadu_ps(o + d))));
    }
}
#endif

static void
dec_axpby_generic(float *o, float alpha, float p, const float *v, int64_t n)
{
    int64_t d;
    for (d = 0; d < n; d++) {
        o[d] = o[d] * alpha + p * v[d];
    }
}

/* Partial attention of the G heads of kv head g over logical keys [u0, u1) of batch b,
 * as a single-pass online softmax (keys stay in their cache rows). */
static void
dec_task(const dec_plan *P, int64_t b, int64_t g, int64_t ch, int avx)
{
    const int64_t hd = P->hd, G = P->G;
    const int64_t n = P->nv[b];
    const int64_t u0 = ch * DEC_CHUNK;
    const int64_t u1 = u0 + DEC_CHUNK < n ? u0 + DEC_CHUNK : n;
    float *part = P->part + ((b * P->Hkv + g) * P->nch + ch) * G * (hd + 2);
    int64_t gq, u, d;

    for (gq = 0; gq < G; gq++) {
        float *o = part + gq * (hd + 2);
        for (d = 0; d < hd; d++) {
            o[d] = 0.0f;
        }
        o[hd] = -INFINITY; /* m */
        o[hd + 1] = 0.0f;  /* l */
    }
    for (u = u0; u < u1; u++) {
        const int64_t slot = dec_slot(P, b, u);
        const float *kr = P->kc + ((b * P->C + slot) * P->Hkv + g) * hd;
        const float *vr = P->vc + ((b * P->C + slot) * P->Hkv + g) * hd;
        for (gq = 0; gq < G; gq++) {
            const float *qr = P->q + (b * P->H + g * G + gq) * hd;
            float *o = part + gq * (hd + 2);
            float s, mn, alpha, p;
#ifdef SAMBA_DEC_AVX512
            s = avx ? dec_dot_avx512(qr, kr, hd) : dec_dot_generic(qr, kr, hd);
#else
            s = dec_dot_generic(qr, kr, hd);
#endif
            s *= P->scale2;
            mn = (s > o[hd] || s != s) ? s : o[hd]; /* a NaN score propagates */
            if (mn == -INFINITY) {
                continue; /* only -inf scores so far: nothing to add */
            }
            alpha = exp2f(o[hd] - mn);
            p = exp2f(s - mn);
            o[hd] = mn;
            o[hd + 1] = o[hd + 1] * alpha + p;
#ifdef SAMBA_DEC_AVX512
            if (avx) {
                dec_axpby_avx512(o, alpha, p, vr, hd);
                continue;
            }
#endif
            dec_axpby_generic(o, alpha, p, vr, hd);
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
                  int64_t capacity, const float *q, const float *k_cache,
                  const float *v_cache, const int64_t *pos, const int64_t *n_valid,
                  float softmax_scale, float *out, const samba_ctx *ctx)
{
    dec_plan P;
    int64_t b, maxn = 0, T, t, step;
    int nth, avx = 0;

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
#ifdef SAMBA_DEC_AVX512
    avx = headdim % 16 == 0 && __builtin_cpu_supports("avx512f");
#endif
    nth = samba_ctx_threads(ctx);
    T = batch * nheads_kv * P.nch;
    /* rounds of ~2^24 (key, head) pairs between stop polls */
    step = (int64_t)(16777216 / (DEC_CHUNK * P.G * (headdim > 0 ? headdim : 1) / 64 + 1)) + 1;
    for (t = 0; t < T; t += step) {
        const int64_t t_end = t + step < T ? t + step : T;
        int64_t i;
        if (samba_ctx_stop(ctx)) {
            free(P.part);
            return SAMBA_ERR_INTERRUPTED;
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
#endif
        for (i = t; i < t_end; i++) {
            const int64_t ch = i % P.nch, bg = i / P.nch, bb = bg / P.Hkv;
            if (ch * DEC_CHUNK < P.nv[bb]) {
                dec_task(&P, bb, bg % P.Hkv, ch, avx);
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
    (void)nth;
    return SAMBA_OK;
}
