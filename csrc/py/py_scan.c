/*
 * py_scan.c - glue for the selective-scan family (scan.c); memory-safety checks only (the
 * argument rules: samba_ext/ops/contracts.py):
 *   _core.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
 *                        initial_state, return_last_state) -> y | (y, last_state)
 *   _core.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> y
 * All arguments positional, None for the absent optional ones (samba_ext/kernels.py).
 */
#include "common.h"

#define OP "selective_scan"
#define OP1 "selective_state_update"

/* B or C: (batch, dstate[, seqlen]) is one group, (batch, ngroups, dstate[, seqlen]) has
 * ngroups; the kernel reads ngroups * dstate [* seqlen] floats per batch row. Sets *groups.
 * Memory-safety check only (the rules and their messages: samba_ext/ops/contracts.py). */
static int
scan_bc(PyArrayObject *m, const char *op, const char *name, int has_time, npy_intp batch,
        npy_intp dim, npy_intp dstate, npy_intp L, npy_intp *groups)
{
    const int grouped = PyArray_NDIM(m) == (has_time ? 4 : 3);
    const npy_intp g = grouped ? PyArray_DIM(m, 1) : 1;

    if (grouped && (g < 1 || dim % g != 0)) {
        PyErr_Format(PyExc_ValueError, "%s: %s: ngroups %zd must be >= 1 and divide dim %zd",
                     op, name, (Py_ssize_t)g, (Py_ssize_t)dim);
        return -1;
    }
    if (*groups > 0 && g != *groups) {
        PyErr_Format(PyExc_ValueError, "%s: %s: ngroups %zd differs from B's %zd", op, name,
                     (Py_ssize_t)g, (Py_ssize_t)*groups);
        return -1;
    }
    *groups = g;
    if (has_time) {
        return grouped ? SAMBA_PY_SHAPE(m, op, name, batch, g, dstate, L)
                       : SAMBA_PY_SHAPE(m, op, name, batch, dstate, L);
    }
    return grouped ? SAMBA_PY_SHAPE(m, op, name, batch, g, dstate)
                   : SAMBA_PY_SHAPE(m, op, name, batch, dstate);
}

static PyObject *
py_selective_scan(PyObject *self, PyObject *args)
{
    PyObject *o_u, *o_delta, *o_A, *o_B, *o_C, *o_D, *o_z, *o_bias, *o_init;
    int softplus = 0, ret_last = 0;
    PyArrayObject *u = NULL, *delta = NULL, *A = NULL, *B = NULL, *C = NULL, *D = NULL;
    PyArrayObject *z = NULL, *bias = NULL, *init = NULL, *y = NULL, *last = NULL;
    PyObject *result = NULL;
    npy_intp batch, dim, L, dstate, ngroups;
    samba_scan_args a;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOOOOOOpOp:selective_scan", &o_u, &o_delta, &o_A, &o_B,
                          &o_C, &o_D, &o_z, &o_bias, &softplus, &o_init, &ret_last)) {
        return NULL;
    }
    if ((u = samba_py_f32(o_u, "u", 3)) == NULL ||
        (delta = samba_py_f32(o_delta, "delta", 3)) == NULL ||
        (A = samba_py_f32(o_A, "A", 2)) == NULL || (B = samba_py_f32(o_B, "B", -1)) == NULL ||
        (C = samba_py_f32(o_C, "C", -1)) == NULL ||
        samba_py_f32_opt(o_D, "D", 1, &D) < 0 || samba_py_f32_opt(o_z, "z", 3, &z) < 0 ||
        samba_py_f32_opt(o_bias, "delta_bias", 1, &bias) < 0 ||
        samba_py_f32_opt(o_init, "initial_state", 3, &init) < 0) {
        goto done;
    }
    batch = PyArray_DIM(u, 0);
    dim = PyArray_DIM(u, 1);
    L = PyArray_DIM(u, 2);
    dstate = PyArray_DIM(A, 1);
    ngroups = 0;
    if (SAMBA_PY_SHAPE(delta, OP, "delta", batch, dim, L) < 0 ||
        SAMBA_PY_SHAPE(A, OP, "A", dim, -1) < 0 ||
        scan_bc(B, OP, "B", 1, batch, dim, dstate, L, &ngroups) < 0 ||
        scan_bc(C, OP, "C", 1, batch, dim, dstate, L, &ngroups) < 0 ||
        SAMBA_PY_SHAPE(D, OP, "D", dim) < 0 || SAMBA_PY_SHAPE(z, OP, "z", batch, dim, L) < 0 ||
        SAMBA_PY_SHAPE(bias, OP, "delta_bias", dim) < 0 ||
        SAMBA_PY_SHAPE(init, OP, "initial_state", batch, dim, dstate) < 0) {
        goto done;
    }
    {
        npy_intp ys[3] = {batch, dim, L};
        npy_intp ss[3] = {batch, dim, dstate};
        if ((y = samba_py_empty(3, ys)) == NULL) {
            goto done;
        }
        if (ret_last && (last = samba_py_empty(3, ss)) == NULL) {
            goto done;
        }
    }
    memset(&a, 0, sizeof(a));
    a.batch = batch;
    a.dim = dim;
    a.dstate = dstate;
    a.seqlen = L;
    a.ngroups = ngroups;
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
    a.final_state = last != NULL ? SAMBA_F32(last) : NULL;
    a.y = SAMBA_F32(y);
    samba_py_run_begin(&run);
    st = samba_scan_fwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "selective_scan") < 0) {
        goto done;
    }
    if (ret_last) {
        result = PyTuple_Pack(2, (PyObject *)y, (PyObject *)last);
    }
    else {
        result = (PyObject *)y;
        Py_INCREF(result);
    }
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
    Py_XDECREF(y);
    Py_XDECREF(last);
    return result;
}

