/*
 * conv.c - depthwise causal conv1d (Mamba's short conv), width 2..4, prefill and one step.
 *
 * Row r = (b, d) of x (B, D, L) is convolved with weight[d] (W taps, the last one on the
 * current token) over the padded sequence [initial_states[b, d] (W-1) | x[b, d] (L)]:
 *   y[t] = bias[d] + sum_{k<W} weight[d, k] * xpad[t - (W-1) + k];  y = silu(y) if asked.
 *
 * Work is split into chunks of rows x time (about SAMBA_CONV_CHUNK elements each); each
 * chunk is one OpenMP loop over its rows, and ctx is polled between chunks.
 */
#include "samba.h"
#include "simd.h"

#include <stdlib.h>

#define SAMBA_CONV_CHUNK ((int64_t)1 << 23)   /* elements per stop poll */
#define SAMBA_CONV_TCHUNK ((int64_t)1 << 16)  /* longest time segment of one row in a chunk */
#define SAMBA_CONV_PAR_MIN ((int64_t)1 << 18) /* fewer elements: stay on one thread */

/* One row segment y[t0, t1) (t0 < t1 <= L). x, y point at the row start; init (W-1) or
 * NULL; w (W). */
SAMBA_ALWAYS_INLINE void
conv_row_body(const float *x, const float *init, const float *w, float bias, int64_t width,
              int silu, int64_t t0, int64_t t1, float *y)
{
    int64_t t = t0;
    const int64_t wm1 = width - 1;

    /* Head: taps that reach into the initial state (t < W-1). */
    for (; t < t1 && t < wm1; t++) {
        float acc = bias;
        for (int64_t k = 0; k < width; k++) {
            int64_t s = t - wm1 + k;
            float xv = s >= 0 ? x[s] : (init != NULL ? init[wm1 + s] : 0.0f);
            acc += w[k] * xv;
        }
        y[t] = acc;
    }
    /* Body: all taps inside x. */
    if (width == 4) {
        const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
        for (; t < t1; t++) {
            y[t] = bias + w0 * x[t - 3] + w1 * x[t - 2] + w2 * x[t - 1] + w3 * x[t];
        }
    } else if (width == 3) {
        const float w0 = w[0], w1 = w[1], w2 = w[2];
        for (; t < t1; t++) {
            y[t] = bias + w0 * x[t - 2] + w1 * x[t - 1] + w2 * x[t];
        }
    } else {
        const float w0 = w[0], w1 = w[1];
        for (; t < t1; t++) {
            y[t] = bias + w0 * x[t - 1] + w1 * x[t];
        }
    }
    if (silu) {
        for (t = t0; t < t1; t++) {
            y[t] = samba_siluf(y[t]);
        }
    }
}

typedef struct conv_job {
    int64_t dim, seqlen, width;
    const float *x, *weight, *bias, *init;
    const int64_t *seq; /* (B, L) sequence ids, or NULL */
    int silu;
    float *y;
} conv_job;

typedef void (*conv_row_fn)(const conv_job *, int64_t, int64_t, int64_t);

/* Row r, time [t0, t1). */
SAMBA_ALWAYS_INLINE void
conv_row_wrap(const conv_job *j, int64_t r, int64_t t0, int64_t t1)
{
    const int64_t d = r % j->dim;
    const int64_t wm1 = j->width - 1;
    conv_row_body(j->x + r * j->seqlen, j->init != NULL ? j->init + r * wm1 : NULL,
                  j->weight + d * j->width, j->bias != NULL ? j->bias[d] : 0.0f, j->width, j->silu,
                  t0, t1, j->y + r * j->seqlen);
}

SAMBA_VEC_FN static void
conv_row_c(const conv_job *j, int64_t r, int64_t t0, int64_t t1)
{
    conv_row_wrap(j, r, t0, t1);
}

#if SAMBA_X86_DISPATCH
SAMBA_VEC_FN SAMBA_TARGET_AVX2 static void
conv_row_avx2(const conv_job *j, int64_t r, int64_t t0, int64_t t1)
{
    conv_row_wrap(j, r, t0, t1);
}

/* The body (every tap inside x) 16 steps at a time with explicit AVX-512: the taps as
 * unaligned loads at t - W + 1 .. t, SiLU (samba_v512_silu) in the same pass; the head (taps
 * in the initial state) and the tail take conv_row_body. (The compiler's vectorisation of
 * conv_row_body with a second SiLU pass ran at 0.55x a copy's bandwidth here, this at 0.75x.) */
