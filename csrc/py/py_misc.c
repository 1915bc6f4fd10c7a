/*
 * py_misc.c - glue for the small fused ops (norm.c, rotary.c, swiglu.c); memory-safety
 * checks only (the argument rules: samba_ext/ops/contracts.py; the kernels refuse a bad
 * eps / base / odd head dim with SAMBA_ERR_ARG):
 *   rms_norm(x (..., n), weight (n,), eps=1e-5, residual=None) -> y | (y, x + residual)
 *   apply_rotary(x (B, L, H, hd), positions=0, base=10000.0) -> y (B, L, H, hd)
 *   swiglu(gate, up) -> silu(gate) * up
 */
#include "common.h"

#include <math.h>
#include <string.h>

/* 0 if b has exactly a's shape, else ValueError naming b_name / a_name. */
static int
same_shape(PyArrayObject *a, const char *a_name, PyArrayObject *b, const char *b_name)
{
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a))) {
        return 0;
    }
    {
        PyObject *sa = PyObject_GetAttrString((PyObject *)a, "shape");
        PyObject *sb = PyObject_GetAttrString((PyObject *)b, "shape");
        PyErr_Format(PyExc_ValueError, "%s: expected the shape of %s %S, got %S", b_name,
                     a_name, sa, sb);
        Py_XDECREF(sa);
        Py_XDECREF(sb);
    }
    return -1;
}

static PyObject *
py_rms_norm(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "weight", "eps", "residual", NULL};
    PyObject *x_o, *w_o, *r_o = Py_None;
    double eps = 1e-5;
    PyArrayObject *x = NULL, *w = NULL, *r = NULL, *y = NULL, *rout = NULL;
    PyObject *result = NULL;
    npy_intp n, rows;
    int nd;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|dO:rms_norm", kwlist, &x_o, &w_o, &eps,
                                     &r_o)) {
        return NULL;
    }
    x = samba_py_f32(x_o, "x", -1);
    if (x == NULL) {
        goto done;
    }
    nd = PyArray_NDIM(x);
    if (nd < 1) { /* n is x.shape[-1] */
        PyErr_SetString(PyExc_ValueError, "rms_norm: x: expected at least 1 dimension");
        goto done;
    }
    n = PyArray_DIM(x, nd - 1);
    rows = n > 0 ? PyArray_SIZE(x) / n : 0;
    w = samba_py_f32(w_o, "weight", 1);
    if (w == NULL || SAMBA_PY_SHAPE(w, "rms_norm", "weight", n) < 0) {
        goto done;
    }
    if (samba_py_f32_opt(r_o, "residual", -1, &r) < 0 ||
        (r != NULL && same_shape(x, "x", r, "residual") < 0)) {
        goto done;
    }
    y = samba_py_empty(nd, PyArray_DIMS(x));
    if (y == NULL) {
        goto done;
    }
    if (r != NULL) {
        rout = samba_py_empty(nd, PyArray_DIMS(x));
        if (rout == NULL) {
            goto done;
        }
    }
    samba_py_run_begin(&run);
    st = samba_rmsnorm_fwd(rows, n, SAMBA_F32(x), SAMBA_F32_OPT(r),
                           rout != NULL ? SAMBA_F32(rout) : NULL, SAMBA_F32(w), (float)eps,
                           SAMBA_F32(y), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "rms_norm") < 0) {
        goto done;
    }
    if (r != NULL) {
        result = PyTuple_Pack(2, (PyObject *)y, (PyObject *)rout);
    }
    else {
        result = (PyObject *)y;
        Py_INCREF(result);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(r);
    Py_XDECREF(y);
    Py_XDECREF(rout);
    return result;
}

/* positions: int offset (Python int, NumPy integer scalar or 0-D integer array), or an
 * integer array (L,) or (B, L). Returns a new C-contiguous int64 (B, L) array. */
