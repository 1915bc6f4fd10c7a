/*
 * samba_cuda.h - C interface of the CUDA kernels (implemented in *.cu as extern "C").
 *
 * Conventions (all .cu files follow them):
 *   - Every launcher returns a samba_status and never aborts. On failure the message is
 *     available from samba_cuda_last_error() (thread-local): it names the kernel and the
 *     CUDA error, e.g. "selective_scan: an illegal memory access was encountered".
 *   - Every launch is checked with cudaGetLastError(); with SAMBA_EXT_CUDA_SYNC=1 in the
 *     environment the launchers also synchronize the stream after each kernel, so that an
 *     asynchronous fault is reported by the kernel that caused it.
 *   - Arrays are device pointers to C-contiguous data in the order the comment gives. Each
 *     float array comes with its own dtype code (samba_cu_dtype): kernels load any of
 *     float32 / float16 / bfloat16 and convert to float32 in registers; all arithmetic,
 *     accumulation and recurrent state are float32. Arrays named *state* are float32 only.
 *   - Streams are cudaStream_t passed as void* (NULL = legacy default stream).
 *   - Launchers do not allocate memory (callers pass every buffer) except where noted, so
 *     they may be captured in a CUDA graph.
 */
#ifndef SAMBA_CUDA_H
#define SAMBA_CUDA_H
#include <stddef.h>
#include <stdint.h>

#include "../samba.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum samba_cu_dtype {
    SAMBA_CU_F32 = 0,
    SAMBA_CU_F16 = 1,
    SAMBA_CU_BF16 = 2,
    SAMBA_CU_I32 = 3,
    SAMBA_CU_I64 = 4
} samba_cu_dtype;

/* A device array reference: pointer + dtype code. ptr NULL = absent (optional input). */
typedef struct samba_cu_ref {
    void *ptr;
    int dtype;
} samba_cu_ref;

/* ---------------------------------------------------------------- runtime.cu ---------- */
/* Number of CUDA devices, or a negative CUDA error code (e.g. -100 no device, -35 driver
 * too old); the message is in samba_cuda_last_error(). */
int samba_cuda_device_count(void);
/* Creates and destroys a cuBLAS handle: checks that cuBLAS loads and works. */
samba_status samba_cuda_cublas_check(int *version);
/* CUDA runtime / driver versions (e.g. 13000); driver 0 when no driver is installed. */
void samba_cuda_versions(int *runtime, int *driver);
const char *samba_cuda_last_error(void);
/* Records "what: CUDA error text (code)" as the last error and returns SAMBA_ERR_CUDA (or
 * SAMBA_ERR_ALLOC for out-of-memory). err is a cudaError_t. */
samba_status samba_cu_fail(const char *what, int err);
/* Records a plain message (argument problems found on the device side). */
samba_status samba_cu_fail_msg(samba_status s, const char *fmt, ...);
/* Name of the device (for messages), compute capability. */
samba_status samba_cu_device_info(int device, char *name, size_t name_len, int *major,
                                  int *minor, int64_t *total_mem, int *sm_count);

/* Makes `device` the calling thread's current device; on first use of a device its memory
 * pool is set up (see samba_cu_malloc). */
samba_status samba_cu_set_device(int device);
/* The calling thread's current device. */
samba_status samba_cu_get_device(int *device);
/* samba_cu_set_device(device), returning in *prev the device that was current before (-1
 * when it could not be read). Pair it with samba_cu_restore_device(*prev). */
samba_status samba_cu_exchange_device(int device, int *prev);
/* Makes `prev` current again after samba_cu_exchange_device, as PyTorch's device guard does:
 * nothing happens when `prev` is current already or is -1, nor when the primary context of
 * `prev` is not active (making it current would create that context, hundreds of MB on a
 * device the thread never used: the thread stays on its present device). When the context
 * state cannot be read (see samba_cu_primary_ctx_active) `prev` is made current anyway. */
samba_status samba_cu_restore_device(int prev);
/* 1 when the primary context of `device` is active, 0 when it is not, -1 when unknown
 * (cuDevicePrimaryCtxGetState fetched from the driver with cudaGetDriverEntryPoint*,
 * without linking libcuda; unavailable before CUDA 11.3 or when the query fails). */
