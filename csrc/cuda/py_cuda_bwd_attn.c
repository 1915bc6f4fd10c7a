/*
 * py_cuda_bwd_attn.c - thin wrappers of the CUDA backward launchers of attention, RMSNorm,
 * SwiGLU and rotary (csrc/cuda/samba_cuda_bwd.h), as py_cuda_kernels.c does for the forwards:
 * arguments positional and already checked (samba_ext/grad.py, samba_ext/cuda/grad_*.py),
 * sizes as ints, arrays as (ptr, dtype) tuples or None, element strides as tuples, streams as
 * int handles. A failed launcher's status becomes the exception of samba_pycu_raise().
 */
#include "py_cuda.h"
#include "samba_cuda_bwd.h"

#include <string.h>

#define REF samba_pycu_ref
#define PTR samba_pycu_ptr
#define I64S samba_pycu_i64s_conv

static void
copy3(int64_t *dst, const samba_pycu_i64s *src)
{
    for (int i = 0; i < 3; ++i) {
        dst[i] = i < src->n ? src->v[i] : 0;
    }
}

/* attention_fwd_lse / attention_bwd(batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim,
 *     left, right, scale, softcap, q, q_s, k, k_s, v, v_s, out, o_s, dout, do_s, lse, dq, dk,
 *     dv, stream[, deterministic[, alibi, alibi_batch_stride]]): deterministic (read by
 *     attention_bwd only, default false) sets a->deterministic (bit-reproducible gradients,
 *     samba_cuda_bwd.h); alibi (a float32 device pointer or None, default None) and its batch
 *     stride set the ALiBi slopes. */
static int
parse_attn(PyObject *args, samba_cu_attn_ext_args *a, void **stream)
{
    samba_pycu_i64s qs, ks, vs, os, ds;
    void *lse, *alibi = NULL;
    long long alibi_bs = 0;
    memset(a, 0, sizeof *a);
    if (!PyArg_ParseTuple(args, "LLLLLLLLffO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&|pO&L",
                          &a->batch, &a->seqlen_q, &a->seqlen_k, &a->nheads, &a->nheads_kv,
                          &a->headdim, &a->window_left, &a->window_right, &a->softmax_scale,
                          &a->softcap, REF, &a->q, I64S, &qs, REF, &a->k, I64S, &ks, REF, &a->v,
                          I64S, &vs, REF, &a->out, I64S, &os, REF, &a->dout, I64S, &ds, PTR, &lse,
                          REF, &a->dq, REF, &a->dk, REF, &a->dv, PTR, stream,
                          &a->deterministic, PTR, &alibi, &alibi_bs)) {
        return 0;
    }
    a->alibi_slopes = (const float *)alibi;
    a->alibi_batch_stride = alibi_bs;
    copy3(a->q_stride, &qs);
    copy3(a->k_stride, &ks);
    copy3(a->v_stride, &vs);
    copy3(a->o_stride, &os);
    copy3(a->do_stride, &ds);
    a->lse = (float *)lse;
    return 1;
}

