/*
 * py_cuda_kernels.c - one thin wrapper per CUDA launcher. Arguments are positional and
 * already checked (samba_ext/ops/contracts.py, samba_ext/cuda/ops.py): sizes as ints,
 * arrays as (ptr, dtype) tuples or None, element strides as tuples, streams as int handles
 * (0 = legacy default stream).
 */
#include "py_cuda.h"

#include <string.h>

#define REF samba_pycu_ref
#define PTR samba_pycu_ptr
#define I64S samba_pycu_i64s_conv

static PyObject *
done(samba_status s)
{
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    Py_RETURN_NONE;
}

static void
copy_strides(int64_t *dst, const samba_pycu_i64s *src, int n)
{
    for (int i = 0; i < n; ++i) {
        dst[i] = i < src->n ? src->v[i] : 0;
    }
}

/* selective_scan(batch, dim, dstate, seqlen, ngroups, u, delta, A, B, C, D, z, delta_bias,
 *                y, u_s, delta_s, z_s, y_s, B_s, C_s, softplus, initial_state,
 *                final_state, stream) */
static PyObject *
py_selective_scan(PyObject *self, PyObject *args)
{
    samba_cu_scan_args a;
    samba_pycu_i64s us, ds, zs, ys, bs, cs;
    void *init, *fin, *stream;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTuple(args, "LLLLLO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&iO&O&O&", &a.batch, &a.dim,
                          &a.dstate, &a.seqlen, &a.ngroups, REF, &a.u, REF, &a.delta, REF, &a.A,
                          REF, &a.B, REF, &a.C, REF, &a.D, REF, &a.z, REF, &a.delta_bias, REF,
                          &a.y, I64S, &us, I64S, &ds, I64S, &zs, I64S, &ys, I64S, &bs, I64S, &cs,
                          &a.delta_softplus, PTR, &init, PTR, &fin, PTR, &stream)) {
        return NULL;
    }
    copy_strides(a.u_s, &us, 3);
    copy_strides(a.delta_s, &ds, 3);
    copy_strides(a.z_s, &zs, 3);
    copy_strides(a.y_s, &ys, 3);
    copy_strides(a.B_s, &bs, 4);
    copy_strides(a.C_s, &cs, 4);
    a.initial_state = init;
    a.final_state = fin;
    return done(samba_cu_scan_fwd(&a, stream));
}

/* The state and the strides of x, z, y, B and C of a one-step update. */
static void
step_strides(samba_cu_scan_step_args *a, void *state, const samba_pycu_i64s *xs,
             const samba_pycu_i64s *zs, const samba_pycu_i64s *ys, const samba_pycu_i64s *bs,
             const samba_pycu_i64s *cs)
{
    a->state = state;
    copy_strides(a->x_s, xs, 2);
    copy_strides(a->z_s, zs, 2);
    copy_strides(a->y_s, ys, 2);
    copy_strides(a->B_s, bs, 3);
    copy_strides(a->C_s, cs, 3);
}

/* selective_state_update(batch, dim, dstate, ngroups, state, x, dt, A, B, C, D, z, dt_bias,
 *                        y, x_s, dt_s, z_s, y_s, B_s, C_s, softplus, stream) */
static PyObject *
py_selective_state_update(PyObject *self, PyObject *args)
{
    samba_cu_scan_step_args a;
    samba_pycu_i64s xs, ds, zs, ys, bs, cs;
    void *state, *stream;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTuple(args, "LLLLO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&O&iO&", &a.batch, &a.dim,
                          &a.dstate, &a.ngroups, PTR, &state, REF, &a.x, REF, &a.dt, REF, &a.A,
                          REF, &a.B, REF, &a.C, REF, &a.D, REF, &a.z, REF, &a.dt_bias, REF,
                          &a.y, I64S, &xs, I64S, &ds, I64S, &zs, I64S, &ys, I64S, &bs, I64S,
                          &cs, &a.dt_softplus, PTR, &stream)) {
        return NULL;
    }
    step_strides(&a, state, &xs, &zs, &ys, &bs, &cs);
    copy_strides(a.dt_s, &ds, 2);
    return done(samba_cu_scan_step(&a, stream));
}

/* dt_state_update(batch, dim, dstate, ngroups, R, state, x, dt_in, ld_dt_in, dt_w, dt_buf, A,
 *                 B, C, D, z, dt_bias, y, x_s, z_s, y_s, B_s, C_s, softplus, stream) */