int samba_cu_primary_ctx_active(int device);
/* Stream-ordered allocation from the device's default memory pool (cudaMallocAsync). On
 * first use of a device its pool's release threshold is raised so that freed memory stays
 * cached for reuse (samba_cu_trim releases it). nbytes 0 gives NULL. */
samba_status samba_cu_malloc(void **ptr, size_t nbytes, void *stream);
samba_status samba_cu_free(void *ptr, void *stream);
/* Testing aid: when on, samba_cu_malloc fills each new block with 0xFF bytes on its stream
 * (NaN as float), so a kernel that reads scratch it never wrote gives NaN. */
void samba_cu_set_poison(int on);
samba_status samba_cu_trim(int device);
/* Pool statistics: bytes reserved by the pool and bytes in use. */
samba_status samba_cu_pool_stats(int device, uint64_t *reserved, uint64_t *used);

samba_status samba_cu_memcpy_h2d(void *dst, const void *src, size_t n, void *stream);
/* Device -> host, then synchronizes the stream (the host buffer is ready on return). */
samba_status samba_cu_memcpy_d2h(void *dst, const void *src, size_t n, void *stream);
samba_status samba_cu_memcpy_d2d(void *dst, const void *src, size_t n, void *stream);
samba_status samba_cu_memset(void *dst, int value, size_t n, void *stream);
/* Pull [ptr, ptr + bytes) into the L2 cache on stream (l2_prefetch.cu): mode 1 bulk
 * prefetch (sm_90: cp.async.bulk.prefetch.L2, else prefetch.global.L2), mode 2 loads through
 * L2. sm_count bounds the grid. Reads only; never changes results. */
samba_status samba_cu_l2_prefetch(const void *ptr, int64_t bytes, int mode, int sm_count,
                                  void *stream);
samba_status samba_cu_stream_sync(void *stream);
samba_status samba_cu_device_sync(void);
/* Makes `waiter` wait for all work currently queued on `producer` (event record + wait).
 * No-op when they are the same stream. */
samba_status samba_cu_stream_wait(void *waiter, void *producer);
samba_status samba_cu_stream_create(void **stream);
samba_status samba_cu_stream_destroy(void *stream);
/* 1 if `stream` is being captured into a graph (or its capture was invalidated and not yet
 * ended), 0 if not, -1 if that cannot be told (e.g. the legacy stream while another thread
 * captures in global mode); never leaves an error behind. */
int samba_cu_stream_capturing(void *stream);
/* 1 if SAMBA_EXT_CUDA_SYNC=1 (synchronize after every launch). */
int samba_cu_sync_mode(void);
/* After a launch: cudaGetLastError (+ stream sync in sync mode); failures name `kernel`. */
samba_status samba_cu_check_launch(const char *kernel, void *stream);

/* CUDA graphs (stream capture on a non-default stream). */
samba_status samba_cu_graph_begin(void *stream);
samba_status samba_cu_graph_end(void *stream, void **graph_exec);
samba_status samba_cu_graph_launch(void *graph_exec, void *stream);
samba_status samba_cu_graph_free(void *graph_exec);

/* Strided copy / gather / scatter with dtype conversion (ndim <= 8). For every coordinate c
 * of `shape`: dst[dc . dst_strides] = src[sc . src_strides] with sc = dc = c, except along
 * `axis` where sc[axis] = src_idx[k] (if src_idx) and dc[axis] = dst_idx[k] (if dst_idx),
 * k = c[0] if idx_batched else c[axis] (int32/int64 device index arrays). Float dtypes
 * convert among each other (to bf16/f16 by round to nearest even), int dtypes likewise.
 * Element strides may be 0 or negative; dst must not overlap src. */
samba_status samba_cu_copy(int ndim, const int64_t *shape, samba_cu_ref src,
                           const int64_t *src_strides, samba_cu_ref dst,
                           const int64_t *dst_strides, int axis, samba_cu_ref src_idx,
                           samba_cu_ref dst_idx, int idx_batched, void *stream);

