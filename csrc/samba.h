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

#ifdef __cplusplus
}
#endif
#endif /* SAMBA_H */