static PyObject *
py_selective_state_update(PyObject *self, PyObject *args)
{
    PyObject *o_state, *o_x, *o_dt, *o_A, *o_B, *o_C, *o_D, *o_z, *o_bias;
    int softplus = 0;
    PyArrayObject *state = NULL, *x = NULL, *dt = NULL, *A = NULL, *B = NULL, *C = NULL;
    PyArrayObject *D = NULL, *z = NULL, *bias = NULL, *y = NULL;
    PyObject *result = NULL;
    npy_intp batch, dim, dstate, ngroups;
    samba_scan_step_args s;
    samba_py_run run;
    samba_status st;

    if (!PyArg_ParseTuple(args, "OOOOOOOOOp:selective_state_update", &o_state, &o_x, &o_dt,
                          &o_A, &o_B, &o_C, &o_D, &o_z, &o_bias, &softplus)) {
        return NULL;
    }
    if ((state = samba_py_f32_inplace(o_state, "state", 3)) == NULL ||
        (x = samba_py_f32(o_x, "x", 2)) == NULL || (dt = samba_py_f32(o_dt, "dt", 2)) == NULL ||
        (A = samba_py_f32(o_A, "A", 2)) == NULL || (B = samba_py_f32(o_B, "B", -1)) == NULL ||
        (C = samba_py_f32(o_C, "C", -1)) == NULL ||
        samba_py_f32_opt(o_D, "D", 1, &D) < 0 || samba_py_f32_opt(o_z, "z", 2, &z) < 0 ||
        samba_py_f32_opt(o_bias, "dt_bias", 1, &bias) < 0) {
        goto done;
    }
    batch = PyArray_DIM(x, 0);
    dim = PyArray_DIM(x, 1);
    dstate = PyArray_DIM(A, 1);
    ngroups = 0;
    if (SAMBA_PY_SHAPE(state, OP1, "state", batch, dim, dstate) < 0 ||
        SAMBA_PY_SHAPE(dt, OP1, "dt", batch, dim) < 0 ||
        SAMBA_PY_SHAPE(A, OP1, "A", dim, -1) < 0 ||
        scan_bc(B, OP1, "B", 0, batch, dim, dstate, 0, &ngroups) < 0 ||
        scan_bc(C, OP1, "C", 0, batch, dim, dstate, 0, &ngroups) < 0 ||
        SAMBA_PY_SHAPE(D, OP1, "D", dim) < 0 || SAMBA_PY_SHAPE(z, OP1, "z", batch, dim) < 0 ||
        SAMBA_PY_SHAPE(bias, OP1, "dt_bias", dim) < 0) {
        goto done;
    }
    {
        npy_intp ys[2] = {batch, dim};
        if ((y = samba_py_empty(2, ys)) == NULL) {
            goto done;
        }
    }
    memset(&s, 0, sizeof(s));
    s.batch = batch;
    s.dim = dim;
    s.dstate = dstate;
    s.ngroups = ngroups;
    s.state = SAMBA_F32(state);
    s.x = SAMBA_F32(x);
    s.dt = SAMBA_F32(dt);
    s.A = SAMBA_F32(A);
    s.B = SAMBA_F32(B);
    s.C = SAMBA_F32(C);
    s.D = SAMBA_F32_OPT(D);
    s.z = SAMBA_F32_OPT(z);
    s.dt_bias = SAMBA_F32_OPT(bias);
    s.dt_softplus = softplus;
    s.y = SAMBA_F32(y);
    samba_py_run_begin(&run);
    st = samba_scan_step(&s, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "selective_state_update") < 0) {
        goto done;
    }
    result = (PyObject *)y;
    Py_INCREF(result);
done:
    Py_XDECREF(state);
    Py_XDECREF(x);
    Py_XDECREF(dt);
    Py_XDECREF(A);
    Py_XDECREF(B);
    Py_XDECREF(C);
    Py_XDECREF(D);
    Py_XDECREF(z);
    Py_XDECREF(bias);
    Py_XDECREF(y);
    return result;
}

PyMethodDef samba_py_scan_methods[] = {
    {"selective_scan", py_selective_scan, METH_VARARGS,
     "selective_scan($module, u, delta, A, B, C, D, z, delta_bias, delta_softplus, "
     "initial_state, return_last_state, /)\n--\n\n"
     "-> y or (y, last_state). u, delta, z (batch, dim, seqlen); A (dim, "
     "dstate); B, C (batch, dstate, seqlen) or (batch, ngroups, dstate, seqlen); D, "
     "delta_bias (dim,); initial_state (batch, dim, dstate). None for absent ones."},
    {"selective_state_update", py_selective_state_update, METH_VARARGS,
     "selective_state_update($module, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, /)"
     "\n--\n\n-> y. "
     "state (batch, dim, dstate) float32 C-contiguous, updated in place; x, dt, z (batch, "
     "dim); A (dim, dstate); B, C (batch, dstate) or (batch, ngroups, dstate); D, dt_bias "
     "(dim,). Returns y (batch, dim)."},
    {NULL, NULL, 0, NULL}};