/* ---------------------------------------------------------------- gemm.cu ------------- */
/*
 * y (M, N) = x (M, K) @ w (N, K)^T [+ bias (N)] [+ beta * y], row-major, via cublasGemmEx.
 * x, w: both float32, both float16 or both bfloat16; y: float32 or the input dtype.
 * Math mode: CUBLAS_COMPUTE_32F (float32 accumulation; no TF32 for float32 inputs),
 * CUBLAS_GEMM_DEFAULT. ldx/ldw/ldy are row strides in elements (>= K, K, N).
 * One cuBLAS handle per device (created on first use, with a fixed 32 MiB workspace so the
 * call can be captured in a CUDA graph); callers serialise (the Python glue holds the GIL).
 */
samba_status samba_cu_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref x, int64_t ldx,
                           samba_cu_ref w, int64_t ldw, samba_cu_ref y, int64_t ldy,
                           float beta, void *stream);
/* Raw column-major cublasGemmStridedBatchedEx (same math mode): C = op(A) op(B) + beta C,
 * op = transpose when trans* != 0, `batch` matrices at element strides sA, sB, sC (0 =
 * broadcast). A, B one dtype; C float32 or that dtype. */
samba_status samba_cu_gemm_batched(int transa, int transb, int64_t m, int64_t n, int64_t k,
                                   samba_cu_ref A, int64_t lda, int64_t sA, samba_cu_ref B,
                                   int64_t ldb, int64_t sB, samba_cu_ref C, int64_t ldc,
                                   int64_t sC, int64_t batch, float beta, void *stream);
void samba_cu_gemm_release(void);
/* GEMM path of samba_cu_gemm / samba_cu_gemm_batched: cublas*Ex (default), cuBLASLt with the
 * heuristic's first algorithm, or cuBLASLt with the fastest of its candidates timed on each
 * shape's first eager beta == 0 call. Initially from SAMBA_EXT_GEMM (gemmex | lt | lt-tune),
 * read once on first use; samba_cu_gemm_set_mode overrides it (SAMBA_ERR_ARG if unknown). */
#define SAMBA_GEMM_GEMMEX 0
#define SAMBA_GEMM_LT 1
#define SAMBA_GEMM_LT_TUNE 2
int samba_cu_gemm_mode(void);
samba_status samba_cu_gemm_set_mode(int mode);
/* GEMV path (gemv.cu) of samba_cu_gemm / samba_cu_gemm_batched for y = x @ W^T with at most 8
 * rows of bf16 / f16 x and W's base and row pitch 8-byte aligned (other calls keep the path
 * above): SAMBA_GEMV_ON for such calls, SAMBA_GEMV_OFF never, SAMBA_GEMV_AUTO (the default)
 * for one row where programmatic dependent launch is on (samba_cu_pdl_enabled). Initially
 * from SAMBA_EXT_GEMV ("1" on, "0" off, else auto), read once on first use; samba_cu_gemv_set
 * overrides it (SAMBA_ERR_ARG unless one of the three). */
#define SAMBA_GEMV_OFF 0
#define SAMBA_GEMV_ON 1
#define SAMBA_GEMV_AUTO 2
int samba_cu_gemv_enabled(void);
samba_status samba_cu_gemv_set(int on);
/* Number of GEMM calls that ran the GEMV kernel so far in this process (a testing aid); which
 * 1 / 2: of those, the ones with rms_norm / SwiGLU fused (fused_gemm.cu). */
long long samba_cu_gemv_launches(int which);
/* Programmatic dependent launch (pdl.cuh) of the decode-path kernels (norm, SwiGLU, the one-step
 * conv and scan, rotary, decode attention, copies, GEMV): 1 on, 0 off. Initially on unless
 * SAMBA_EXT_PDL=0, read once on first use; samba_cu_pdl_set overrides it (SAMBA_ERR_ARG unless 0
 * or 1). Devices before compute capability 9.0, and builds whose code for the device comes from
 * PTX older than sm_90, launch in plain stream order either way (samba_cu_pdl_enabled: the mode
 * and the current device together). */
int samba_cu_pdl_mode(void);
int samba_cu_pdl_enabled(void);
samba_status samba_cu_pdl_set(int on);