SAMBA_TARGET_AVX512 static void
conv_row_avx512(const conv_job *j, int64_t r, int64_t t0, int64_t t1)
{
    const int64_t W = j->width, wm1 = W - 1, d = r % j->dim;
    const float *x = j->x + r * j->seqlen, *w = j->weight + d * W;
    float *y = j->y + r * j->seqlen;
    const int64_t b0 = t0 > wm1 ? t0 : wm1; /* first step of the vector body */
    int64_t t = b0;
    if (W > 4 || t1 - b0 < 16) {
        conv_row_wrap(j, r, t0, t1);
        return;
    }
    if (b0 > t0) {
        conv_row_wrap(j, r, t0, b0);
    }
    {
        const __m512 bias = _mm512_set1_ps(j->bias != NULL ? j->bias[d] : 0.0f);
        const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(w[1]);
        const __m512 w2 = _mm512_set1_ps(W > 2 ? w[2] : 0.0f);
        const __m512 w3 = _mm512_set1_ps(W > 3 ? w[3] : 0.0f);
        for (; t + 16 <= t1; t += 16) {
            const float *xt = x + t - wm1; /* tap k reads x[t - wm1 + k] */
            __m512 acc = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt), bias);
            acc = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 1), acc);
            if (W > 2) {
                acc = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xt + 2), acc);
            }
            if (W > 3) {
                acc = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xt + 3), acc);
            }
            _mm512_storeu_ps(y + t, j->silu ? samba_v512_silu(acc) : acc);
        }
    }
    if (t < t1) {
        conv_row_wrap(j, r, t, t1);
    }
}
#endif

/* With sequence ids: tap k of y[t] reads x[s], s = t - (W-1) + k, only when s >= 0 and
 * seq[s] == seq[t] (the taps in the same order as conv_row_body's); a negative id marks
 * padding, whose output is 0. */
static void
conv_row_seq(const conv_job *j, int64_t r, int64_t t0, int64_t t1)
{
    const int64_t W = j->width, d = r % j->dim;
    const float *x = j->x + r * j->seqlen, *w = j->weight + d * W;
    const int64_t *sid = j->seq + (r / j->dim) * j->seqlen;
    const float bias = j->bias != NULL ? j->bias[d] : 0.0f;
    float *y = j->y + r * j->seqlen;
    int64_t t, k;
    for (t = t0; t < t1; t++) {
        float acc = bias;
        if (sid[t] < 0) { /* padding */
            y[t] = 0.0f;
            continue;
        }
        for (k = 0; k < W; k++) {
            const int64_t s = t - (W - 1) + k;
            if (s >= 0 && sid[s] == sid[t]) {
                acc += w[k] * x[s];
            }
        }
        y[t] = j->silu ? samba_siluf(acc) : acc;
    }
}

static conv_row_fn
conv_row_pick(void)
{
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: return conv_row_avx512;
    case SAMBA_ISA_AVX2: return conv_row_avx2;
    default: break;
    }
#endif
    return conv_row_c;
}

/* Rows [r0, r1), time [t0, t1): one OpenMP loop. */
static void
conv_chunk(conv_row_fn fn, const conv_job *j, int64_t r0, int64_t r1, int64_t t0, int64_t t1,
           int nt)
{
    int64_t r;
#pragma omp parallel for num_threads(nt) schedule(guided) if (nt > 1)
    for (r = r0; r < r1; r++) {
        fn(j, r, t0, t1);
    }
}

