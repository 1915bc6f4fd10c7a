/*
 * scan_bwd.c - backward pass of the selective scan (scan.c), fp32 in, fp32 accumulate.
 *
 * Forward, per batch b, channel d (group g = d / (dim/ngroups)), step t, state n:
 *   x_t  = delta_t + delta_bias;  dt_t = softplus(x_t) (threshold 20) or x_t
 *   e_t  = exp(dt_t A[n]);  h_t = e_t h_{t-1} + dt_t B_t[n] u_t
 *   y0_t = sum_n h_t[n] C_t[n] + D u_t;  y_t = y0_t silu(z_t)  (or y0_t without z)
 * Backward, with g_t = dL/dh_t (the adjoint state) running from t = L-1 down to 0:
 *   dy0_t = dy_t silu(z_t);  dz_t = dy_t y0_t silu'(z_t)
 *   g_t   = dy0_t C_t + e_{t+1} g_{t+1}           (g_L-1 starts from dfinal_state or 0)
 *   dC_t += dy0_t h_t;  dB_t += g_t dt_t u_t;  dA += g_t e_t h_{t-1} dt_t
 *   ddt_t = sum_n g_t (e_t h_{t-1} A + B_t u_t);  du_t = D dy0_t + dt_t sum_n g_t B_t
 *   ddelta_t = ddt_t sigmoid(x_t) (softplus, x_t <= 20) else ddt_t;  ddelta_bias += ddelta_t
 *   dD += dy0_t u_t;  dinitial_state = e_0 g_0
 *
 * The states h_{t-1} are needed in reverse order. As mamba's selective_scan_bwd does, they
 * are recomputed per time chunk instead of being stored for all L steps: a first pass keeps
 * only the state at the start of every chunk (checkpoints), the backward pass walks the
 * chunks in reverse, recomputes the chunk's T states from its checkpoint and runs the
 * adjoint recurrence over them. Memory: channels_per_group x n_chunks x N checkpoints plus
 * 3 T x N floats per thread.
 *
 * Work: for each (batch, group) the group's channels are split statically over the threads.
 * dB and dC (shared by the channels of a group) are summed per thread into private (T, N)
 * tiles and reduced in thread order after each chunk, so results do not depend on
 * scheduling. dA, dD and ddelta_bias are written by the one thread that owns the channel;
 * batches run one after another, so they need no reduction either. ctx is polled between
 * chunks on the calling thread.
 */
#include "samba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h" /* last: it sets a GCC optimize pragma for the functions below */

#define SBWD_MIN_CHUNK 64
#define SBWD_MAX_CHUNKS 256
#define SBWD_POLL_WORK ((int64_t)1 << 22) /* state updates between stop polls */
#define SBWD_PAR_MIN ((int64_t)1 << 15)   /* fewer state updates per group: one thread */

typedef struct sbwd_ws {
    float *h;   /* (T + 1, N): h_{t0-1} .. h_{t1-1} of the chunk being processed */
    float *ex;  /* (T, N): e_t */
    float *dt;  /* (T) */
    float *sx;  /* (T): sigmoid(delta + bias), the softplus derivative */
    float *sz;  /* (T): sigmoid(z) */
    float *dB;  /* (T, N) private tile */
    float *dC;  /* (T, N) private tile */
    float *dA;  /* (N) */
} sbwd_ws;