static PyObject *
py_attention_fwd_lse(PyObject *self, PyObject *args)
{
    samba_cu_attn_ext_args a;
    void *stream;
    if (!parse_attn(args, &a, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_attn_fwd_lse(&a, stream));
}

static PyObject *
py_attention_bwd(PyObject *self, PyObject *args)
{
    samba_cu_attn_ext_args a;
    void *stream;
    if (!parse_attn(args, &a, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_attn_bwd(&a, stream));
}

/* rms_norm_bwd(rows, n, x, ldx, residual, ldr, res_dtype, weight, eps, dy, ldy,
 *              dresidual_out, ldro, dx, dweight, stream) */
static PyObject *
py_rms_norm_bwd(PyObject *self, PyObject *args)
{
    long long rows, n, ldx, ldr, ldy, ldro;
    int res_dtype;
    samba_cu_ref x, res, w, dy, dro, dx, dw;
    float eps;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLO&LO&LiO&fO&LO&LO&O&O&", &rows, &n, REF, &x, &ldx, REF, &res,
                          &ldr, &res_dtype, REF, &w, &eps, REF, &dy, &ldy, REF, &dro, &ldro, REF,
                          &dx, REF, &dw, PTR, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_rmsnorm_bwd(rows, n, x, ldx, res, ldr, res_dtype, w,
                                                       eps, dy, ldy, dro, ldro, dx, dw, stream));
}

/* swiglu_bwd(rows, cols, gate, ld_gate, up, ld_up, dy, ld_dy, dgate, dup, stream) */
static PyObject *
py_swiglu_bwd(PyObject *self, PyObject *args)
{
    long long rows, cols, ldg, ldu, ldd;
    samba_cu_ref g, u, dy, dg, du;
    void *stream;
    if (!PyArg_ParseTuple(args, "LLO&LO&LO&LO&O&O&", &rows, &cols, REF, &g, &ldg, REF, &u, &ldu,
                          REF, &dy, &ldd, REF, &dg, REF, &du, PTR, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_swiglu_bwd(rows, cols, g, ldg, u, ldu, dy, ldd, dg, du,
                                                      stream));
}

/* apply_rotary_bwd(batch, seqlen, nheads, headdim, dy, dy_s, positions, pos_batched, offset,
 *                  base, dx, dx_s, stream) */
static PyObject *
py_apply_rotary_bwd(PyObject *self, PyObject *args)
{
    long long batch, seqlen, nheads, headdim, offset;
    samba_cu_ref dy, pos, dx;
    samba_pycu_i64s ys, xs;
    int batched;
    double base;
    void *stream;
    int64_t dy_s[3], dx_s[3];
    if (!PyArg_ParseTuple(args, "LLLLO&O&O&iLdO&O&O&", &batch, &seqlen, &nheads, &headdim, REF,
                          &dy, I64S, &ys, REF, &pos, &batched, &offset, &base, REF, &dx, I64S,
                          &xs, PTR, &stream)) {
        return NULL;
    }
    copy3(dy_s, &ys);
    copy3(dx_s, &xs);
    return samba_pycu_status_none(samba_cu_rotary_bwd(batch, seqlen, nheads, headdim, dy, dy_s, pos,
                                                      batched, offset, base, dx, dx_s, stream));
}

#define ATTN_ARGS                                                                                \
    "batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim, left, right, scale, softcap, q, "    \
    "q_s, k, k_s, v, v_s, out, o_s, dout, do_s, lse, dq, dk, dv, stream"
#define ATTN_SIG ATTN_ARGS ", deterministic=False, alibi=None, alibi_batch_stride=0, /)"

PyMethodDef samba_pycu_bwd_attn_methods[] = {
    {"attention_fwd_lse", py_attention_fwd_lse, METH_VARARGS,
     "attention_fwd_lse($module, " ATTN_SIG
     "\n--\n\nLaunch the attention forward that also writes lse (see py_cuda_bwd_attn.c)."},
    {"attention_bwd", py_attention_bwd, METH_VARARGS,
     "attention_bwd($module, " ATTN_SIG
     "\n--\n\nLaunch the attention backward (see py_cuda_bwd_attn.c)."},
    {"rms_norm_bwd", py_rms_norm_bwd, METH_VARARGS,
     "rms_norm_bwd($module, rows, n, x, ldx, residual, ldr, res_dtype, weight, eps, dy, ldy, "
     "dresidual_out, ldro, dx, dweight, stream, /)"
     "\n--\n\nLaunch the RMSNorm backward (see py_cuda_bwd_attn.c)."},
    {"swiglu_bwd", py_swiglu_bwd, METH_VARARGS,
     "swiglu_bwd($module, rows, cols, gate, ld_gate, up, ld_up, dy, ld_dy, dgate, dup, stream, /)"
     "\n--\n\nLaunch the SwiGLU backward (see py_cuda_bwd_attn.c)."},
    {"apply_rotary_bwd", py_apply_rotary_bwd, METH_VARARGS,
     "apply_rotary_bwd($module, batch, seqlen, nheads, headdim, dy, dy_s, positions, "
     "pos_batched, offset, base, dx, dx_s, stream, /)"
     "\n--\n\nLaunch the rotary backward (see py_cuda_bwd_attn.c)."},
    {NULL, NULL, 0, NULL}};