static PyObject *
py_dt_state_update(PyObject *self, PyObject *args)
{
    samba_cu_scan_step_args a;
    samba_pycu_i64s xs, zs, ys, bs, cs;
    samba_cu_ref dt_in, dt_w, dt_buf;
    long long R, ld;
    void *state, *stream;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTuple(args, "LLLLLO&O&O&LO&O&O&O&O&O&O&O&O&O&O&O&O&O&iO&", &a.batch, &a.dim,
                          &a.dstate, &a.ngroups, &R, PTR, &state, REF, &a.x, REF, &dt_in, &ld,
                          REF, &dt_w, REF, &dt_buf, REF, &a.A, REF, &a.B, REF, &a.C, REF, &a.D,
                          REF, &a.z, REF, &a.dt_bias, REF, &a.y, I64S, &xs, I64S, &zs, I64S, &ys,
                          I64S, &bs, I64S, &cs, &a.dt_softplus, PTR, &stream)) {
        return NULL;
    }
    step_strides(&a, state, &xs, &zs, &ys, &bs, &cs);
    return done(samba_cu_dt_state_update(&a, R, dt_in, ld, dt_w, dt_buf, stream));
}

/* causal_conv1d(batch, dim, seqlen, width, x, x_s, weight, bias, initial_states,
 *               final_states, seq_idx, seq_s, silu, y, y_s, stream)
 * seq_idx: None or an int32 / int64 (batch, seqlen) ref, seq_s its 2 strides */
static PyObject *
py_causal_conv1d(PyObject *self, PyObject *args)
{
    long long batch, dim, seqlen, width;
    samba_cu_ref x, w, bias, seq, y;
    samba_pycu_i64s xs, ss, ys;
    void *init, *fin, *stream;
    int silu;
    if (!PyArg_ParseTuple(args, "LLLLO&O&O&O&O&O&O&O&iO&O&O&", &batch, &dim, &seqlen, &width,
                          REF, &x, I64S, &xs, REF, &w, REF, &bias, PTR, &init, PTR, &fin, REF,
                          &seq, I64S, &ss, &silu, REF, &y, I64S, &ys, PTR, &stream)) {
        return NULL;
    }
    int64_t x_s[3], s_s[2], y_s[3];
    copy_strides(x_s, &xs, 3);
    copy_strides(s_s, &ss, 2);
    copy_strides(y_s, &ys, 3);
    return done(samba_cu_conv1d_fwd(batch, dim, seqlen, width, x, x_s, w, bias, init, fin, seq,
                                    s_s, silu, y, y_s, stream));
}

/* causal_conv1d_update(batch, dim, width, x, x_s, conv_state, weight, bias, silu, y, y_s,
 *                      stream) */
static PyObject *
py_causal_conv1d_update(PyObject *self, PyObject *args)
{
    long long batch, dim, width;
    samba_cu_ref x, w, bias, y;
    samba_pycu_i64s xs, ys;
    void *state, *stream;
    int silu;
    if (!PyArg_ParseTuple(args, "LLLO&O&O&O&O&iO&O&O&", &batch, &dim, &width, REF, &x, I64S, &xs,
                          PTR, &state, REF, &w, REF, &bias, &silu, REF, &y, I64S, &ys, PTR,
                          &stream)) {
        return NULL;
    }
    int64_t x_s[2], y_s[2];
    copy_strides(x_s, &xs, 2);
    copy_strides(y_s, &ys, 2);
    return done(samba_cu_conv1d_step(batch, dim, width, x, x_s, state, w, bias, silu, y, y_s,
                                     stream));
}

/* swa_attention(batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim, window, scale,
 *               q, q_s, k, k_s, v, v_s, out, stream) */
static PyObject *
py_swa_attention(PyObject *self, PyObject *args)
{
    samba_cu_attn_args a;
    samba_pycu_i64s qs, ks, vs;
    void *stream;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTuple(args, "LLLLLLLfO&O&O&O&O&O&O&O&", &a.batch, &a.seqlen_q, &a.seqlen_k,
                          &a.nheads, &a.nheads_kv, &a.headdim, &a.window, &a.softmax_scale, REF,
                          &a.q, I64S, &qs, REF, &a.k, I64S, &ks, REF, &a.v, I64S, &vs, REF,
                          &a.out, PTR, &stream)) {
        return NULL;
    }
    copy_strides(a.q_stride, &qs, 3);
    copy_strides(a.k_stride, &ks, 3);
    copy_strides(a.v_stride, &vs, 3);
    return done(samba_cu_attn_fwd(&a, stream));
}