/* sigmoid from e = exp(-|x|) (never overflows; vectorisable, simd.h's exp) */
SAMBA_ALWAYS_INLINE float
sbwd_sigmoid(float x)
{
    const float e = samba_expf(-fabsf(x));
    const float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

/* dt (and, under softplus, sx = its derivative) of channel d at row offset o, steps
 * [t0, t1) -> dt[0 .. t1-t0), sx[0 .. t1-t0) */
SAMBA_ALWAYS_INLINE void
sbwd_dt(const samba_scan_bwd_args *a, int64_t d, int64_t o, int64_t t0, int64_t t1,
        float *restrict dt, float *restrict sx)
{
    const float bias = a->delta_bias != NULL ? a->delta_bias[d] : 0.0f;
    const float *restrict delta = a->delta + o + t0;
    const int64_t n = t1 - t0;
    int64_t t;
    if (a->delta_softplus) {
        for (t = 0; t < n; t++) {
            const float x = delta[t] + bias;
            dt[t] = samba_softplusf(x); /* the forward's softplus (simd.h) */
            sx[t] = x <= 20.0f ? sbwd_sigmoid(x) : 1.0f;
        }
    }
    else {
        for (t = 0; t < n; t++) {
            dt[t] = delta[t] + bias;
        }
    }
}

/* Recompute steps [t0, t1) of channel d (row offset o): h (len + 1, N) holds h_{t0-1} in
 * row 0 on entry; rows 1..len get h_{t0} .. h_{t1-1}, ex (len, N) e_t, dt (len) dt_t.
 * bt (len, N): B of the chunk, transposed. */
SAMBA_ALWAYS_INLINE void
sbwd_recompute(const samba_scan_bwd_args *a, int64_t d, int64_t o, int64_t t0, int64_t t1,
               const float *restrict bt, float *restrict h, float *restrict ex,
               float *restrict dt, float *restrict sx)
{
    const int64_t N = a->dstate;
    const float *restrict Ad = a->A + d * N;
    int64_t tt, n;

    sbwd_dt(a, d, o, t0, t1, dt, sx);
    for (tt = 0; tt < t1 - t0; tt++) {
        const float dtv = dt[tt];
        const float dtu = dtv * a->u[o + t0 + tt];
        const float *restrict Bt = bt + tt * N;
        const float *restrict hprev = h + tt * N;
        float *restrict hnew = h + (tt + 1) * N;
        float *restrict e = ex + tt * N;
#pragma omp simd
        for (n = 0; n < N; n++) {
            e[n] = samba_expf(dtv * Ad[n]);
            hnew[n] = e[n] * hprev[n] + dtu * Bt[n];
        }
    }
}

/* Backward over steps [t0, t1) of channel d, batch b; ws->h / ws->ex / ws->dt hold the
 * chunk's recomputed forward; gn (N) is the adjoint carried in from step t1 (e_{t1} g_{t1})
 * and is left as e_{t0} g_{t0}. */
SAMBA_ALWAYS_INLINE void
sbwd_backward(const samba_scan_bwd_args *a, int64_t d, int64_t o, int64_t t0, int64_t t1,
              const float *restrict bt, const float *restrict ct, float *restrict gn,
              sbwd_ws *ws, float *dDacc, float *dbacc)
{
    const int64_t N = a->dstate;
    const float *Ad = a->A + d * N;
    const float Dd = a->D != NULL ? a->D[d] : 0.0f;
    float *restrict dAl = ws->dA;
    float dDsum = 0.0f, dbsum = 0.0f;
    int64_t t, n;

    if (a->z != NULL) {
        const float *restrict z = a->z + o + t0;
        float *restrict sz = ws->sz;
        for (t = 0; t < t1 - t0; t++) {
            sz[t] = sbwd_sigmoid(z[t]);
        }
    }
    for (t = t1 - 1; t >= t0; t--) {
        const int64_t tt = t - t0;
        const float *restrict Bt = bt + tt * N;
        const float *restrict Ct = ct + tt * N;
        const float *restrict hcur = ws->h + (tt + 1) * N;
        const float *restrict hprev = ws->h + tt * N;
        const float *restrict ex = ws->ex + tt * N;
        float *restrict dBp = ws->dB + tt * N;
        float *restrict dCp = ws->dC + tt * N;
        const float dt = ws->dt[tt];
        const float u = a->u[o + t];
        const float dout = a->dout[o + t];
        float dy0 = dout, s1 = 0.0f, s2 = 0.0f, ddt, ddelta;

        if (a->z != NULL) {
            const float zv = a->z[o + t];
            const float sg = ws->sz[tt];
            const float silu = zv * sg;
            float y0 = Dd * u;
#pragma omp simd reduction(+ : y0)
            for (n = 0; n < N; n++) {
                y0 += hcur[n] * Ct[n];
            }
            dy0 = dout * silu;
            if (a->dz != NULL) {
                a->dz[o + t] = dout * y0 * sg * (1.0f + zv * (1.0f - sg));
            }
        }
        {
            const float dtu = dt * u;
#pragma omp simd reduction(+ : s1, s2)
            for (n = 0; n < N; n++) {
                const float g = gn[n] + dy0 * Ct[n];
                const float geh = g * ex[n] * hprev[n];
                dAl[n] += geh * dt;
                s1 += geh * Ad[n];
                s2 += g * Bt[n];
                dCp[n] += dy0 * hcur[n];
                dBp[n] += g * dtu;
                gn[n] = g * ex[n];
            }
        }
        ddt = s1 + s2 * u;
        a->du[o + t] = Dd * dy0 + s2 * dt;
        ddelta = ddt;
        if (a->delta_softplus) {
            ddelta = ddt * ws->sx[tt];
        }
        a->ddelta[o + t] = ddelta;
        dbsum += ddelta;
        dDsum += dy0 * u;
    }
    *dbacc += dbsum;
    *dDacc += dDsum;
}

/* One channel's work on one chunk. mode 0: advance ckpt_in (N) over the chunk into
 * ckpt_out (N). mode 1: recompute from ckpt_in, then run the backward (gn, ws->dA, ws->dB,
 * ws->dC, *dDacc, *dbacc accumulate). Compiled per ISA (simd.h dispatch pattern). */
typedef void (*sbwd_channel_fn)(const samba_scan_bwd_args *, int64_t, int64_t, int64_t,
                                int64_t, const float *, const float *, const float *,
                                float *, float *, sbwd_ws *, float *, float *, int);

SAMBA_ALWAYS_INLINE void
sbwd_channel_body(const samba_scan_bwd_args *a, int64_t d, int64_t o, int64_t t0, int64_t t1,
                  const float *bt, const float *ct, const float *ckpt_in, float *ckpt_out,
                  float *gn, sbwd_ws *ws, float *dDacc, float *dbacc, int mode)
{
    const int64_t N = a->dstate;
    memcpy(ws->h, ckpt_in, (size_t)N * sizeof(float));
    sbwd_recompute(a, d, o, t0, t1, bt, ws->h, ws->ex, ws->dt, ws->sx);
    if (mode == 0) {
        memcpy(ckpt_out, ws->h + (t1 - t0) * N, (size_t)N * sizeof(float));
        return;
    }
    sbwd_backward(a, d, o, t0, t1, bt, ct, gn, ws, dDacc, dbacc);
}

#define SBWD_VARIANT(name, attr)                                                              \
    SAMBA_VEC_FN attr static void name(const samba_scan_bwd_args *a, int64_t d, int64_t o,   \
                                       int64_t t0, int64_t t1, const float *bt,              \
                                       const float *ct, const float *ci, float *co,          \
                                       float *gn, sbwd_ws *ws, float *dD, float *db, int m)  \
    {                                                                                         \
        sbwd_channel_body(a, d, o, t0, t1, bt, ct, ci, co, gn, ws, dD, db, m);               \
    }
SBWD_VARIANT(sbwd_channel_c, )
#if SAMBA_X86_DISPATCH
SBWD_VARIANT(sbwd_channel_avx2, SAMBA_TARGET_AVX2)
SBWD_VARIANT(sbwd_channel_avx512, SAMBA_TARGET_AVX512)
#endif

static sbwd_channel_fn
sbwd_pick(void)
{
#if SAMBA_X86_DISPATCH
    switch (samba_isa()) {
    case SAMBA_ISA_AVX512: return sbwd_channel_avx512;
    case SAMBA_ISA_AVX2: return sbwd_channel_avx2;
    default: break;
    }
#endif
    return sbwd_channel_c;
}

static samba_status
sbwd_check(const samba_scan_bwd_args *a)
{
    if (a == NULL || a->batch < 0 || a->dim < 0 || a->seqlen < 0 || a->dstate < 1 ||
        a->ngroups < 1 || a->dim % a->ngroups != 0) {
        return SAMBA_ERR_ARG;
    }
    if (a->batch == 0 || a->dim == 0) {
        return SAMBA_OK;
    }
    if (a->u == NULL || a->delta == NULL || a->A == NULL || a->B == NULL || a->C == NULL ||
        a->dout == NULL || a->du == NULL || a->ddelta == NULL || a->dA == NULL ||
        a->dB == NULL || a->dC == NULL) {
        return SAMBA_ERR_ARG;
    }
    if ((a->D != NULL && a->dD == NULL) || (a->delta_bias != NULL && a->ddelta_bias == NULL)) {
        return SAMBA_ERR_ARG;
    }
    return SAMBA_OK;
}

samba_status
samba_scan_bwd(const samba_scan_bwd_args *a, const samba_ctx *ctx)
{
    samba_status st = sbwd_check(a);
    int64_t N, L, T, nchunks, dpg, b, g, k;
    int nt, i;
    float *ckpt = NULL, *bt = NULL, *ct = NULL, *gcarry = NULL, *wsbuf = NULL;
    sbwd_ws *ws = NULL;
    int64_t work = 0;
    const sbwd_channel_fn fn = sbwd_pick();

    if (st != SAMBA_OK || a->batch == 0 || a->dim == 0) {
        return st;
    }
    N = a->dstate;
    L = a->seqlen;
    dpg = a->dim / a->ngroups;
    memset(a->dA, 0, (size_t)(a->dim * N) * sizeof(float));
    memset(a->dB, 0, (size_t)(a->batch * a->ngroups * N * L) * sizeof(float));
    memset(a->dC, 0, (size_t)(a->batch * a->ngroups * N * L) * sizeof(float));
    if (a->dD != NULL) {
        memset(a->dD, 0, (size_t)a->dim * sizeof(float));
    }
    if (a->ddelta_bias != NULL) {
        memset(a->ddelta_bias, 0, (size_t)a->dim * sizeof(float));
    }
    if (L == 0) {
        if (a->dinitial_state != NULL) {
            const size_t sz = (size_t)(a->batch * a->dim * N) * sizeof(float);
            if (a->dfinal_state != NULL) {
                memcpy(a->dinitial_state, a->dfinal_state, sz);
            }
            else {
                memset(a->dinitial_state, 0, sz);
            }
        }
        return SAMBA_OK;
    }
    T = SBWD_MIN_CHUNK;
    if ((L + T - 1) / T > SBWD_MAX_CHUNKS) {
        T = (L + SBWD_MAX_CHUNKS - 1) / SBWD_MAX_CHUNKS;
    }
    nchunks = (L + T - 1) / T;
    nt = samba_ctx_threads(ctx);
    if (nt > dpg) {
        nt = (int)dpg;
    }
    if (dpg * L * N < SBWD_PAR_MIN) {
        nt = 1; /* waking threads would cost more than the work */
    }
    if (nt < 1) {
        nt = 1;
    }
    ckpt = (float *)malloc((size_t)(dpg * nchunks * N) * sizeof(float));
    gcarry = (float *)malloc((size_t)(dpg * N) * sizeof(float));
    bt = (float *)malloc((size_t)(T * N) * sizeof(float));
    ct = (float *)malloc((size_t)(T * N) * sizeof(float));
    wsbuf = (float *)malloc((size_t)nt * (size_t)((T + 1) * N + 3 * T * N + 3 * T + N) *
                            sizeof(float));
    ws = (sbwd_ws *)malloc((size_t)nt * sizeof(sbwd_ws));
    if (ckpt == NULL || gcarry == NULL || bt == NULL || ct == NULL || wsbuf == NULL ||
        ws == NULL) {
        st = SAMBA_ERR_ALLOC;
        goto done;
    }
    for (i = 0; i < nt; i++) {
        float *p = wsbuf + (size_t)i * (size_t)((T + 1) * N + 3 * T * N + 3 * T + N);
        ws[i].h = p;
        ws[i].ex = p + (T + 1) * N;
        ws[i].dB = ws[i].ex + T * N;
        ws[i].dC = ws[i].dB + T * N;
        ws[i].dt = ws[i].dC + T * N;
        ws[i].sx = ws[i].dt + T;
        ws[i].sz = ws[i].sx + T;
        ws[i].dA = ws[i].sz + T;
    }

    for (b = 0; b < a->batch; b++) {
        for (g = 0; g < a->ngroups; g++) {
            const int64_t c0 = g * dpg;
            const float *Bg = a->B + (b * a->ngroups + g) * N * L;
            const float *Cg = a->C + (b * a->ngroups + g) * N * L;
            float *dBg = a->dB + (b * a->ngroups + g) * N * L;
            float *dCg = a->dC + (b * a->ngroups + g) * N * L;
            int64_t n, t;

            /* checkpoints: state at the start of each chunk */
            for (k = 0; k < nchunks; k++) {
                const int64_t t0 = k * T, t1 = t0 + T < L ? t0 + T : L;
                for (t = t0; t < t1; t++) {
                    for (n = 0; n < N; n++) {
                        bt[(t - t0) * N + n] = Bg[n * L + t];
                    }
                }
#pragma omp parallel num_threads(nt) if (nt > 1)
                {
                    int tid = 0;
                    int64_t c;
#ifdef _OPENMP
                    tid = omp_get_thread_num();
#endif
                    for (c = tid; c < dpg; c += nt) {
                        const int64_t d = c0 + c;
                        const int64_t o = (b * a->dim + d) * L;
                        float *h = ckpt + (c * nchunks + k) * N;
                        if (k == 0) {
                            if (a->initial_state != NULL) {
                                memcpy(h, a->initial_state + (b * a->dim + d) * N,
                                       (size_t)N * sizeof(float));
                            }
                            else {
                                memset(h, 0, (size_t)N * sizeof(float));
                            }
                        }
                        if (k + 1 < nchunks) {
                            fn(a, d, o, t0, t1, bt, NULL, h, h + N, NULL, &ws[tid], NULL, NULL,
                               0);
                        }
                    }
                }
                work += dpg * (t1 - t0) * N;
                if (work >= SBWD_POLL_WORK) {
                    work = 0;
                    if (samba_ctx_stop(ctx)) {
                        st = SAMBA_ERR_INTERRUPTED;
                        goto done;
                    }
                }
            }
            /* adjoint carries */
            for (k = 0; k < dpg; k++) {
                if (a->dfinal_state != NULL) {
                    memcpy(gcarry + k * N, a->dfinal_state + (b * a->dim + c0 + k) * N,
                           (size_t)N * sizeof(float));
                }
                else {
                    memset(gcarry + k * N, 0, (size_t)N * sizeof(float));
                }
            }
            for (k = nchunks - 1; k >= 0; k--) {
                const int64_t t0 = k * T, t1 = t0 + T < L ? t0 + T : L;
                const int64_t len = t1 - t0;
                for (t = t0; t < t1; t++) {
                    for (n = 0; n < N; n++) {
                        bt[(t - t0) * N + n] = Bg[n * L + t];
                        ct[(t - t0) * N + n] = Cg[n * L + t];
                    }
                }
#pragma omp parallel num_threads(nt) if (nt > 1)
                {
                    int tid = 0;
                    int64_t c;
#ifdef _OPENMP
                    tid = omp_get_thread_num();
#endif
                    memset(ws[tid].dB, 0, (size_t)(len * N) * sizeof(float));
                    memset(ws[tid].dC, 0, (size_t)(len * N) * sizeof(float));
                    for (c = tid; c < dpg; c += nt) {
                        const int64_t d = c0 + c;
                        const int64_t o = (b * a->dim + d) * L;
                        float dDacc = 0.0f, dbacc = 0.0f;
                        int64_t m;
                        memset(ws[tid].dA, 0, (size_t)N * sizeof(float));
                        fn(a, d, o, t0, t1, bt, ct, ckpt + (c * nchunks + k) * N, NULL,
                           gcarry + c * N, &ws[tid], &dDacc, &dbacc, 1);
                        for (m = 0; m < N; m++) {
                            a->dA[d * N + m] += ws[tid].dA[m];
                        }
                        if (a->dD != NULL) {
                            a->dD[d] += dDacc;
                        }
                        if (a->ddelta_bias != NULL) {
                            a->ddelta_bias[d] += dbacc;
                        }
                    }
                }
                /* reduce the private tiles in thread order */
                for (i = 0; i < nt; i++) {
                    for (n = 0; n < N; n++) {
                        float *db = dBg + n * L + t0;
                        float *dc = dCg + n * L + t0;
                        for (t = 0; t < len; t++) {
                            db[t] += ws[i].dB[t * N + n];
                            dc[t] += ws[i].dC[t * N + n];
                        }
                    }
                }
                work += 3 * dpg * len * N;
                if (work >= SBWD_POLL_WORK) {
                    work = 0;
                    if (samba_ctx_stop(ctx)) {
                        st = SAMBA_ERR_INTERRUPTED;
                        goto done;
                    }
                }
            }
            if (a->dinitial_state != NULL) {
                for (k = 0; k < dpg; k++) {
                    memcpy(a->dinitial_state + (b * a->dim + c0 + k) * N, gcarry + k * N,
                           (size_t)N * sizeof(float));
                }
            }
        }
    }
done:
    free(ckpt);
    free(gcarry);
    free(bt);
    free(ct);
    free(wsbuf);
    free(ws);
    return st;
}
