/*
 * py_conv.c - glue for the depthwise causal conv1d (conv.c); memory-safety checks only
 * (the argument rules: samba_ext/ops/contracts.py):
 *   causal_conv1d(x, weight, bias=None, activation=None, initial_states=None,
 *                 return_final_states=False, seq_idx=None) -> y | (y, final_states)
 *       (seq_idx (batch, seqlen) int64: samba_conv1d_fwd_seq, without states)
 *   causal_conv1d_update(x, conv_state, weight, bias=None, activation=None) -> y
 */
#include "common.h"

#include <string.h>

/* activation None -> 0, "silu"/"swish" -> 1, anything else -1 with ValueError. */
static int
conv_activation(PyObject *act)
{
    const char *s;

    if (act == NULL || act == Py_None) {
        return 0;
    }
    s = PyUnicode_Check(act) ? PyUnicode_AsUTF8(act) : NULL;
    if (s != NULL && (strcmp(s, "silu") == 0 || strcmp(s, "swish") == 0)) {
        return 1;
    }
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "activation: expected None, \"silu\" or \"swish\", got %R",
                 act);
    return -1;
}

/* weight (dim, width) with 2 <= width <= 4 (the kernels' widths). Memory-safety check only
 * (the rules and their messages: samba_ext/ops/contracts.py). */
static PyArrayObject *
conv_weight(PyObject *obj, const char *op, npy_intp dim)
{
    PyArrayObject *w = samba_py_f32(obj, "weight", 2);

    if (w == NULL) {
        return NULL;
    }
    if (SAMBA_PY_SHAPE(w, op, "weight", dim, -1) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    if (PyArray_DIM(w, 1) < 2 || PyArray_DIM(w, 1) > 4) {
        PyErr_Format(PyExc_ValueError, "%s: weight: width %zd is not 2, 3 or 4", op,
                     (Py_ssize_t)PyArray_DIM(w, 1));
        Py_DECREF(w);
        return NULL;
    }
    return w;
}

static PyObject *
py_causal_conv1d(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "weight", "bias", "activation", "initial_states",
                             "return_final_states", "seq_idx", NULL};
    PyObject *x_o, *w_o, *b_o = Py_None, *act_o = Py_None, *init_o = Py_None, *seq_o = Py_None;
    int ret_final = 0, silu;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *init = NULL, *y = NULL, *fin = NULL;
    PyArrayObject *seq = NULL;
    PyObject *result = NULL;
    npy_intp batch, dim, seqlen, width, fshape[3];
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|OOOpO:causal_conv1d", kwlist, &x_o,
                                     &w_o, &b_o, &act_o, &init_o, &ret_final, &seq_o)) {
        return NULL;
    }
    silu = conv_activation(act_o);
    if (silu < 0) {
        return NULL;
    }
    x = samba_py_f32(x_o, "x", 3);
    if (x == NULL) {
        goto done;
    }
    batch = PyArray_DIM(x, 0);
    dim = PyArray_DIM(x, 1);
    seqlen = PyArray_DIM(x, 2);
    w = conv_weight(w_o, "causal_conv1d", dim);
    if (w == NULL) {
        goto done;
    }
    width = PyArray_DIM(w, 1);
    if (samba_py_f32_opt(b_o, "bias", 1, &b) < 0 ||
        samba_py_f32_opt(init_o, "initial_states", 3, &init) < 0 ||
        SAMBA_PY_SHAPE(b, "causal_conv1d", "bias", dim) < 0 ||
        SAMBA_PY_SHAPE(init, "causal_conv1d", "initial_states", batch, dim, width - 1) < 0) {
        goto done;
    }
    if (seq_o != Py_None) {
        if ((seq = samba_py_i64(seq_o, "seq_idx", 2)) == NULL ||
            SAMBA_PY_SHAPE(seq, "causal_conv1d", "seq_idx", batch, seqlen) < 0) {
            goto done;
        }
        if (init != NULL || ret_final) {
            PyErr_SetString(PyExc_ValueError, "seq_idx: comes without initial_states and "
                                              "return_final_states");
            goto done;
        }
    }
    y = samba_py_empty(3, PyArray_DIMS(x));
    if (y == NULL) {
        goto done;
    }
    if (ret_final) {
        fshape[0] = batch;
        fshape[1] = dim;
        fshape[2] = width - 1;
        fin = samba_py_empty(3, fshape);
        if (fin == NULL) {
            goto done;
        }
    }
    samba_py_run_begin(&run);
    if (seq != NULL) {
        st = samba_conv1d_fwd_seq(batch, dim, seqlen, width, SAMBA_F32(x), SAMBA_F32(w),
                                  SAMBA_F32_OPT(b), (const int64_t *)PyArray_DATA(seq), silu,
                                  SAMBA_F32(y), &run.ctx);
    }
    else {
        st = samba_conv1d_fwd(batch, dim, seqlen, width, SAMBA_F32(x), SAMBA_F32(w),
                              SAMBA_F32_OPT(b), SAMBA_F32_OPT(init),
                              fin != NULL ? SAMBA_F32(fin) : NULL, silu, SAMBA_F32(y), &run.ctx);
    }
    samba_py_run_end(&run);
    if (samba_py_status(st, "causal_conv1d") < 0) {
        goto done;
    }
    if (ret_final) {
        result = PyTuple_Pack(2, (PyObject *)y, (PyObject *)fin);
    }
    else {
        result = (PyObject *)y;
        Py_INCREF(result);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(init);
    Py_XDECREF(y);
    Py_XDECREF(fin);
    Py_XDECREF(seq);
    return result;
}