/* swa_decode(batch, nheads, nheads_kv, headdim, capacity, q, k_cache, v_cache, pos, n_valid,
 *            scale, out, stream) */
static PyObject *
py_swa_decode(PyObject *self, PyObject *args)
{
    long long batch, nheads, nheads_kv, headdim, capacity;
    samba_cu_ref q, k, v, pos, nv, out;
    float scale;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLLLO&O&O&O&O&fO&O&", &batch, &nheads, &nheads_kv, &headdim,
                          &capacity, REF, &q, REF, &k, REF, &v, REF, &pos, REF, &nv, &scale, REF,
                          &out, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_attn_decode(batch, nheads, nheads_kv, headdim, capacity, q, k, v, pos,
                                      nv, scale, out, stream));
}

/* _attn_variant(which, value) -> the setting: which 0 = prefill, 1 = decode; value -1 = query,
 * 0 = auto, 1, 2 (3, 4: prefill) = that tensor-core variant (samba_cuda.h). Private: tests and
 * benchmarks/gpu_attention.py compare the variants in one process. */
static PyObject *
py_attn_variant(PyObject *self, PyObject *args)
{
    int which, value;
    if (!PyArg_ParseTuple(args, "ii", &which, &value)) {
        return NULL;
    }
    int r = samba_cu_attn_variant(which, value);
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "_attn_variant: which must be 0 or 1 and value -1..%d, "
                     "got which=%d, value=%d", which == 0 ? 4 : 2, which, value);
        return NULL;
    }
    return PyLong_FromLong(r);
}

/* rms_norm(rows, n, x, ldx, residual, ldr, residual_out, weight, eps, y, stream) */
static PyObject *
py_rms_norm(PyObject *self, PyObject *args)
{
    long long rows, n, ldx, ldr;
    samba_cu_ref x, res, res_out, w, y;
    float eps;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLO&LO&LO&O&fO&O&", &rows, &n, REF, &x, &ldx, REF, &res, &ldr,
                          REF, &res_out, REF, &w, &eps, REF, &y, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_rmsnorm(rows, n, x, ldx, res, ldr, res_out, w, eps, y, stream));
}

/* rms_norm_gemm(M, N, K, x, ldx, residual, ldr, residual_out, weight, eps, xn, w, ldw, y, ldy,
 *               stream) */
static PyObject *
py_rms_norm_gemm(PyObject *self, PyObject *args)
{
    long long M, N, K, ldx, ldr, ldw, ldy;
    samba_cu_ref x, res, res_out, nw, xn, w, y;
    float eps;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLO&LO&LO&O&fO&O&LO&LO&", &M, &N, &K, REF, &x, &ldx, REF, &res,
                          &ldr, REF, &res_out, REF, &nw, &eps, REF, &xn, REF, &w, &ldw, REF, &y,
                          &ldy, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_rms_norm_gemm(M, N, K, x, ldx, res, ldr, res_out, nw, eps, xn, w, ldw,
                                       y, ldy, stream));
}

/* swiglu_gemm(M, N, K, gate, ld_gate, up, ld_up, h, w, ldw, y, ldy, stream) */
static PyObject *
py_swiglu_gemm(PyObject *self, PyObject *args)
{
    long long M, N, K, ldg, ldu, ldw, ldy;
    samba_cu_ref g, u, h, w, y;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLO&LO&LO&O&LO&LO&", &M, &N, &K, REF, &g, &ldg, REF, &u, &ldu,
                          REF, &h, REF, &w, &ldw, REF, &y, &ldy, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_swiglu_gemm(M, N, K, g, ldg, u, ldu, h, w, ldw, y, ldy, stream));
}

/* rotary_kv(batch, H, G, hd, qkv, ld_qkv, pos, base, q_out, k_cache, kc_s, v_cache, vc_s,
 *           slots, stream) */
static PyObject *
py_rotary_kv(PyObject *self, PyObject *args)
{
    long long batch, H, G, hd, ld;
    samba_cu_ref qkv, pos, q, kc, vc, slots;
    samba_pycu_i64s ks, vs;
    double base;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLLO&LO&dO&O&O&O&O&O&O&", &batch, &H, &G, &hd, REF, &qkv, &ld,
                          REF, &pos, &base, REF, &q, REF, &kc, I64S, &ks, REF, &vc, I64S, &vs,
                          REF, &slots, PTR, &stream)) {
        return NULL;
    }
    int64_t kc_s[3], vc_s[3];
    copy_strides(kc_s, &ks, 3);
    copy_strides(vc_s, &vs, 3);
    return done(samba_cu_rotary_kv(batch, H, G, hd, qkv, ld, pos, base, q, kc, kc_s, vc, vc_s,
                                   slots, stream));
}

