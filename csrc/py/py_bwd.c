/*
 * py_bwd.c - glue for the backward kernels (*_bwd.c). Positional arguments only; the
 * public, documented functions are in samba_ext/grad.py, which checks arguments first.
 * This file still checks every shape itself so that a direct call cannot crash:
 *   selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
 *                      dout, dfinal_state)
 *       -> (du, ddelta, dA, dB, dC, dD|None, dz|None, ddelta_bias|None, dinitial_state|None)
 *   causal_conv1d_bwd(x, weight, bias, silu, initial_states, dy, dfinal_states[, seq_idx])
 *       -> (dx, dweight, dbias|None, dinitial_states|None)
 */
#include "py_bwd.h"

PyArrayObject *
bwd_in(PyObject *obj, const char *name, int ndim, const npy_intp *shape, int optional)
{
    PyArrayObject *a;
    int i;

    if (optional && (obj == NULL || obj == Py_None)) {
        return NULL;
    }
    a = samba_py_f32(obj, name, ndim);
    if (a == NULL) {
        return NULL;
    }
    for (i = 0; i < ndim; i++) {
        if (shape[i] >= 0 && samba_py_dim(a, name, i, shape[i], "see the docstring") < 0) {
            Py_DECREF(a);
            return NULL;
        }
    }
    return a;
}

PyArrayObject *
bwd_zeros(int ndim, const npy_intp *shape)
{
    return (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)shape, NPY_FLOAT32, 0);
}

