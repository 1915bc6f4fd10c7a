/*
 * py_bwd_small.c - glue for the backward kernels of the small ops and attention
 * (norm_bwd.c, swiglu_bwd.c, rotary_bwd.c, attention_bwd.c). Positional arguments only;
 * the documented functions are in samba_ext/grad.py. Every shape is checked here too.
 *   rms_norm_bwd(x, weight, eps, residual, dy, dresidual_out) -> (dx, dweight, dresidual|None)
 *       (dresidual is dx itself: the gradient of a sum reaches both addends unchanged)
 *   swiglu_bwd(gate, up, dy) -> (dgate, dup)
 *   apply_rotary_bwd(dy, positions (B, L) int64, base) -> dx
 *   attention_fwd(q, k, v, scale, window_left, window_right, softcap[, alibi_slopes])
 *       -> (out, lse)
 *   attention_bwd(q, k, v, out, lse, dout, scale, window_left, window_right, softcap
 *                 [, alibi_slopes])
 *       -> (dq, dk, dv)
 */
#include "py_bwd.h"

#include <math.h>

#define GIVEN(o) ((o) != NULL && (o) != Py_None)

static PyObject *
py_rms_norm_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_w, *o_r, *o_dy, *o_dro;
    double eps;
    PyArrayObject *x = NULL, *w = NULL, *r = NULL, *dy = NULL, *dro = NULL;
    PyArrayObject *dx = NULL, *dw = NULL, *dr = NULL;
    PyObject *result = NULL;
    npy_intp n, rows, s1[1];
    samba_rmsnorm_bwd_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOdOOO:rms_norm_bwd", &o_x, &o_w, &eps, &o_r, &o_dy, &o_dro)) {
        return NULL;
    }
    if (!(eps >= 0.0) || isinf(eps)) {
        PyErr_SetString(PyExc_ValueError, "eps: expected a finite value >= 0");
        return NULL;
    }
    if ((x = samba_py_f32(o_x, "x", -1)) == NULL) {
        goto done;
    }
    if (PyArray_NDIM(x) < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected shape (..., n), got a 0-D array");
        goto done;
    }
    n = PyArray_DIM(x, PyArray_NDIM(x) - 1);
    rows = n > 0 ? PyArray_SIZE(x) / n : 0;
    s1[0] = n;
    if ((w = bwd_in(o_w, "weight", 1, s1, 0)) == NULL ||
        ((r = bwd_in(o_r, "residual", PyArray_NDIM(x), PyArray_DIMS(x), 1)) == NULL &&
         GIVEN(o_r)) ||
        (dy = bwd_in(o_dy, "dy", PyArray_NDIM(x), PyArray_DIMS(x), 0)) == NULL ||
        ((dro = bwd_in(o_dro, "dresidual_out", PyArray_NDIM(x), PyArray_DIMS(x), 1)) == NULL &&
         GIVEN(o_dro))) {
        goto done;
    }
    if ((dx = samba_py_empty(PyArray_NDIM(x), PyArray_DIMS(x))) == NULL ||
        (dw = bwd_zeros(1, s1)) == NULL) {
        goto done;
    }
    memset(&a, 0, sizeof a);
    a.rows = rows;
    a.n = n;
    a.x = SAMBA_F32(x);
    a.residual = SAMBA_F32_OPT(r);
    a.weight = SAMBA_F32(w);
    a.eps = (float)eps;
    a.dy = SAMBA_F32(dy);
    a.dresidual_out = SAMBA_F32_OPT(dro);
    a.dx = SAMBA_F32(dx);
    a.dresidual = NULL; /* equal to dx: the same array is returned for both */
    a.dweight = SAMBA_F32(dw);
    samba_py_run_begin(&run);
    st = samba_rmsnorm_bwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "rms_norm_bwd") < 0) {
        goto done;
    }
    if (r != NULL) {
        dr = dx;
        Py_INCREF(dr);
    }
    result = Py_BuildValue("(OON)", dx, dw, bwd_or_none(dr));
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(r);
    Py_XDECREF(dy);
    Py_XDECREF(dro);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(dr);
    return result;
}