/* apply_rotary(batch, seqlen, nheads, headdim, x, x_s, positions, pos_batched, offset, base,
 *              y, y_s, stream) */
static PyObject *
py_apply_rotary(PyObject *self, PyObject *args)
{
    long long batch, seqlen, nheads, headdim, offset;
    samba_cu_ref x, pos, y;
    samba_pycu_i64s xs, ys;
    int batched;
    double base;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLLO&O&O&iLdO&O&O&", &batch, &seqlen, &nheads, &headdim, REF,
                          &x, I64S, &xs, REF, &pos, &batched, &offset, &base, REF, &y, I64S, &ys,
                          PTR, &stream)) {
        return NULL;
    }
    int64_t x_s[3], y_s[3];
    copy_strides(x_s, &xs, 3);
    copy_strides(y_s, &ys, 3);
    return done(samba_cu_rotary(batch, seqlen, nheads, headdim, x, x_s, pos, batched, offset,
                                base, y, y_s, stream));
}

/* swiglu(rows, cols, gate, ld_gate, up, ld_up, y, ld_y, stream) */
static PyObject *
py_swiglu(PyObject *self, PyObject *args)
{
    long long rows, cols, ldg, ldu, ldy;
    samba_cu_ref g, u, y;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLO&LO&LO&LO&", &rows, &cols, REF, &g, &ldg, REF, &u, &ldu, REF,
                          &y, &ldy, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_swiglu(rows, cols, g, ldg, u, ldu, y, ldy, stream));
}

/* gemm(M, N, K, x, ldx, w, ldw, y, ldy, beta, stream): y = x @ w^T (+ beta y) */
static PyObject *
py_gemm(PyObject *self, PyObject *args)
{
    long long M, N, K, ldx, ldw, ldy;
    samba_cu_ref x, w, y;
    float beta;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLLO&LO&LO&LfO&", &M, &N, &K, REF, &x, &ldx, REF, &w, &ldw, REF,
                          &y, &ldy, &beta, PTR, &stream)) {
        return NULL;
    }
    return done(samba_cu_gemm(M, N, K, x, ldx, w, ldw, y, ldy, beta, stream));
}

/* gemm_batched(transa, transb, m, n, k, A, lda, sA, B, ldb, sB, C, ldc, sC, batch, beta,
 *              stream): raw column-major cuBLAS */
static PyObject *
py_gemm_batched(PyObject *self, PyObject *args)
{
    int ta, tb;
    long long m, n, k, lda, sa, ldb, sb, ldc, sc, batch;
    samba_cu_ref A, B, C;
    float beta;
    void *stream;
    if (!PyArg_ParseTuple(args, "iiLLLO&LLO&LLO&LLLfO&", &ta, &tb, &m, &n, &k, REF, &A, &lda,
                          &sa, REF, &B, &ldb, &sb, REF, &C, &ldc, &sc, &batch, &beta, PTR,
                          &stream)) {
        return NULL;
    }
    return done(samba_cu_gemm_batched(ta, tb, m, n, k, A, lda, sa, B, ldb, sb, C, ldc, sc, batch,
                                      beta, stream));
}

/* The process-wide switches below share one form: an optional int argument; >= 0 sets the
 * switch first (an unknown value raises ValueError and changes nothing); returns its value. */
static PyObject *
mode_switch(PyObject *args, samba_status (*set)(int), int (*get)(void))
{
    int v = -1;
    if (!PyArg_ParseTuple(args, "|i", &v)) {
        return NULL;
    }
    if (v >= 0 && set(v) != SAMBA_OK) {
        return done(SAMBA_ERR_ARG);
    }
    return PyLong_FromLong(get());
}

/* gemm_mode(mode=-1): the GEMM path (0 cublas*Ex, 1 cuBLASLt, 2 cuBLASLt tuned; see
 * samba_cuda.h). */
static PyObject *
py_gemm_mode(PyObject *self, PyObject *args)
{
    (void)self;
    return mode_switch(args, samba_cu_gemm_set_mode, samba_cu_gemm_mode);
}

