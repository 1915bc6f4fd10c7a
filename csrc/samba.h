/*
 * samba.h - the plain-C kernel library behind samba_ext (no Python.h here).
 *
 * Conventions (every kernel file follows them):
 *   - Names are samba_<thing>_<action>; constructors/destructors are _init/_free pairs.
 *   - Every function returns a samba_status; nothing in the library aborts or exits.
 *   - Arrays are raw float pointers with explicit shapes; unless a comment says otherwise
 *     they are C-contiguous float32 in the order the comment gives, e.g. u (B, D, L).
 *   - Long kernels take a samba_ctx: they call ctx->should_stop(ctx->user) between chunks
 *     on the calling thread (never inside an OpenMP region) and return
 *     SAMBA_ERR_INTERRUPTED when it answers nonzero. ctx may be NULL.
 *   - Work is split with OpenMP (when compiled with it) over samba_ctx_threads(ctx) threads.
 *     Kernels use no global scratch buffers, so concurrent calls on different data are safe.
 */
#ifndef SAMBA_H
#define SAMBA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum samba_status {
    SAMBA_OK = 0,
    SAMBA_ERR_ARG = 1,         /* a shape/size/pointer argument is invalid */
    SAMBA_ERR_ALLOC = 2,       /* malloc failed */
    SAMBA_ERR_INTERRUPTED = 3, /* ctx->should_stop asked to stop */
    SAMBA_ERR_CUDA = 4,        /* a CUDA runtime / cuBLAS call failed */
    SAMBA_ERR_UNSUPPORTED = 5  /* valid, but not implemented for these arguments */
} samba_status;

const char *samba_status_str(samba_status s);

typedef struct samba_ctx {
    int n_threads;                    /* <= 0: use samba_threads_get() */
    int (*should_stop)(void *user);   /* may be NULL */
    void *user;
} samba_ctx;

/* Process-wide default thread count (initialised from OMP_NUM_THREADS / the core count). */
void samba_threads_set(int n);
int samba_threads_get(void);
int samba_ctx_threads(const samba_ctx *ctx);
/* 1 if ctx asks to stop (calls the callback). */
int samba_ctx_stop(const samba_ctx *ctx);
/* 1 if the library was built with OpenMP. */
int samba_has_openmp(void);

/* ------------------------------------------------------------------------------------ */
/* Selective scan (Mamba-1 / S6), docs/specification.md section 3.  scan.c              */
/* ------------------------------------------------------------------------------------ */
/*
 * u, delta (B, D, L); A (D, N); Bm, Cm (B, G, N, L) with D % G == 0 (channel d uses group
 * d / (D/G)); Dskip (D) or NULL; z (B, D, L) or NULL; delta_bias (D) or NULL;
 * state (B, D, N): in = initial state (or NULL for zeros, then state_out may still be given),
 * state_out (B, D, N) or NULL (it may be the same buffer as the initial state).  y (B, D, L) out.
 *   dt = delta + delta_bias; if softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h = exp(dt*A) h + dt*B*u ; y = sum_n h*C + Dskip*u ; if z: y *= silu(z)
 */
typedef struct samba_scan_args {
    int64_t batch, dim, dstate, seqlen, ngroups;
    const float *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
    int delta_softplus;
    const float *initial_state; /* (B, D, N) or NULL */
    float *final_state;         /* (B, D, N) or NULL */
    float *y;                   /* (B, D, L) */
} samba_scan_args;

samba_status samba_scan_fwd(const samba_scan_args *a, const samba_ctx *ctx);

/*
 * One decode step. state (B, D, N) updated in place; x, dt, z (B, D); A (D, N);
 * Bm, Cm (B, G, N); Dskip, dt_bias (D) or NULL; y (B, D) out.
 */
typedef struct samba_scan_step_args {
    int64_t batch, dim, dstate, ngroups;
    float *state;
    const float *x, *dt, *A, *B, *C, *D, *z, *dt_bias;
    int dt_softplus;
    float *y;
} samba_scan_step_args;

samba_status samba_scan_step(const samba_scan_step_args *a, const samba_ctx *ctx);

/* ------------------------------------------------------------------------------------ */
/* Depthwise causal conv1d.  conv.c                                                       */
/* ------------------------------------------------------------------------------------ */
/*
 * x (B, D, L); weight (D, W) with 2 <= W <= 4 (weight[:, W-1] multiplies the current token);
 * bias (D) or NULL; initial_states (B, D, W-1) or NULL (zeros); final_states (B, D, W-1) or
 * NULL (the last W-1 inputs, older first, zero-padded/initial-state-filled when L < W-1);
 * silu: apply SiLU.  y (B, D, L) out.
 */
samba_status samba_conv1d_fwd(int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                              const float *x, const float *weight, const float *bias,
                              const float *initial_states, float *final_states, int silu,
                              float *y, const samba_ctx *ctx);