static PyObject *
py_causal_conv1d_update(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "conv_state", "weight", "bias", "activation", NULL};
    PyObject *x_o, *s_o, *w_o, *b_o = Py_None, *act_o = Py_None;
    PyArrayObject *x = NULL, *state = NULL, *w = NULL, *b = NULL, *y = NULL;
    PyObject *result = NULL;
    npy_intp batch, dim, width;
    int silu;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO:causal_conv1d_update", kwlist,
                                     &x_o, &s_o, &w_o, &b_o, &act_o)) {
        return NULL;
    }
    silu = conv_activation(act_o);
    if (silu < 0) {
        return NULL;
    }
    x = samba_py_f32(x_o, "x", 2);
    if (x == NULL) {
        goto done;
    }
    batch = PyArray_DIM(x, 0);
    dim = PyArray_DIM(x, 1);
    w = conv_weight(w_o, "causal_conv1d_update", dim);
    if (w == NULL) {
        goto done;
    }
    width = PyArray_DIM(w, 1);
    if (samba_py_f32_opt(b_o, "bias", 1, &b) < 0 ||
        (state = samba_py_f32_inplace(s_o, "conv_state", 3)) == NULL ||
        SAMBA_PY_SHAPE(b, "causal_conv1d_update", "bias", dim) < 0 ||
        SAMBA_PY_SHAPE(state, "causal_conv1d_update", "conv_state", batch, dim, width - 1) < 0) {
        goto done;
    }
    y = samba_py_empty(2, PyArray_DIMS(x));
    if (y == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_conv1d_step(batch, dim, width, SAMBA_F32(x), SAMBA_F32(state), SAMBA_F32(w),
                           SAMBA_F32_OPT(b), silu, SAMBA_F32(y), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "causal_conv1d_update") < 0) {
        goto done;
    }
    result = (PyObject *)y;
    Py_INCREF(result);
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(state);
    Py_XDECREF(y);
    return result;
}

PyMethodDef samba_py_conv_methods[] = {
    {"causal_conv1d", (PyCFunction)(void (*)(void))py_causal_conv1d,
     METH_VARARGS | METH_KEYWORDS,
     "causal_conv1d($module, x, weight, bias=None, activation=None, initial_states=None, "
     "return_final_states=False)\n--\n\n"
     "x (B, D, L), weight (D, W), bias (D,), activation None|'silu', "
     "initial_states (B, D, W-1) -> y (B, D, L) "
     "[, final_states (B, D, W-1)]"},
    {"causal_conv1d_update", (PyCFunction)(void (*)(void))py_causal_conv1d_update,
     METH_VARARGS | METH_KEYWORDS,
     "causal_conv1d_update($module, x, conv_state, weight, bias=None, activation=None)\n--\n\n"
     "x (B, D), conv_state (B, D, W-1) float32 in place, weight (D, W), bias (D,) -> y (B, D)"},
    {NULL, NULL, 0, NULL}};