/* gemv_mode(on=-1): whether small-M GEMMs run gemv.cu's kernel (1), cuBLAS (0) or the kernel
 * for one row when dependent launch is on (2, the default; SAMBA_EXT_GEMV gives the initial
 * value). */
static PyObject *
py_gemv_mode(PyObject *self, PyObject *args)
{
    (void)self;
    return mode_switch(args, samba_cu_gemv_set, samba_cu_gemv_enabled);
}

/* pdl_mode(on=-1): whether the decode-path kernels use programmatic dependent launch on
 * devices that have it (1) or plain stream order (0; SAMBA_EXT_PDL=0 gives that initially). */
static PyObject *
py_pdl_mode(PyObject *self, PyObject *args)
{
    (void)self;
    return mode_switch(args, samba_cu_pdl_set, samba_cu_pdl_mode);
}

/* gemv_launches(which=0): GEMM calls that ran the GEMV kernel so far (tests check the
 * dispatch); which=1 / 2: those of them with rms_norm / SwiGLU fused (fused_gemm.cu). */
static PyObject *
py_gemv_launches(PyObject *self, PyObject *args)
{
    (void)self;
    int which = 0;
    if (!PyArg_ParseTuple(args, "|i", &which)) {
        return NULL;
    }
    return PyLong_FromLongLong(samba_cu_gemv_launches(which));
}

/* scan_launches(): forward scan calls per kernel so far, (per-channel, split, tile, warp). */
static PyObject *
py_scan_launches(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(LLLL)", samba_cu_scan_launches(0), samba_cu_scan_launches(1),
                         samba_cu_scan_launches(2), samba_cu_scan_launches(3));
}