static PyObject *
py_swiglu_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_g, *o_u, *o_dy;
    PyArrayObject *g = NULL, *u = NULL, *dy = NULL, *dg = NULL, *du = NULL;
    PyObject *result = NULL;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOO:swiglu_bwd", &o_g, &o_u, &o_dy)) {
        return NULL;
    }
    if ((g = samba_py_f32(o_g, "gate", -1)) == NULL ||
        (u = bwd_in(o_u, "up", PyArray_NDIM(g), PyArray_DIMS(g), 0)) == NULL ||
        (dy = bwd_in(o_dy, "dy", PyArray_NDIM(g), PyArray_DIMS(g), 0)) == NULL ||
        (dg = samba_py_empty(PyArray_NDIM(g), PyArray_DIMS(g))) == NULL ||
        (du = samba_py_empty(PyArray_NDIM(g), PyArray_DIMS(g))) == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_swiglu_bwd(PyArray_SIZE(g), SAMBA_F32(g), SAMBA_F32(u), SAMBA_F32(dy),
                          SAMBA_F32(dg), SAMBA_F32(du), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "swiglu_bwd") < 0) {
        goto done;
    }
    result = Py_BuildValue("(OO)", dg, du);
done:
    Py_XDECREF(g);
    Py_XDECREF(u);
    Py_XDECREF(dy);
    Py_XDECREF(dg);
    Py_XDECREF(du);
    return result;
}

static PyObject *
py_apply_rotary_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_dy, *o_pos;
    double base;
    PyArrayObject *dy = NULL, *pos = NULL, *dx = NULL;
    PyObject *result = NULL;
    npy_intp s4[4] = {-1, -1, -1, -1};
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOd:apply_rotary_bwd", &o_dy, &o_pos, &base)) {
        return NULL;
    }
    if (!(base > 0.0) || isinf(base)) {
        PyErr_SetString(PyExc_ValueError, "base: expected a finite value > 0");
        return NULL;
    }
    if ((dy = bwd_in(o_dy, "dy", 4, s4, 0)) == NULL) {
        goto done;
    }
    if (PyArray_DIM(dy, 3) % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "dy: headdim (shape[3]) must be even");
        goto done;
    }
    if ((pos = samba_py_i64(o_pos, "positions", 2)) == NULL ||
        samba_py_dim(pos, "positions", 0, PyArray_DIM(dy, 0), "batch") < 0 ||
        samba_py_dim(pos, "positions", 1, PyArray_DIM(dy, 1), "seqlen") < 0) {
        goto done;
    }
    if ((dx = samba_py_empty(4, PyArray_DIMS(dy))) == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_rotary_bwd(PyArray_DIM(dy, 0), PyArray_DIM(dy, 1), PyArray_DIM(dy, 2),
                          PyArray_DIM(dy, 3), SAMBA_F32(dy), (const int64_t *)PyArray_DATA(pos),
                          base, SAMBA_F32(dx), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "apply_rotary_bwd") < 0) {
        goto done;
    }
    result = (PyObject *)dx;
    Py_INCREF(result);
done:
    Py_XDECREF(dy);
    Py_XDECREF(pos);
    Py_XDECREF(dx);
    return result;
}