/* The same over packed sequences (causal-conv1d's seq_idx): seq_idx (B, L); the tap on x[s]
 * counts for y[t] only when seq_idx[s] == seq_idx[t], so no token sees an input of another
 * sequence; a negative id marks padding: y[t] = 0 there (bias and activation skipped). No
 * initial or final states (as causal-conv1d). */
samba_status samba_conv1d_fwd_seq(int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                  const float *x, const float *weight, const float *bias,
                                  const int64_t *seq_idx, int silu, float *y,
                                  const samba_ctx *ctx);

/* One step: x (B, D); conv_state (B, D, W-1) in/out (shifted left, x appended); y (B, D). */
samba_status samba_conv1d_step(int64_t batch, int64_t dim, int64_t width, const float *x,
                               float *conv_state, const float *weight, const float *bias,
                               int silu, float *y, const samba_ctx *ctx);

/* ------------------------------------------------------------------------------------ */
/* Sliding-window / causal attention (flash-style online softmax).  attention.c          */
/* ------------------------------------------------------------------------------------ */
/*
 * q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd), H % Hkv == 0, query head h uses kv head
 * h / (H/Hkv).  Query i sits at absolute key index i + (Lk - Lq) (the kv sequence may carry
 * Lk - Lq past keys in front).  It sees keys j with pos-window < j <= pos (window <= 0: all
 * j <= pos).  out (B, Lq, H, hd).
 */
typedef struct samba_attn_args {
    int64_t batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim;
    int64_t window;             /* <= 0: full causal */
    float softmax_scale;
    const float *q, *k, *v;
    float *out;
} samba_attn_args;

samba_status samba_attn_fwd(const samba_attn_args *a, const samba_ctx *ctx);

/*
 * Decode attention over a ring-buffer cache. q (B, H, hd); k_cache, v_cache (B, C, Hkv, hd)
 * where C = cache capacity; the valid keys are the last n_valid[b] written, the newest at
 * slot (pos[b]) % C and older ones before it (mod C); n_valid[b] <= C.  out (B, H, hd).
 */
samba_status samba_attn_decode(int64_t batch, int64_t nheads, int64_t nheads_kv,
                               int64_t headdim, int64_t capacity, const float *q,
                               const float *k_cache, const float *v_cache,
                               const int64_t *pos, const int64_t *n_valid,
                               float softmax_scale, float *out, const samba_ctx *ctx);

/* ------------------------------------------------------------------------------------ */
/* Small fused ops.  norm.c, rotary.c, swiglu.c                                          */
/* ------------------------------------------------------------------------------------ */
/* x (rows, n); weight (n); y (rows, n) = x * rsqrt(mean(x^2) + eps) * weight.
 * If residual != NULL: x_sum = x + residual is written to residual_out (may alias residual)
 * and normalised instead. */
samba_status samba_rmsnorm_fwd(int64_t rows, int64_t n, const float *x, const float *residual,
                               float *residual_out, const float *weight, float eps, float *y,
                               const samba_ctx *ctx);

/* x (B, L, H, hd), hd even, in place or into y (may alias x). positions (B, L) absolute
 * int64. NeoX half split: out1 = x1 cos - x2 sin, out2 = x1 sin + x2 cos,
 * theta_i = base^(-2i/hd). */
samba_status samba_rotary_fwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                              const float *x, const int64_t *positions, double base, float *y,
                              const samba_ctx *ctx);

/* gate, up, y (n) : y = silu(gate) * up (y may alias gate or up). */
samba_status samba_swiglu_fwd(int64_t n, const float *gate, const float *up, float *y,
                              const samba_ctx *ctx);

/* ------------------------------------------------------------------------------------ */
/* Backward passes (fp32 in, fp32 accumulate).  *_bwd.c                                  */
/* ------------------------------------------------------------------------------------ */
/*
 * Selective scan backward (scan_bwd.c).  The forward's arguments (as in samba_scan_args)
 * plus dout (B, D, L) = dL/dy and dfinal_state (B, D, N) = dL/d(final state) or NULL.
 * Outputs (all overwritten): du, ddelta (B, D, L); dA (D, N); dB, dC (B, G, N, L);
 * dD (D) (required when D != NULL); dz (B, D, L) (used when z != NULL, may be NULL);
 * ddelta_bias (D) (required when delta_bias != NULL); dinitial_state (B, D, N) or NULL
 * (the gradient of the initial state, zeros-as-input when initial_state is NULL).
 */
typedef struct samba_scan_bwd_args {
    int64_t batch, dim, dstate, seqlen, ngroups;
    const float *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
    int delta_softplus;
    const float *initial_state; /* (B, D, N) or NULL */
    const float *dout;          /* (B, D, L) */
    const float *dfinal_state;  /* (B, D, N) or NULL */
    float *du, *ddelta, *dA, *dB, *dC, *dD, *dz, *ddelta_bias, *dinitial_state;
} samba_scan_bwd_args;