PyObject *
bwd_or_none(PyArrayObject *a)
{
    if (a == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(a);
    return (PyObject *)a;
}

/* Was an optional argument given (not NULL / None)? */
#define GIVEN(o) ((o) != NULL && (o) != Py_None)

static PyObject *
py_selective_scan_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_u, *o_delta, *o_A, *o_B, *o_C, *o_D, *o_z, *o_bias, *o_init, *o_dout, *o_dfin;
    int softplus = 0, bc_nd;
    PyArrayObject *u = NULL, *delta = NULL, *A = NULL, *B = NULL, *C = NULL, *D = NULL;
    PyArrayObject *z = NULL, *bias = NULL, *init = NULL, *dout = NULL, *dfin = NULL;
    PyArrayObject *du = NULL, *ddelta = NULL, *dA = NULL, *dB = NULL, *dC = NULL;
    PyArrayObject *dD = NULL, *dz = NULL, *dbias = NULL, *dinit = NULL;
    PyObject *result = NULL;
    npy_intp batch, dim, L, N, G, s3[3], s4[4], s2[2], s1[1];
    samba_scan_bwd_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOOOOOOpOOO:selective_scan_bwd", &o_u, &o_delta, &o_A,
                          &o_B, &o_C, &o_D, &o_z, &o_bias, &softplus, &o_init, &o_dout,
                          &o_dfin)) {
        return NULL;
    }
    s3[0] = s3[1] = s3[2] = -1;
    if ((u = bwd_in(o_u, "u", 3, s3, 0)) == NULL) {
        goto done;
    }
    batch = PyArray_DIM(u, 0);
    dim = PyArray_DIM(u, 1);
    L = PyArray_DIM(u, 2);
    s2[0] = dim;
    s2[1] = -1;
    if ((delta = bwd_in(o_delta, "delta", 3, PyArray_DIMS(u), 0)) == NULL ||
        (A = bwd_in(o_A, "A", 2, s2, 0)) == NULL) {
        goto done;
    }
    N = PyArray_DIM(A, 1);
    bc_nd = PyArray_Check(o_B) ? PyArray_NDIM((PyArrayObject *)o_B) : 4;
    if (bc_nd == 3) {
        s3[0] = batch;
        s3[1] = N;
        s3[2] = L;
        if ((B = bwd_in(o_B, "B", 3, s3, 0)) == NULL || (C = bwd_in(o_C, "C", 3, s3, 0)) == NULL) {
            goto done;
        }
        G = 1;
    }
    else {
        s4[0] = batch;
        s4[1] = -1;
        s4[2] = N;
        s4[3] = L;
        if ((B = bwd_in(o_B, "B", 4, s4, 0)) == NULL) {
            goto done;
        }
        G = PyArray_DIM(B, 1);
        s4[1] = G;
        if ((C = bwd_in(o_C, "C", 4, s4, 0)) == NULL) {
            goto done;
        }
        if (G < 1 || dim % G != 0) {
            PyErr_Format(PyExc_ValueError,
                         "B: ngroups (shape[1]) must divide dim %zd, got %zd", (Py_ssize_t)dim,
                         (Py_ssize_t)G);
            goto done;
        }
    }
    if (N < 1) {
        PyErr_SetString(PyExc_ValueError, "A: dstate (shape[1]) must be >= 1");
        goto done;
    }
    s1[0] = dim;
    s3[0] = batch;
    s3[1] = dim;
    s3[2] = N;
    if ((D = bwd_in(o_D, "D", 1, s1, 1)) == NULL && GIVEN(o_D)) {
        goto done;
    }
    if ((z = bwd_in(o_z, "z", 3, PyArray_DIMS(u), 1)) == NULL && GIVEN(o_z)) {
        goto done;
    }
    if ((bias = bwd_in(o_bias, "delta_bias", 1, s1, 1)) == NULL && GIVEN(o_bias)) {
        goto done;
    }
    if ((init = bwd_in(o_init, "initial_state", 3, s3, 1)) == NULL && GIVEN(o_init)) {
        goto done;
    }
    if ((dout = bwd_in(o_dout, "dout", 3, PyArray_DIMS(u), 0)) == NULL) {
        goto done;
    }
    if ((dfin = bwd_in(o_dfin, "dlast_state", 3, s3, 1)) == NULL && GIVEN(o_dfin)) {
        goto done;
    }
    if ((du = samba_py_empty(3, PyArray_DIMS(u))) == NULL ||
        (ddelta = samba_py_empty(3, PyArray_DIMS(u))) == NULL ||
        (dA = bwd_zeros(2, PyArray_DIMS(A))) == NULL ||
        (dB = bwd_zeros(PyArray_NDIM(B), PyArray_DIMS(B))) == NULL ||
        (dC = bwd_zeros(PyArray_NDIM(C), PyArray_DIMS(C))) == NULL ||
        (D != NULL && (dD = bwd_zeros(1, s1)) == NULL) ||
        (z != NULL && (dz = bwd_zeros(3, PyArray_DIMS(u))) == NULL) ||
        (bias != NULL && (dbias = bwd_zeros(1, s1)) == NULL) ||
        (init != NULL && (dinit = bwd_zeros(3, s3)) == NULL)) {
        goto done;
    }
    memset(&a, 0, sizeof a);
    a.batch = batch;
    a.dim = dim;
    a.dstate = N;
    a.seqlen = L;
    a.ngroups = G;
    a.u = SAMBA_F32(u);
    a.delta = SAMBA_F32(delta);
    a.A = SAMBA_F32(A);
    a.B = SAMBA_F32(B);
    a.C = SAMBA_F32(C);
    a.D = SAMBA_F32_OPT(D);
    a.z = SAMBA_F32_OPT(z);
    a.delta_bias = SAMBA_F32_OPT(bias);
    a.delta_softplus = softplus;
    a.initial_state = SAMBA_F32_OPT(init);
    a.dout = SAMBA_F32(dout);
    a.dfinal_state = SAMBA_F32_OPT(dfin);
    a.du = SAMBA_F32(du);
    a.ddelta = SAMBA_F32(ddelta);
    a.dA = SAMBA_F32(dA);
    a.dB = SAMBA_F32(dB);
    a.dC = SAMBA_F32(dC);
    a.dD = dD != NULL ? SAMBA_F32(dD) : NULL;
    a.dz = dz != NULL ? SAMBA_F32(dz) : NULL;
    a.ddelta_bias = dbias != NULL ? SAMBA_F32(dbias) : NULL;
    a.dinitial_state = dinit != NULL ? SAMBA_F32(dinit) : NULL;
    samba_py_run_begin(&run);
    st = samba_scan_bwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "selective_scan_bwd") < 0) {
        goto done;
    }
    result = Py_BuildValue("(OOOOONNNN)", du, ddelta, dA, dB, dC, bwd_or_none(dD),
                           bwd_or_none(dz), bwd_or_none(dbias), bwd_or_none(dinit));
done:
    Py_XDECREF(u);
    Py_XDECREF(delta);
    Py_XDECREF(A);
    Py_XDECREF(B);
    Py_XDECREF(C);
    Py_XDECREF(D);
    Py_XDECREF(z);
    Py_XDECREF(bias);
    Py_XDECREF(init);
    Py_XDECREF(dout);
    Py_XDECREF(dfin);
    Py_XDECREF(du);
    Py_XDECREF(ddelta);
    Py_XDECREF(dA);
    Py_XDECREF(dB);
    Py_XDECREF(dC);
    Py_XDECREF(dD);
    Py_XDECREF(dz);
    Py_XDECREF(dbias);
    Py_XDECREF(dinit);
    return result;
}