/* q, k, v converted and checked; fills the shape part of *a. */
static int
attn_inputs(PyObject *o_q, PyObject *o_k, PyObject *o_v, PyArrayObject **q, PyArrayObject **k,
            PyArrayObject **v, samba_attn_ext_args *a)
{
    npy_intp s4[4] = {-1, -1, -1, -1};

    if ((*q = bwd_in(o_q, "q", 4, s4, 0)) == NULL) {
        return -1;
    }
    s4[0] = PyArray_DIM(*q, 0);
    s4[3] = PyArray_DIM(*q, 3);
    if ((*k = bwd_in(o_k, "k", 4, s4, 0)) == NULL ||
        (*v = bwd_in(o_v, "v", 4, PyArray_DIMS(*k), 0)) == NULL) {
        return -1;
    }
    memset(a, 0, sizeof *a);
    a->batch = PyArray_DIM(*q, 0);
    a->seqlen_q = PyArray_DIM(*q, 1);
    a->nheads = PyArray_DIM(*q, 2);
    a->headdim = PyArray_DIM(*q, 3);
    a->seqlen_k = PyArray_DIM(*k, 1);
    a->nheads_kv = PyArray_DIM(*k, 2);
    if (a->headdim < 1 || a->nheads_kv < 1 || a->nheads % a->nheads_kv != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "k: nheads_kv (shape[2]) must divide nheads of q and headdim be >= 1");
        return -1;
    }
    a->q = SAMBA_F32(*q);
    a->k = SAMBA_F32(*k);
    a->v = SAMBA_F32(*v);
    return 0;
}

static int
attn_options(samba_attn_ext_args *a, double scale, long long wl, long long wr, double cap)
{
    if (!isfinite(scale) || !(cap >= 0.0) || isinf(cap)) {
        PyErr_SetString(PyExc_ValueError,
                        "softmax_scale must be finite and softcap finite and >= 0");
        return -1;
    }
    a->softmax_scale = (float)scale;
    a->softcap = (float)cap;
    a->window_left = wl < 0 ? -1 : (int64_t)wl;
    a->window_right = wr < 0 ? -1 : (int64_t)wr;
    return 0;
}

/* alibi_slopes: None, or (batch, nheads) float32 (samba_ext.grad broadcasts (nheads,) and
 * checks the values); sets a->alibi_slopes, whose array *s keeps alive. */
static int
attn_alibi(PyObject *o, PyArrayObject **s, samba_attn_ext_args *a)
{
    npy_intp s2[2];

    s2[0] = a->batch;
    s2[1] = a->nheads;
    if ((*s = bwd_in(o, "alibi_slopes", 2, s2, 1)) == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    a->alibi_slopes = SAMBA_F32(*s);
    a->alibi_batch_stride = a->nheads;
    return 0;
}

static PyObject *
py_attention_fwd(PyObject *self, PyObject *args)
{
    PyObject *o_q, *o_k, *o_v, *o_alibi = Py_None;
    double scale, cap;
    long long wl, wr;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *out = NULL, *lse = NULL, *alibi = NULL;
    PyObject *result = NULL;
    npy_intp s3[3];
    samba_attn_ext_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOdLLd|O:attention_fwd", &o_q, &o_k, &o_v, &scale, &wl, &wr,
                          &cap, &o_alibi)) {
        return NULL;
    }
    if (attn_inputs(o_q, o_k, o_v, &q, &k, &v, &a) < 0 ||
        attn_options(&a, scale, wl, wr, cap) < 0 || attn_alibi(o_alibi, &alibi, &a) < 0) {
        goto done;
    }
    s3[0] = a.batch;
    s3[1] = a.nheads;
    s3[2] = a.seqlen_q;
    if ((out = samba_py_empty(4, PyArray_DIMS(q))) == NULL ||
        (lse = samba_py_empty(3, s3)) == NULL) {
        goto done;
    }
    a.out = SAMBA_F32(out);
    a.lse = SAMBA_F32(lse);
    samba_py_run_begin(&run);
    st = samba_attn_fwd_lse(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "attention_fwd") < 0) {
        goto done;
    }
    result = Py_BuildValue("(OO)", out, lse);
done:
    Py_XDECREF(alibi);
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(out);
    Py_XDECREF(lse);
    return result;
}