PyMethodDef samba_pycu_kernel_methods[] = {
    {"scan_launches", py_scan_launches, METH_NOARGS,
     "scan_launches($module, /)"
     "\n--\n\nForward selective-scan calls so far per kernel: (per-channel, split, tile, warp)."},
    {"gemv_launches", py_gemv_launches, METH_VARARGS,
     "gemv_launches($module, which=0, /)"
     "\n--\n\nGEMM calls that ran the GEMV kernel so far in this process (which=1 / 2: "
     "those with rms_norm / SwiGLU fused)."},
    {"gemv_mode", py_gemv_mode, METH_VARARGS,
     "gemv_mode($module, on=-1, /)"
     "\n--\n\nWhether GEMMs of <= 8 bf16/f16 rows run the GEMV kernel (1), cuBLAS (0) or the "
     "kernel for one row where dependent launch is on (2, the default); on >= 0 sets it."},
    {"pdl_mode", py_pdl_mode, METH_VARARGS,
     "pdl_mode($module, on=-1, /)"
     "\n--\n\nWhether the decode-path kernels use programmatic dependent launch on devices of "
     "compute capability 9.0+ (1) or plain stream order (0); on >= 0 sets it."},
    {"gemm_mode", py_gemm_mode, METH_VARARGS,
     "gemm_mode($module, mode=-1, /)"
     "\n--\n\nThe GEMM path (0 cublas*Ex, 1 cuBLASLt, 2 cuBLASLt tuned); mode >= 0 sets it."},
    {"gemm_batched", py_gemm_batched, METH_VARARGS,
     "gemm_batched($module, transa, transb, m, n, k, A, lda, sA, B, ldb, sB, C, ldc, "
     "sC, batch, beta, stream, /)"
     "\n--\n\nLaunch the gemm_batched kernel (arguments: see py_cuda_kernels.c)."},
    {"selective_scan", py_selective_scan, METH_VARARGS,
     "selective_scan($module, batch, dim, dstate, seqlen, ngroups, u, delta, A, B, "
     "C, D, z, delta_bias, y, u_s, delta_s, z_s, y_s, B_s, C_s, softplus, "
     "initial_state, final_state, stream, /)"
     "\n--\n\nLaunch the selective_scan kernel (arguments: see py_cuda_kernels.c)."},
    {"selective_state_update", py_selective_state_update, METH_VARARGS,
     "selective_state_update($module, batch, dim, dstate, ngroups, state, x, dt, A, "
     "B, C, D, z, dt_bias, y, x_s, dt_s, z_s, y_s, B_s, C_s, softplus, stream, /)"
     "\n--\n\nLaunch the selective_state_update kernel (arguments: see py_cuda_kernels.c)."},
    {"causal_conv1d", py_causal_conv1d, METH_VARARGS,
     "causal_conv1d($module, batch, dim, seqlen, width, x, x_s, weight, bias, "
     "initial_states, final_states, seq_idx, seq_s, silu, y, y_s, stream, /)"
     "\n--\n\nLaunch the causal_conv1d kernel (arguments: see py_cuda_kernels.c)."},
    {"causal_conv1d_update", py_causal_conv1d_update, METH_VARARGS,
     "causal_conv1d_update($module, batch, dim, width, x, x_s, conv_state, weight, "
     "bias, silu, y, y_s, stream, /)"
     "\n--\n\nLaunch the causal_conv1d_update kernel (arguments: see py_cuda_kernels.c)."},
    {"swa_attention", py_swa_attention, METH_VARARGS,
     "swa_attention($module, batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim, "
     "window, scale, q, q_s, k, k_s, v, v_s, out, stream, /)"
     "\n--\n\nLaunch the swa_attention kernel (arguments: see py_cuda_kernels.c)."},
    {"swa_decode", py_swa_decode, METH_VARARGS,
     "swa_decode($module, batch, nheads, nheads_kv, headdim, capacity, q, k_cache, "
     "v_cache, pos, n_valid, scale, out, stream, /)"
     "\n--\n\nLaunch the swa_decode kernel (arguments: see py_cuda_kernels.c)."},
    {"_attn_variant", py_attn_variant, METH_VARARGS,
     "_attn_variant($module, which, value, /)"
     "\n--\n\nGet (value -1) or set the tensor-core attention variant (private; see "
     "py_cuda_kernels.c)."},
    {"rms_norm", py_rms_norm, METH_VARARGS,
     "rms_norm($module, rows, n, x, ldx, residual, ldr, residual_out, weight, eps, "
     "y, stream, /)"
     "\n--\n\nLaunch the rms_norm kernel (arguments: see py_cuda_kernels.c)."},
    {"rms_norm_gemm", py_rms_norm_gemm, METH_VARARGS,
     "rms_norm_gemm($module, M, N, K, x, ldx, residual, ldr, residual_out, weight, eps, xn, "
     "w, ldw, y, ldy, stream, /)"
     "\n--\n\nrms_norm then gemm (one kernel for one row where the GEMV runs; arguments: see "
     "py_cuda_kernels.c)."},
    {"swiglu_gemm", py_swiglu_gemm, METH_VARARGS,
     "swiglu_gemm($module, M, N, K, gate, ld_gate, up, ld_up, h, w, ldw, y, ldy, stream, /)"
     "\n--\n\nswiglu then gemm (one kernel for one row where the GEMV runs; arguments: see "
     "py_cuda_kernels.c)."},
    {"dt_state_update", py_dt_state_update, METH_VARARGS,
     "dt_state_update($module, batch, dim, dstate, ngroups, R, state, x, dt_in, ld_dt_in, dt_w, "
     "dt_buf, A, B, C, D, z, dt_bias, y, x_s, z_s, y_s, B_s, C_s, softplus, stream, /)"
     "\n--\n\nMamba's decode step with its dt projection (arguments: see py_cuda_kernels.c)."},
    {"rotary_kv", py_rotary_kv, METH_VARARGS,
     "rotary_kv($module, batch, H, G, hd, qkv, ld_qkv, pos, base, q_out, k_cache, kc_s, "
     "v_cache, vc_s, slots, stream, /)"
     "\n--\n\nThe decode step's rotary and K/V cache write (arguments: see "
     "py_cuda_kernels.c)."},
    {"apply_rotary", py_apply_rotary, METH_VARARGS,
     "apply_rotary($module, batch, seqlen, nheads, headdim, x, x_s, positions, "
     "pos_batched, offset, base, y, y_s, stream, /)"
     "\n--\n\nLaunch the apply_rotary kernel (arguments: see py_cuda_kernels.c)."},
    {"swiglu", py_swiglu, METH_VARARGS,
     "swiglu($module, rows, cols, gate, ld_gate, up, ld_up, y, ld_y, stream, /)"
     "\n--\n\nLaunch the swiglu kernel (arguments: see py_cuda_kernels.c)."},
    {"gemm", py_gemm, METH_VARARGS,
     "gemm($module, M, N, K, x, ldx, w, ldw, y, ldy, beta, stream, /)"
     "\n--\n\nLaunch the gemm kernel (arguments: see py_cuda_kernels.c)."},
    {NULL, NULL, 0, NULL}};