static PyObject *
py_causal_conv1d_bwd(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_w, *o_b, *o_init, *o_dy, *o_dfin, *o_seq = Py_None;
    int silu = 0;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *init = NULL, *dy = NULL, *dfin = NULL;
    PyArrayObject *seq = NULL;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL, *dinit = NULL;
    PyObject *result = NULL;
    npy_intp s3[3], s2[2], s1[1];
    samba_conv1d_bwd_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOpOOO|O:causal_conv1d_bwd", &o_x, &o_w, &o_b, &silu,
                          &o_init, &o_dy, &o_dfin, &o_seq)) {
        return NULL;
    }
    s3[0] = s3[1] = s3[2] = -1;
    if ((x = bwd_in(o_x, "x", 3, s3, 0)) == NULL) {
        goto done;
    }
    s2[0] = PyArray_DIM(x, 1);
    s2[1] = -1;
    if ((w = bwd_in(o_w, "weight", 2, s2, 0)) == NULL) {
        goto done;
    }
    if (PyArray_DIM(w, 1) < 2 || PyArray_DIM(w, 1) > 4) {
        PyErr_Format(PyExc_ValueError, "weight: width (shape[1]) must be 2, 3 or 4, got %zd",
                     (Py_ssize_t)PyArray_DIM(w, 1));
        goto done;
    }
    s1[0] = PyArray_DIM(x, 1);
    s3[0] = PyArray_DIM(x, 0);
    s3[1] = PyArray_DIM(x, 1);
    s3[2] = PyArray_DIM(w, 1) - 1;
    if (((b = bwd_in(o_b, "bias", 1, s1, 1)) == NULL && GIVEN(o_b)) ||
        ((init = bwd_in(o_init, "initial_states", 3, s3, 1)) == NULL && GIVEN(o_init)) ||
        (dy = bwd_in(o_dy, "dy", 3, PyArray_DIMS(x), 0)) == NULL ||
        ((dfin = bwd_in(o_dfin, "dfinal_states", 3, s3, 1)) == NULL && GIVEN(o_dfin))) {
        goto done;
    }
    if (GIVEN(o_seq)) {
        if ((seq = samba_py_i64(o_seq, "seq_idx", 2)) == NULL) {
            goto done;
        }
        if (PyArray_DIM(seq, 0) != PyArray_DIM(x, 0) || PyArray_DIM(seq, 1) != PyArray_DIM(x, 2) ||
            init != NULL || dfin != NULL) {
            PyErr_SetString(PyExc_ValueError, "seq_idx: expected (batch, seqlen) of x, without "
                                              "initial_states and dfinal_states");
            goto done;
        }
    }
    if ((dx = samba_py_empty(3, PyArray_DIMS(x))) == NULL ||
        (dw = bwd_zeros(2, PyArray_DIMS(w))) == NULL ||
        (b != NULL && (db = bwd_zeros(1, s1)) == NULL) ||
        (init != NULL && (dinit = bwd_zeros(3, s3)) == NULL)) {
        goto done;
    }
    memset(&a, 0, sizeof a);
    a.batch = PyArray_DIM(x, 0);
    a.dim = PyArray_DIM(x, 1);
    a.seqlen = PyArray_DIM(x, 2);
    a.width = PyArray_DIM(w, 1);
    a.x = SAMBA_F32(x);
    a.weight = SAMBA_F32(w);
    a.bias = SAMBA_F32_OPT(b);
    a.initial_states = SAMBA_F32_OPT(init);
    a.seq_idx = seq != NULL ? (const int64_t *)PyArray_DATA(seq) : NULL;
    a.silu = silu;
    a.dy = SAMBA_F32(dy);
    a.dfinal_states = SAMBA_F32_OPT(dfin);
    a.dx = SAMBA_F32(dx);
    a.dweight = SAMBA_F32(dw);
    a.dbias = db != NULL ? SAMBA_F32(db) : NULL;
    a.dinitial_states = dinit != NULL ? SAMBA_F32(dinit) : NULL;
    samba_py_run_begin(&run);
    st = samba_conv1d_bwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "causal_conv1d_bwd") < 0) {
        goto done;
    }
    result = Py_BuildValue("(OONN)", dx, dw, bwd_or_none(db), bwd_or_none(dinit));
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(init);
    Py_XDECREF(dy);
    Py_XDECREF(dfin);
    Py_XDECREF(seq);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    Py_XDECREF(dinit);
    return result;
}

PyMethodDef samba_py_bwd_methods[] = {
    {"selective_scan_bwd", py_selective_scan_bwd, METH_VARARGS,
     "selective_scan_bwd($module, u, delta, A, B, C, D, z, delta_bias, delta_softplus, "
     "initial_state, dout, dlast_state, /)\n--\n\n"
     "-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); "
     "use samba_ext.grad.selective_scan_bwd"},
    {"causal_conv1d_bwd", py_causal_conv1d_bwd, METH_VARARGS,
     "causal_conv1d_bwd($module, x, weight, bias, silu, initial_states, dy, dfinal_states, "
     "seq_idx=None, /)"
     "\n--\n\n-> (dx, dweight, dbias, dinitial_states); use samba_ext.grad.causal_conv1d_bwd"},
    {NULL, NULL, 0, NULL}};