static samba_status
conv_fwd(int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const float *x,
         const float *weight, const float *bias, const float *initial_states, const int64_t *seq,
         float *final_states, int silu, float *y, const samba_ctx *ctx)
{
    const int64_t rows = batch * dim;
    const int64_t wm1 = width - 1;
    conv_job job;
    conv_row_fn fn;
    int64_t tchunk, rchunk, r0, t0;
    int threads, polled = 0;

    if (batch < 0 || dim < 0 || seqlen < 0 || width < 2 || width > 4) {
        return SAMBA_ERR_ARG;
    }
    if (rows > 0 && (weight == NULL || (seqlen > 0 && (x == NULL || y == NULL)))) {
        return SAMBA_ERR_ARG;
    }
    job.dim = dim;
    job.seqlen = seqlen;
    job.width = width;
    job.x = x;
    job.weight = weight;
    job.bias = bias;
    job.init = initial_states;
    job.seq = seq;
    job.silu = silu != 0;
    job.y = y;
    fn = seq != NULL ? conv_row_seq : conv_row_pick();
    threads = samba_ctx_threads(ctx);

    if (rows > 0 && seqlen > 0) {
        tchunk = seqlen < SAMBA_CONV_TCHUNK ? seqlen : SAMBA_CONV_TCHUNK;
        rchunk = SAMBA_CONV_CHUNK / tchunk;
        if (rchunk < 1) {
            rchunk = 1;
        }
        for (r0 = 0; r0 < rows; r0 += rchunk) {
            const int64_t r1 = r0 + rchunk < rows ? r0 + rchunk : rows;
            for (t0 = 0; t0 < seqlen; t0 += tchunk) {
                const int64_t t1 = t0 + tchunk < seqlen ? t0 + tchunk : seqlen;
                int nt = threads;
                if ((r1 - r0) * (t1 - t0) < SAMBA_CONV_PAR_MIN) {
                    nt = 1;
                }
                if (nt > r1 - r0) {
                    nt = (int)(r1 - r0);
                }
                if (polled && samba_ctx_stop(ctx)) {
                    return SAMBA_ERR_INTERRUPTED;
                }
                polled = 1;
                conv_chunk(fn, &job, r0, r1, t0, t1, nt);
            }
        }
    }

    /* final_states[r, i] = xpad[seqlen - (W-1) + i]: the last W-1 inputs, older first.
     * Ascending i reads init at index >= i, so final_states may alias initial_states. */
    if (final_states != NULL && rows > 0) {
        int64_t r;
        for (r = 0; r < rows; r++) {
            const float *xr = x != NULL ? x + r * seqlen : NULL;
            const float *ir = initial_states != NULL ? initial_states + r * wm1 : NULL;
            float *fr = final_states + r * wm1;
            int64_t i;
            for (i = 0; i < wm1; i++) {
                const int64_t s = seqlen - wm1 + i;
                fr[i] = s >= 0 ? xr[s] : (ir != NULL ? ir[wm1 + s] : 0.0f);
            }
        }
    }
    return SAMBA_OK;
}

samba_status
samba_conv1d_fwd(int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const float *x,
                 const float *weight, const float *bias, const float *initial_states,
                 float *final_states, int silu, float *y, const samba_ctx *ctx)
{
    return conv_fwd(batch, dim, seqlen, width, x, weight, bias, initial_states, NULL,
                    final_states, silu, y, ctx);
}

samba_status
samba_conv1d_fwd_seq(int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const float *x,
                     const float *weight, const float *bias, const int64_t *seq_idx, int silu,
                     float *y, const samba_ctx *ctx)
{
    if (batch * dim > 0 && seqlen > 0 && seq_idx == NULL) {
        return SAMBA_ERR_ARG;
    }
    return conv_fwd(batch, dim, seqlen, width, x, weight, bias, NULL, seq_idx, NULL, silu, y,
                    ctx);
}

/* One decode step for rows [r0, r1). */
SAMBA_VEC_FN static void
conv_step_rows(int64_t r0, int64_t r1, int64_t dim, int64_t width, const float *x, float *state,
               const float *weight, const float *bias, int silu, float *y, int nt)
{
    int64_t r;
    const int64_t wm1 = width - 1;

#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (r = r0; r < r1; r++) {
        const int64_t d = r % dim;
        const float *w = weight + d * width;
        float *s = state + r * wm1;
        const float xv = x[r];
        float acc = bias != NULL ? bias[d] : 0.0f;
        int64_t k;
        for (k = 0; k < wm1; k++) {
            acc += w[k] * s[k];
        }
        acc += w[wm1] * xv;
        for (k = 0; k + 1 < wm1; k++) {
            s[k] = s[k + 1];
        }
        s[wm1 - 1] = xv;
        y[r] = silu ? samba_siluf(acc) : acc;
    }
}

samba_status
samba_conv1d_step(int64_t batch, int64_t dim, int64_t width, const float *x, float *conv_state,
                  const float *weight, const float *bias, int silu, float *y, const samba_ctx *ctx)
{
    const int64_t rows = batch * dim;
    const int64_t rchunk = SAMBA_CONV_CHUNK / 4;
    int threads = samba_ctx_threads(ctx);
    int64_t r0;

    if (batch < 0 || dim < 0 || width < 2 || width > 4) {
        return SAMBA_ERR_ARG;
    }
    if (rows == 0) {
        return SAMBA_OK;
    }
    if (x == NULL || conv_state == NULL || weight == NULL || y == NULL) {
        return SAMBA_ERR_ARG;
    }
    for (r0 = 0; r0 < rows; r0 += rchunk) {
        const int64_t r1 = r0 + rchunk < rows ? r0 + rchunk : rows;
        int nt = (r1 - r0) * width < SAMBA_CONV_PAR_MIN ? 1 : threads;
        if (r0 > 0 && samba_ctx_stop(ctx)) {
            return SAMBA_ERR_INTERRUPTED;
        }
        conv_step_rows(r0, r1, dim, width, x, conv_state, weight, bias, silu != 0, y, nt);
    }
    return SAMBA_OK;
}