/* ---------------------------------------------------------------- scan.cu ------------- */
/*
 * Selective scan (samba.h samba_scan_fwd semantics). u, delta, z, y (B, D, L) with element
 * strides (*_s[0], *_s[1], *_s[2]) (so token-major (B, L, D) views work without a copy);
 * A (D, N) and Dskip, delta_bias (D) contiguous; Bm, Cm (B, G, N, L) with strides *_s[0..3];
 * initial_state, final_state (B, D, N) float32 contiguous (may alias: the state is read
 * once at the start and written at the end). One thread per (b, d) channel, the N states
 * in registers (N <= 256); for N = 16 with one input dtype and 16-byte aligned rows of unit
 * time stride, 4 or 8 threads per channel (scan.cu). With SAMBA_EXT_SCAN_CHUNKS=N > 1 that
 * path scans in chunks and allocates a workspace (stream-ordered, freed after the call).
 */
typedef struct samba_cu_scan_args {
    int64_t batch, dim, dstate, seqlen, ngroups;
    samba_cu_ref u, delta, A, B, C, D, z, delta_bias, y;
    int64_t u_s[3], delta_s[3], z_s[3], y_s[3], B_s[4], C_s[4];
    int delta_softplus;
    const float *initial_state;
    float *final_state;
} samba_cu_scan_args;
samba_status samba_cu_scan_fwd(const samba_cu_scan_args *a, void *stream);
/* Forward calls so far that ran kernel `kind` (0 per-channel, 1 split, 2 tile, 3 warp). */
long long samba_cu_scan_launches(int kind);

/* One decode step: state (B, D, N) float32 in place; x, dt, z, y (B, D) with strides
 * *_s[0..1]; B, C (B, G, N) with strides *_s[0..2]; A (D, N), D, dt_bias (D) contiguous.
 * dt_nv, dt_w, dt_rdt: zero, except as samba_cu_dt_state_update sets them (fused_gemm.cu). */
typedef struct samba_cu_scan_step_args {
    int64_t batch, dim, dstate, ngroups;
    float *state;
    samba_cu_ref x, dt, A, B, C, D, z, dt_bias, y;
    int64_t x_s[2], dt_s[2], z_s[2], y_s[2], B_s[3], C_s[3];
    int dt_softplus;
    /* dt_nv > 0 (batch 1 only): dt is the row dt_in (1, 8 dt_nv) 16-byte aligned, and the step's
     * dt is dt_in @ dt_w (D, 8 dt_nv)^T (dt_w's dtype, rows contiguous and 16-byte aligned),
     * summed as gemv.cu's one-row kernel sums it and rounded to dtype dt_rdt. */
    samba_cu_ref dt_w;
    int dt_nv, dt_rdt;
} samba_cu_scan_step_args;
samba_status samba_cu_scan_step(const samba_cu_scan_step_args *a, void *stream);
/* The decode step with the low-rank dt projection of Mamba: dt_buf (B, D) contiguous = dt_in
 * (B, R, row stride ld_dt_in) @ dt_w (D, R)^T by samba_cu_gemm_batched (as
 * samba_ext.cuda.blas.matmul calls it), then samba_cu_scan_step with dt = dt_buf (a->dt and
 * a->dt_s are not read). At batch 1, where gemv.cu would
 * compute that product with its one-row kernel at one warp per row (samba_cu_gemv_row_plain),
 * the state update computes each channel's dt itself, with the same sums and rounding, and
 * dt_buf is not written: one launch instead of two, the same bits. */
samba_status samba_cu_dt_state_update(const samba_cu_scan_step_args *a, int64_t R,
                                      samba_cu_ref dt_in, int64_t ld_dt_in, samba_cu_ref dt_w,
                                      samba_cu_ref dt_buf, void *stream);

