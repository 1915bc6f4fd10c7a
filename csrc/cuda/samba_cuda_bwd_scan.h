/*
 * samba_cuda_bwd_scan.h - C interface of the CUDA backward kernels of the selective scan
 * (scan_bwd.cu) and of the causal conv1d (conv_bwd.cu). Conventions as in samba_cuda.h:
 * launchers return a samba_status (message in samba_cuda_last_error()), float inputs come
 * as (pointer, dtype code) pairs read as float32, arithmetic and accumulation are float32.
 */
#ifndef SAMBA_CUDA_BWD_SCAN_H
#define SAMBA_CUDA_BWD_SCAN_H

#include "samba_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Gradients of the selective scan (samba_scan_bwd semantics, csrc/scan_bwd.c).
 * Inputs: u, delta, z, dout (B, D, L) with element strides *_s[0..2]; Bm, Cm (B, G, N, L)
 * with strides *_s[0..3]; u, delta, z, dout, B, C of one dtype (float32, float16 or
 * bfloat16). A (D, N), Dskip, delta_bias (D): contiguous, any float dtype. initial_state,
 * dlast_state (B, D, N): float32 contiguous or NULL. 1 <= N <= 256.
 * Outputs (C-contiguous, written whole): du, ddelta (B, D, L) and dz (B, D, L, when z is
 * given) in the dtype of their ref; dA (D, N), dB, dC (B, G, N, L), dD, ddelta_bias (D),
 * dinitial_state (B, D, N) float32 (dD / ddelta_bias / dinitial_state may be NULL: not
 * computed). The sums over channels (dB, dC) and over the batch (dA, dD, ddelta_bias) are
 * float32 atomic additions, so their last bits depend on the order the blocks run in.
 * Allocates its workspace stream-ordered (cudaMallocAsync on `stream`, freed after the
 * launches): the states at chunk starts, B*D*ceil(N/16)*16 floats per chunk of 8*S steps
 * (the tiled kernels: of 32*K steps; S or K chosen so that this stays under
 * SAMBA_EXT_SCAN_BWD_WS_MB, default 512 MiB), plus 3*B*D*L floats when N > 16.
 */
typedef struct samba_cu_scan_bwd_args {
    int64_t batch, dim, dstate, seqlen, ngroups;
    samba_cu_ref u, delta, A, B, C, D, z, delta_bias, dout;
    int64_t u_s[3], delta_s[3], z_s[3], dout_s[3], B_s[4], C_s[4];
    int delta_softplus;
    const float *initial_state, *dlast_state;
    samba_cu_ref du, ddelta, dz;
    float *dA, *dB, *dC, *dD, *ddelta_bias, *dinitial_state;
} samba_cu_scan_bwd_args;
samba_status samba_cu_scan_bwd(const samba_cu_scan_bwd_args *a, void *stream);

/* Backward calls so far per kernel: kind 0 the split kernels (scan_bwd_kernels.cuh), 1 the tiled
 * kernels (scan_tile_bwd.cuh); -1 for another kind. */
long long samba_cu_scan_bwd_launches(int kind);

/*
 * Gradients of the depthwise causal conv1d (samba_conv1d_bwd semantics, csrc/conv_bwd.c).
 * x, dy (B, D, L) of one dtype with element strides x_s, dy_s; weight (D, W), 2 <= W <= 4,
 * and bias (D) contiguous, any float dtype; initial_states, dfinal_states (B, D, W-1)
 * float32 contiguous or NULL; silu: the forward applied SiLU. Outputs: dx (B, D, L)
 * C-contiguous in its ref's dtype; dweight (D, W) and dbias (D) float32 (dbias NULL: not
 * computed); dinitial_states (B, D, W-1) float32 or NULL. One block per channel: the sums
 * over batch and time are reduced inside it in a fixed order (deterministic).
 * seq_idx (B, L) int32 or int64 with element strides seq_s[0..1], or absent (ptr NULL): the
 * backward of samba_cu_conv1d_fwd over packed sequences: only the taps with s >= 0 and
 * seq_idx[b, s] == seq_idx[b, t] enter the SiLU's pre-activation, dx, dweight, and a padding
 * output (seq_idx[b, t] < 0, a constant 0) has gradient 0 (dbias sums every position's
 * gradient, as without); initial_states, dfinal_states and dinitial_states
 * must then be NULL (SAMBA_ERR_ARG). Absent, the kernels without the id check run.
 */
samba_status samba_cu_conv1d_bwd(int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                 samba_cu_ref x, const int64_t *x_s, samba_cu_ref dy,
                                 const int64_t *dy_s, samba_cu_ref weight, samba_cu_ref bias,
                                 const float *initial_states, const float *dfinal_states,
                                 samba_cu_ref seq_idx, const int64_t *seq_s, int silu,
                                 samba_cu_ref dx, float *dweight, float *dbias,
                                 float *dinitial_states, void *stream);

#ifdef __cplusplus
}
#endif
#endif