samba_status samba_scan_bwd(const samba_scan_bwd_args *a, const samba_ctx *ctx);

/*
 * Causal conv1d backward (conv_bwd.c).  Forward arguments as in samba_conv1d_fwd plus
 * dy (B, D, L) and dfinal_states (B, D, W-1) or NULL.  Outputs (overwritten): dx (B, D, L),
 * dweight (D, W), dbias (D) (required when bias != NULL), dinitial_states (B, D, W-1) or
 * NULL (gradient of the initial states; zeros-as-input when initial_states is NULL).
 * seq_idx (B, L) or NULL: the backward of samba_conv1d_fwd_seq (then initial_states,
 * dfinal_states and dinitial_states must be NULL).
 */
typedef struct samba_conv1d_bwd_args {
    int64_t batch, dim, seqlen, width;
    const float *x, *weight, *bias, *initial_states;
    const int64_t *seq_idx;
    int silu;
    const float *dy, *dfinal_states;
    float *dx, *dweight, *dbias, *dinitial_states;
} samba_conv1d_bwd_args;

samba_status samba_conv1d_bwd(const samba_conv1d_bwd_args *a, const samba_ctx *ctx);

/*
 * RMSNorm (+ residual) backward (norm_bwd.c).  x, residual (rows, n) (residual may be NULL),
 * weight (n), eps as in the forward; dy (rows, n) = dL/dy; dresidual_out (rows, n) or NULL =
 * dL/d(x + residual).  Outputs: dx (rows, n), dresidual (rows, n) or NULL (equal to dx),
 * dweight (n) (overwritten).
 */
typedef struct samba_rmsnorm_bwd_args {
    int64_t rows, n;
    const float *x, *residual, *weight;
    float eps;
    const float *dy, *dresidual_out;
    float *dx, *dresidual, *dweight;
} samba_rmsnorm_bwd_args;

samba_status samba_rmsnorm_bwd(const samba_rmsnorm_bwd_args *a, const samba_ctx *ctx);

/* SwiGLU backward (swiglu_bwd.c): gate, up, dy (n) -> dgate, dup (n). */
samba_status samba_swiglu_bwd(int64_t n, const float *gate, const float *up, const float *dy,
                              float *dgate, float *dup, const samba_ctx *ctx);

/* Rotary backward (rotary_bwd.c): dy (B, L, H, hd), positions (B, L) as in the forward ->
 * dx (B, L, H, hd) (may alias dy). */
samba_status samba_rotary_bwd(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                              const float *dy, const int64_t *positions, double base,
                              float *dx, const samba_ctx *ctx);

/*
 * Attention with a two-sided window, GQA and softcap (attention_bwd.c): a forward that also
 * returns the log-sum-exp, and the FlashAttention-2-style backward that uses it.
 * q, out, dout, dq (B, Lq, H, hd); k, v, dk, dv (B, Lk, Hkv, hd), H % Hkv == 0; lse (B, H, Lq).
 * Query i sits at key position p = i + Lk - Lq and sees keys j with
 * (window_left < 0 or j >= p - window_left) and (window_right < 0 or j <= p + window_right)
 * (causal: window_right = 0; samba_attn_fwd's window W: window_left = W - 1).
 * Scores s = scale q.k, then s = softcap tanh(s / softcap) when softcap > 0, then (ALiBi, when
 * alibi_slopes is set) s -= slope |p - j| with slope = alibi_slopes[b * alibi_batch_stride + h].
 * A query that sees no key gets out = 0, lse = -inf.
 * samba_attn_fwd_lse: q, k, v -> out, lse (lse may be NULL).
 * samba_attn_bwd: q, k, v, out, lse, dout -> dq, dk, dv.
 */
typedef struct samba_attn_ext_args {
    int64_t batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim;
    int64_t window_left, window_right; /* < 0: unbounded on that side */
    float softmax_scale, softcap;      /* softcap 0: none (negative: SAMBA_ERR_ARG) */
    const float *alibi_slopes;         /* NULL: no ALiBi; else finite, indexed as above */
    int64_t alibi_batch_stride;        /* 0: the same slopes for every batch row (>= 0) */
    const float *q, *k, *v;
    float *out; /* written by the forward, read by the backward */
    float *lse; /* idem */
    const float *dout;
    float *dq, *dk, *dv;
} samba_attn_ext_args;

samba_status samba_attn_fwd_lse(const samba_attn_ext_args *a, const samba_ctx *ctx);
samba_status samba_attn_bwd(const samba_attn_ext_args *a, const samba_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* SAMBA_H */