/* ---------------------------------------------------------------- conv.cu ------------- */
/*
 * Depthwise causal conv1d: x, y (B, D, L) with element strides x_s / y_s; weight (D, W)
 * contiguous, 2 <= W <= 8; bias (D) or absent; initial_states (B, D, W-1) float32 or NULL;
 * final_states (B, D, W-1) float32 or NULL (may alias initial_states: written by a second
 * kernel after the convolution).
 * seq_idx (B, L) int32 or int64 with element strides seq_s[0..1], or absent (ptr NULL; seq_s
 * then not read): packed sequences (causal-conv1d's seq_idx, samba_conv1d_fwd_seq semantics):
 * the tap on x[s], s = t - (W-1) + k, counts for y[t] only when s >= 0 and seq_idx[b, s] ==
 * seq_idx[b, t], and y[t] = 0 where seq_idx[b, t] < 0 (padding); initial_states and
 * final_states must then be NULL (SAMBA_ERR_ARG). Absent,
 * the kernels without the id check run (a template flag).
 */
samba_status samba_cu_conv1d_fwd(int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                 samba_cu_ref x, const int64_t *x_s, samba_cu_ref weight,
                                 samba_cu_ref bias, const float *initial_states,
                                 float *final_states, samba_cu_ref seq_idx,
                                 const int64_t *seq_s, int silu, samba_cu_ref y,
                                 const int64_t *y_s, void *stream);
/* One step: x, y (B, D) with strides x_s, y_s; conv_state (B, D, W-1) float32 in place. */
samba_status samba_cu_conv1d_step(int64_t batch, int64_t dim, int64_t width, samba_cu_ref x,
                                  const int64_t *x_s, float *conv_state, samba_cu_ref weight,
                                  samba_cu_ref bias, int silu, samba_cu_ref y,
                                  const int64_t *y_s, void *stream);

/* ---------------------------------------------------------------- attention.cu -------- */
/*
 * Causal sliding-window attention (samba.h samba_attn_fwd semantics), GQA, headdim <= 256.
 * q (B, Lq, H, hd) with element strides (q_bstride, q_lstride, q_hstride) [last dim
 * contiguous]; k, v likewise (B, Lk, Hkv, hd); out (B, Lq, H, hd) contiguous. window <= 0:
 * full causal. bfloat16 / float16 (q, k, v, out one dtype, hd a multiple of 8, rows 16-byte
 * aligned): tensor cores (mma.sync, sm_80+), float32 softmax and accumulation, the
 * probabilities rounded to the input dtype for the P V product. Otherwise (float32 in
 * particular): exact float32 arithmetic on the CUDA cores.
 */
typedef struct samba_cu_attn_args {
    int64_t batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim, window;
    float softmax_scale;
    samba_cu_ref q, k, v, out;
    int64_t q_stride[3], k_stride[3], v_stride[3];
} samba_cu_attn_args;
samba_status samba_cu_attn_fwd(const samba_cu_attn_args *a, void *stream);

/*
 * Decode attention over a ring-buffer cache: q, out (B, H, hd); k_cache, v_cache
 * (B, C, Hkv, hd); pos, n_valid (B) int32/int64 device arrays (read by the kernel, so a
 * captured graph needs no change between steps). Valid slots: the n_valid[b] (clamped to
 * [0, C]) slots ending at pos[b] % C. bfloat16 / float16 (one dtype, hd a multiple of 8):
 * split-KV - the cache range is split over enough blocks to fill the GPU, then merged; the
 * float32 scratch for the partial results is taken stream-ordered from the device's memory
 * pool (samba_cu_malloc / samba_cu_free on `stream`, so graph capture records it).
 */
/*
 * Tensor-core variant of the attention kernels: which 0 = prefill, 1 = decode; value 0 =
 * auto (per head dim), 1, 2 (or 3, 4: prefill) = that variant, -1 = query only. Returns the setting (after
 * the change), or -1 for a bad argument. Initially from SAMBA_EXT_ATTN_PREFILL /
 * SAMBA_EXT_ATTN_DECODE (v1 | v2 | v3 | v4 | auto). Results agree up to rounding order.
 */
int samba_cu_attn_variant(int which, int value);
samba_status samba_cu_attn_decode(int64_t batch, int64_t nheads, int64_t nheads_kv,
                                  int64_t headdim, int64_t capacity, samba_cu_ref q,
                                  samba_cu_ref k_cache, samba_cu_ref v_cache, samba_cu_ref pos,
                                  samba_cu_ref n_valid, float softmax_scale, samba_cu_ref out,
                                  void *stream);