static PyObject *
py_attention_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_q, *o_k, *o_v, *o_out, *o_lse, *o_dout, *o_alibi = Py_None;
    double scale, cap;
    long long wl, wr;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *out = NULL, *lse = NULL, *dout = NULL;
    PyArrayObject *alibi = NULL;
    PyArrayObject *dq = NULL, *dk = NULL, *dv = NULL;
    PyObject *result = NULL;
    npy_intp s3[3];
    samba_attn_ext_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOOOOdLLd|O:attention_bwd", &o_q, &o_k, &o_v, &o_out, &o_lse,
                          &o_dout, &scale, &wl, &wr, &cap, &o_alibi)) {
        return NULL;
    }
    if (attn_inputs(o_q, o_k, o_v, &q, &k, &v, &a) < 0 ||
        attn_options(&a, scale, wl, wr, cap) < 0 || attn_alibi(o_alibi, &alibi, &a) < 0) {
        goto done;
    }
    s3[0] = a.batch;
    s3[1] = a.nheads;
    s3[2] = a.seqlen_q;
    if ((out = bwd_in(o_out, "out", 4, PyArray_DIMS(q), 0)) == NULL ||
        (lse = bwd_in(o_lse, "lse", 3, s3, 0)) == NULL ||
        (dout = bwd_in(o_dout, "dout", 4, PyArray_DIMS(q), 0)) == NULL) {
        goto done;
    }
    if ((dq = samba_py_empty(4, PyArray_DIMS(q))) == NULL ||
        (dk = samba_py_empty(4, PyArray_DIMS(k))) == NULL ||
        (dv = samba_py_empty(4, PyArray_DIMS(k))) == NULL) {
        goto done;
    }
    a.out = SAMBA_F32(out);
    a.lse = SAMBA_F32(lse);
    a.dout = SAMBA_F32(dout);
    a.dq = SAMBA_F32(dq);
    a.dk = SAMBA_F32(dk);
    a.dv = SAMBA_F32(dv);
    samba_py_run_begin(&run);
    st = samba_attn_bwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "attention_bwd") < 0) {
        goto done;
    }
    result = Py_BuildValue("(OOO)", dq, dk, dv);
done:
    Py_XDECREF(alibi);
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(out);
    Py_XDECREF(lse);
    Py_XDECREF(dout);
    Py_XDECREF(dq);
    Py_XDECREF(dk);
    Py_XDECREF(dv);
    return result;
}

PyMethodDef samba_py_bwd_small_methods[] = {
    {"rms_norm_bwd", py_rms_norm_bwd, METH_VARARGS,
     "rms_norm_bwd($module, x, weight, eps, residual, dy, dresidual_out, /)\n--\n\n"
     "-> (dx, dweight, dresidual); use samba_ext.grad.rms_norm_bwd"},
    {"swiglu_bwd", py_swiglu_bwd, METH_VARARGS,
     "swiglu_bwd($module, gate, up, dy, /)\n--\n\n-> (dgate, dup); "
     "use samba_ext.grad.swiglu_bwd"},
    {"apply_rotary_bwd", py_apply_rotary_bwd, METH_VARARGS,
     "apply_rotary_bwd($module, dy, positions, base, /)\n--\n\n"
     "positions (B, L) int64 -> dx; use samba_ext.grad.apply_rotary_bwd"},
    {"attention_fwd", py_attention_fwd, METH_VARARGS,
     "attention_fwd($module, q, k, v, scale, window_left, window_right, softcap, "
     "alibi_slopes=None, /)\n--\n\n-> (out, lse); use samba_ext.grad.attention_fwd"},
    {"attention_bwd", py_attention_bwd, METH_VARARGS,
     "attention_bwd($module, q, k, v, out, lse, dout, scale, window_left, window_right, "
     "softcap, alibi_slopes=None, /)\n--\n\n-> (dq, dk, dv); use samba_ext.grad.attention_bwd"},
    {NULL, NULL, 0, NULL}};