static PyArrayObject *
rotary_positions(PyObject *obj, npy_intp batch, npy_intp seqlen)
{
    npy_intp shape[2] = {batch, seqlen};
    PyArrayObject *pos = NULL, *src = NULL;
    int64_t *p;
    npy_intp b, t;

    if (obj == NULL || obj == Py_None || PyBool_Check(obj) ||
        PyArray_IsScalar(obj, Bool)) {
        PyErr_Format(PyExc_TypeError,
                     "positions: expected an int offset or an int array (seqlen,) or "
                     "(batch, seqlen), got %s", obj == NULL ? "nothing" : Py_TYPE(obj)->tp_name);
        return NULL;
    }
    pos = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_INT64, 0);
    if (pos == NULL) {
        return NULL;
    }
    p = (int64_t *)PyArray_DATA(pos);
    if (PyLong_Check(obj) || PyArray_IsScalar(obj, Integer) ||
        (PyArray_Check(obj) && PyArray_NDIM((PyArrayObject *)obj) == 0)) {
        long long off;
        if (PyArray_Check(obj)) {
            src = samba_py_i64(obj, "positions", 0);
            if (src == NULL) {
                goto fail;
            }
            off = *(int64_t *)PyArray_DATA(src);
            Py_CLEAR(src);
        }
        else {
            PyObject *idx = PyNumber_Index(obj);
            if (idx == NULL) {
                goto fail;
            }
            off = PyLong_AsLongLong(idx);
            Py_DECREF(idx);
            if (off == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "positions: offset does not fit in int64");
                goto fail;
            }
        }
        if (seqlen > 0 && off > INT64_MAX - (long long)(seqlen - 1)) {
            PyErr_SetString(PyExc_ValueError, "positions: offset + seqlen overflows int64");
            goto fail;
        }
        for (b = 0; b < batch; b++) {
            for (t = 0; t < seqlen; t++) {
                p[b * seqlen + t] = (int64_t)off + (int64_t)t;
            }
        }
        return pos;
    }
    src = samba_py_i64(obj, "positions", -1);
    if (src == NULL) {
        goto fail;
    }
    if (PyArray_NDIM(src) == 1) {
        const int64_t *s = (const int64_t *)PyArray_DATA(src);
        if (samba_py_dim(src, "positions", 0, seqlen, "seqlen of x") < 0) {
            goto fail;
        }
        for (b = 0; b < batch; b++) {
            for (t = 0; t < seqlen; t++) {
                p[b * seqlen + t] = s[t];
            }
        }
    }
    else if (PyArray_NDIM(src) == 2) {
        if (samba_py_dim(src, "positions", 0, batch, "batch of x") < 0 ||
            samba_py_dim(src, "positions", 1, seqlen, "seqlen of x") < 0) {
            goto fail;
        }
        if (batch * seqlen > 0) {
            memcpy(p, PyArray_DATA(src), (size_t)(batch * seqlen) * sizeof(int64_t));
        }
    }
    else {
        PyErr_Format(PyExc_ValueError,
                     "positions: expected an int, or an array (seqlen,) or (batch, seqlen), "
                     "got a %d-D array", PyArray_NDIM(src));
        goto fail;
    }
    Py_DECREF(src);
    return pos;
fail:
    Py_XDECREF(src);
    Py_DECREF(pos);
    return NULL;
}

static PyObject *
py_apply_rotary(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "positions", "base", NULL};
    PyObject *x_o, *p_o = NULL;
    double base = 10000.0;
    PyArrayObject *x = NULL, *pos = NULL, *y = NULL;
    PyObject *result = NULL, *zero = NULL;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Od:apply_rotary", kwlist, &x_o, &p_o,
                                     &base)) {
        return NULL;
    }
    x = samba_py_f32(x_o, "x", 4);
    if (x == NULL) {
        goto done;
    }
    if (p_o == NULL) {
        zero = PyLong_FromLong(0);
        if (zero == NULL) {
            goto done;
        }
        p_o = zero;
    }
    pos = rotary_positions(p_o, PyArray_DIM(x, 0), PyArray_DIM(x, 1));
    if (pos == NULL) {
        goto done;
    }
    y = samba_py_empty(4, PyArray_DIMS(x));
    if (y == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_rotary_fwd(PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2),
                          PyArray_DIM(x, 3), SAMBA_F32(x), (const int64_t *)PyArray_DATA(pos),
                          base, SAMBA_F32(y), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "apply_rotary") < 0) {
        goto done;
    }
    result = (PyObject *)y;
    Py_INCREF(result);
done:
    Py_XDECREF(zero);
    Py_XDECREF(x);
    Py_XDECREF(pos);
    Py_XDECREF(y);
    return result;
}

static PyObject *
py_swiglu(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"gate", "up", NULL};
    PyObject *g_o, *u_o;
    PyArrayObject *g = NULL, *u = NULL, *y = NULL;
    PyObject *result = NULL;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:swiglu", kwlist, &g_o, &u_o)) {
        return NULL;
    }
    g = samba_py_f32(g_o, "gate", -1);
    if (g == NULL) {
        goto done;
    }
    u = samba_py_f32(u_o, "up", -1);
    if (u == NULL || same_shape(g, "gate", u, "up") < 0) {
        goto done;
    }
    y = samba_py_empty(PyArray_NDIM(g), PyArray_DIMS(g));
    if (y == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_swiglu_fwd((int64_t)PyArray_SIZE(g), SAMBA_F32(g), SAMBA_F32(u), SAMBA_F32(y),
                          &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "swiglu") < 0) {
        goto done;
    }
    result = (PyObject *)y;
    Py_INCREF(result);
done:
    Py_XDECREF(g);
    Py_XDECREF(u);
    Py_XDECREF(y);
    return result;
}

PyMethodDef samba_py_misc_methods[] = {
    {"rms_norm", (PyCFunction)(void (*)(void))py_rms_norm, METH_VARARGS | METH_KEYWORDS,
     "rms_norm($module, x, weight, eps=1e-05, residual=None)\n--\n\n"
     "x (..., n), weight (n,) -> y, or (y, x + residual) "
     "when residual is given (y then normalises x + residual)"},
    {"apply_rotary", (PyCFunction)(void (*)(void))py_apply_rotary,
     METH_VARARGS | METH_KEYWORDS,
     "apply_rotary($module, x, positions=0, base=10000.0)\n--\n\n"
     "x (B, L, H, hd), positions an int offset | (L,) | (B, L) ints -> new array, NeoX "
     "half-split rotary embedding"},
    {"swiglu", (PyCFunction)(void (*)(void))py_swiglu, METH_VARARGS | METH_KEYWORDS,
     "swiglu($module, gate, up)\n--\n\nsilu(gate) * up (same shapes)"},
    {NULL, NULL, 0, NULL}};