/* ---------------------------------------------------------------- norm.cu, rotary.cu, swiglu.cu  */
/* RMSNorm over rows: x (rows, n) with row stride ldx; weight (n); y (rows, n) contiguous.
 * residual (rows, n, row stride ldr) or absent: then residual_out (rows, n) contiguous (may
 * alias residual when ldr == n) = x + residual rounded to its dtype, and y normalises that.
 * One block per row. */
samba_status samba_cu_rmsnorm(int64_t rows, int64_t n, samba_cu_ref x, int64_t ldx,
                              samba_cu_ref residual, int64_t ldr, samba_cu_ref residual_out,
                              samba_cu_ref weight, float eps, samba_cu_ref y, void *stream);
/* y (M, N, row stride ldy) = rms_norm(x [+ residual]) @ w^T (w (N, K), row pitch ldw): as
 * samba_cu_rmsnorm into xn (M, K) contiguous in w's dtype, then samba_cu_gemm (beta 0). One
 * row with the GEMV on runs a single kernel that leaves xn unwritten (fused_gemm.cu);
 * residual_out is written either way. */
samba_status samba_cu_rms_norm_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref x,
                                    int64_t ldx, samba_cu_ref residual, int64_t ldr,
                                    samba_cu_ref residual_out, samba_cu_ref weight, float eps,
                                    samba_cu_ref xn, samba_cu_ref w, int64_t ldw, samba_cu_ref y,
                                    int64_t ldy, void *stream);
/* y (M, N, row stride ldy) = (silu(g) * u) @ w^T, g and u (M, K) with row strides ldg / ldu:
 * as samba_cu_swiglu into h (M, K) contiguous in w's dtype, then samba_cu_gemm (beta 0); one
 * row with the GEMV on runs a single kernel that leaves h unwritten (fused_gemm.cu). */
samba_status samba_cu_swiglu_gemm(int64_t M, int64_t N, int64_t K, samba_cu_ref g, int64_t ldg,
                                  samba_cu_ref u, int64_t ldu, samba_cu_ref h, samba_cu_ref w,
                                  int64_t ldw, samba_cu_ref y, int64_t ldy, void *stream);
/* Rotary (NeoX half split): x, y (B, L, H, hd) with element strides x_s, y_s (last dim
 * contiguous; y may alias x). positions: int32/int64 device array (L) if pos_batched == 0 or
 * (B, L) if 1, plus `offset`; or ptr NULL: position = offset + t. Angles in float64. */
/* The decode step's rotary and K/V cache write: qkv (batch, (H + 2G) hd) with row stride
 * ld_qkv, q and k rotated at positions pos (batch,) (int32/int64), q into q_out (batch, H, hd)
 * contiguous, k into k_cache[b, slots[b]] and v (unrotated) into v_cache[b, slots[b]]; the
 * caches (batch, C, G, hd) with element strides kc_s / vc_s for their first three axes and a
 * unit last stride. slots (batch,) int32/int64, each in [0, C) (not checked here). */
samba_status samba_cu_rotary_kv(int64_t batch, int64_t H, int64_t G, int64_t hd,
                                samba_cu_ref qkv, int64_t ld_qkv, samba_cu_ref pos, double base,
                                samba_cu_ref q_out, samba_cu_ref k_cache, const int64_t *kc_s,
                                samba_cu_ref v_cache, const int64_t *vc_s, samba_cu_ref slots,
                                void *stream);
samba_status samba_cu_rotary(int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim,
                             samba_cu_ref x, const int64_t *x_s, samba_cu_ref positions,
                             int pos_batched, int64_t offset, double base, samba_cu_ref y,
                             const int64_t *y_s, void *stream);
/* y (rows, cols) = silu(gate) * up, rows strided by ld_gate / ld_up / ld_y elements (y may
 * alias gate or up with the same row stride: each element is read, then written, by one
 * thread). */
samba_status samba_cu_swiglu(int64_t rows, int64_t cols, samba_cu_ref gate, int64_t ld_gate,
                             samba_cu_ref up, int64_t ld_up, samba_cu_ref y, int64_t ld_y,
                             void *stream);

#ifdef __cplusplus
}
#endif
#endif
