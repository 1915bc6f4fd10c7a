/*
 * py_scan.c - glue for the selective-scan family (scan.c):
 *   _core.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
 *                        initial_state, return_last_state) -> y | (y, last_state)
 *   _core.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> y
 * All arguments positional, None for the absent optional ones (samba_ext/kernels.py).
 */
#include "common.h"

/* Shape of B or C: (batch, dstate, L) [ngroups 1] or (batch, ngroups, dstate, L); for the
 * decode step (batch, dstate) or (batch, ngroups, dstate) (has_time = 0). Sets *groups and
 * *dstate; checks batch and L. Returns 0 or -1 (ValueError). */
static int
scan_bc_shape(PyArrayObject *m, const char *name, int has_time, npy_intp batch, npy_intp L,
              npy_intp *groups, npy_intp *dstate)
{
    const int nd = PyArray_NDIM(m);
    const int base = has_time ? 3 : 2;

    if (nd != base && nd != base + 1) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)m, "shape");
        PyErr_Format(PyExc_ValueError,
                     has_time ? "%s: expected shape (batch, dstate, seqlen) or (batch, ngroups, "
                                "dstate, seqlen), got shape %S"
                              : "%s: expected shape (batch, dstate) or (batch, ngroups, dstate), "
                                "got shape %S",
                     name, shape);
        Py_XDECREF(shape);
        return -1;
    }
    if (samba_py_dim(m, name, 0, batch, "batch, as in the first input") < 0) {
        return -1;
    }
    *groups = nd == base ? 1 : PyArray_DIM(m, 1);
    *dstate = PyArray_DIM(m, nd == base ? 1 : 2);
    if (has_time && samba_py_dim(m, name, nd - 1, L, "seqlen, as in u") < 0) {
        return -1;
    }
    return 0;
}

/* Shared checks of A, B, C against (batch, dim, seqlen): returns 0 and sets dstate,
 * ngroups, or -1 with an exception naming the argument. */
static int
scan_check_abc(PyArrayObject *A, PyArrayObject *B, PyArrayObject *C, int has_time,
               npy_intp batch, npy_intp dim, npy_intp L, npy_intp *dstate, npy_intp *ngroups)
{
    npy_intp gb, nb, gc, nc;

    if (samba_py_dim(A, "A", 0, dim, "dim") < 0) {
        return -1;
    }
    *dstate = PyArray_DIM(A, 1);
    if (scan_bc_shape(B, "B", has_time, batch, L, &gb, &nb) < 0 ||
        scan_bc_shape(C, "C", has_time, batch, L, &gc, &nc) < 0) {
        return -1;
    }
    if (nb != *dstate) {
        PyErr_Format(PyExc_ValueError, "B: dstate %zd does not match A.shape[1] == %zd",
                     (Py_ssize_t)nb, (Py_ssize_t)*dstate);
        return -1;
    }
    if (nc != *dstate) {
        PyErr_Format(PyExc_ValueError, "C: dstate %zd does not match A.shape[1] == %zd",
                     (Py_ssize_t)nc, (Py_ssize_t)*dstate);
        return -1;
    }
    if (gb < 1) {
        PyErr_Format(PyExc_ValueError, "B: ngroups must be >= 1, got %zd", (Py_ssize_t)gb);
        return -1;
    }
    if (gc != gb) {
        PyErr_Format(PyExc_ValueError, "C: ngroups %zd does not match B's ngroups %zd",
                     (Py_ssize_t)gc, (Py_ssize_t)gb);
        return -1;
    }
    if (dim % gb != 0) {
        PyErr_Format(PyExc_ValueError,
                     "B: ngroups %zd must divide dim %zd (channel d uses group d // (dim // "
                     "ngroups))", (Py_ssize_t)gb, (Py_ssize_t)dim);
        return -1;
    }
    *ngroups = gb;
    return 0;
}

static int
scan_check_vec(PyArrayObject *v, const char *name, npy_intp dim)
{
    return v == NULL ? 0 : samba_py_dim(v, name, 0, dim, "dim");
}

static int
scan_check_same(PyArrayObject *v, const char *name, PyArrayObject *ref, const char *refname)
{
    int i;
    if (v == NULL) {
        return 0;
    }
    for (i = 0; i < PyArray_NDIM(ref); i++) {
        if (PyArray_DIM(v, i) != PyArray_DIM(ref, i)) {
            PyObject *s1 = PyObject_GetAttrString((PyObject *)v, "shape");
            PyObject *s2 = PyObject_GetAttrString((PyObject *)ref, "shape");
            PyErr_Format(PyExc_ValueError, "%s: expected the shape of %s %S, got %S", name,
                         refname, s2, s1);
            Py_XDECREF(s1);
            Py_XDECREF(s2);
            return -1;
        }
    }
    return 0;
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
    if (scan_check_same(delta, "delta", u, "u (batch, dim, seqlen)") < 0 ||
        scan_check_same(z, "z", u, "u (batch, dim, seqlen)") < 0 ||
        scan_check_abc(A, B, C, 1, batch, dim, L, &dstate, &ngroups) < 0 ||
        scan_check_vec(D, "D", dim) < 0 || scan_check_vec(bias, "delta_bias", dim) < 0) {
        goto done;
    }
    if (init != NULL && (samba_py_dim(init, "initial_state", 0, batch, "batch") < 0 ||
                         samba_py_dim(init, "initial_state", 1, dim, "dim") < 0 ||
                         samba_py_dim(init, "initial_state", 2, dstate, "dstate") < 0)) {
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
    if (scan_check_same(dt, "dt", x, "x (batch, dim)") < 0 ||
        scan_check_same(z, "z", x, "x (batch, dim)") < 0 ||
        scan_check_abc(A, B, C, 0, batch, dim, 0, &dstate, &ngroups) < 0 ||
        scan_check_vec(D, "D", dim) < 0 || scan_check_vec(bias, "dt_bias", dim) < 0 ||
        samba_py_dim(state, "state", 0, batch, "batch, as in x") < 0 ||
        samba_py_dim(state, "state", 1, dim, "dim, as in x") < 0 ||
        samba_py_dim(state, "state", 2, dstate, "dstate, as in A") < 0) {
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
     "selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, "
     "return_last_state) -> y or (y, last_state). u, delta, z (batch, dim, seqlen); A (dim, "
     "dstate); B, C (batch, dstate, seqlen) or (batch, ngroups, dstate, seqlen); D, "
     "delta_bias (dim,); initial_state (batch, dim, dstate). None for absent ones."},
    {"selective_state_update", py_selective_state_update, METH_VARARGS,
     "selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> y. "
     "state (batch, dim, dstate) float32 C-contiguous, updated in place; x, dt, z (batch, "
     "dim); A (dim, dstate); B, C (batch, dstate) or (batch, ngroups, dstate); D, dt_bias "
     "(dim,). Returns y (batch, dim)."},
    {NULL, NULL, 0, NULL}};
