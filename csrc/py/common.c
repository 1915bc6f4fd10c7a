/*
 * common.c - argument conversion, GIL release with Ctrl-C polling, status -> exception.
 */
#include "common.h"

static const char *
samba_py_type_name(PyObject *obj)
{
    return Py_TYPE(obj)->tp_name;
}

PyArrayObject *
samba_py_f32(PyObject *obj, const char *name, int ndim)
{
    PyArrayObject *tmp = NULL;
    PyArrayObject *res = NULL;

    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    if (PyObject_HasAttrString(obj, "__cuda_array_interface__") && !PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s: got a GPU array (%s) in a CPU call; pass all arrays on one "
                     "device (use samba_ext's public functions, which dispatch by device)",
                     name, samba_py_type_name(obj));
        return NULL;
    }
    if (PyArray_Check(obj)) {
        tmp = (PyArrayObject *)obj;
        Py_INCREF(tmp);
    }
    else {
        tmp = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
        if (tmp == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s: expected a float array (numpy.ndarray of float16/32/64), got %s",
                         name, samba_py_type_name(obj));
            return NULL;
        }
    }
    if (PyArray_DESCR(tmp)->kind != 'f') {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected a floating-point array (float16, float32 or float64), "
                     "got dtype %S; convert with .astype(numpy.float32)",
                     name, (PyObject *)PyArray_DESCR(tmp));
        Py_DECREF(tmp);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(tmp) != ndim) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)tmp, "shape");
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got %d-D with shape %S",
                     name, ndim, PyArray_NDIM(tmp), shape);
        Py_XDECREF(shape);
        Py_DECREF(tmp);
        return NULL;
    }
    res = (PyArrayObject *)PyArray_FROMANY((PyObject *)tmp, NPY_FLOAT32, 0, 0,
                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(tmp);
    return res;
}

int
samba_py_f32_opt(PyObject *obj, const char *name, int ndim, PyArrayObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    *out = samba_py_f32(obj, name, ndim);
    return *out == NULL ? -1 : 0;
}

PyArrayObject *
samba_py_f32_inplace(PyObject *obj, const char *name, int ndim)
{
    PyArrayObject *a;

    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected a numpy.ndarray (float32, C-contiguous) updated in place, "
                     "got %s", name, samba_py_type_name(obj));
        return NULL;
    }
    a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError,
                     "%s: is updated in place and must be float32, got dtype %S; create it "
                     "with dtype=numpy.float32", name, (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got %d-D", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError,
                     "%s: is updated in place and must be float32 in the machine's byte "
                     "order, got dtype %S", name, (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: is updated in place and must be C-contiguous and aligned; pass "
                     "numpy.ascontiguousarray(%s) and keep that array", name, name);
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: is updated in place but is read-only", name);
        return NULL;
    }
    Py_INCREF(a);
    return a;
}

PyArrayObject *
samba_py_i64(PyObject *obj, const char *name, int ndim)
{
    PyArrayObject *tmp;
    PyArrayObject *res;

    tmp = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (tmp == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected an integer array, got %s", name,
                     samba_py_type_name(obj));
        return NULL;
    }
    if (PyArray_DESCR(tmp)->kind != 'i' && PyArray_DESCR(tmp)->kind != 'u') {
        PyErr_Format(PyExc_TypeError, "%s: expected an integer array, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(tmp));
        Py_DECREF(tmp);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(tmp) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got %d-D", name, ndim,
                     PyArray_NDIM(tmp));
        Py_DECREF(tmp);
        return NULL;
    }
    if (PyArray_TYPE(tmp) == NPY_UINT64 && PyArray_SIZE(tmp) > 0) {
        PyObject *mx = PyArray_Max(tmp, NPY_RAVEL_AXIS, NULL);
        PyObject *lim = PyLong_FromLongLong(INT64_MAX);
        int over = -1;
        if (mx != NULL && lim != NULL) {
            over = PyObject_RichCompareBool(mx, lim, Py_GT);
        }
        Py_XDECREF(mx);
        Py_XDECREF(lim);
        if (over != 0) {
            if (over > 0) {
                PyErr_Format(PyExc_ValueError, "%s: uint64 values above 2**63 - 1 do not fit "
                             "in int64", name);
            }
            Py_DECREF(tmp);
            return NULL;
        }
    }
    res = (PyArrayObject *)PyArray_FROMANY((PyObject *)tmp, NPY_INT64, 0, 0,
                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(tmp);
    return res;
}

int
samba_py_shape(PyArrayObject *a, const char *op, const char *name, int ndim,
               const npy_intp *want)
{
    int i, ok;
    PyObject *got, *exp, *item;

    if (a == NULL) {
        return 0;
    }
    ok = PyArray_NDIM(a) == ndim;
    for (i = 0; ok && i < ndim; i++) {
        ok = want[i] < 0 || PyArray_DIM(a, i) == want[i];
    }
    if (ok) {
        return 0;
    }
    got = PyObject_GetAttrString((PyObject *)a, "shape");
    exp = PyTuple_New(ndim);
    for (i = 0; exp != NULL && i < ndim; i++) {
        item = want[i] < 0 ? PyUnicode_FromString("*") : PyLong_FromSsize_t(want[i]);
        if (item == NULL) {
            Py_CLEAR(exp);
            break;
        }
        PyTuple_SET_ITEM(exp, i, item);
    }
    if (got != NULL && exp != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s has shape %S, which does not fit the other arguments (expected "
                     "%S); samba_ext.%s checks the arguments and explains", op, name, got,
                     exp, op);
    }
    Py_XDECREF(got);
    Py_XDECREF(exp);
    return -1;
}

int
samba_py_range(PyArrayObject *a, const char *op, const char *name, int64_t lo, int64_t hi)
{
    const int64_t *p = (const int64_t *)PyArray_DATA(a);
    npy_intp i, n = PyArray_SIZE(a);

    for (i = 0; i < n; i++) {
        if (p[i] < lo || p[i] > hi) {
            PyErr_Format(PyExc_ValueError,
                         "%s: %s[%zd] = %lld is outside [%lld, %lld] (would index out of "
                         "bounds)", op, name, (Py_ssize_t)i, (long long)p[i], (long long)lo,
                         (long long)hi);
            return -1;
        }
    }
    return 0;
}

int
samba_py_dim(PyArrayObject *a, const char *name, int axis, npy_intp expected,
             const char *what)
{
    if (PyArray_DIM(a, axis) != expected) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)a, "shape");
        PyErr_Format(PyExc_ValueError, "%s: expected shape[%d] == %zd (%s), got shape %S",
                     name, axis, (Py_ssize_t)expected, what, shape);
        Py_XDECREF(shape);
        return -1;
    }
    return 0;
}

PyArrayObject *
samba_py_empty(int ndim, const npy_intp *shape)
{
    return (PyArrayObject *)PyArray_EMPTY(ndim, (npy_intp *)shape, NPY_FLOAT32, 0);
}

static int
samba_py_should_stop(void *user)
{
    samba_py_run *r = (samba_py_run *)user;
    int stop;

    PyEval_RestoreThread(r->ts);
    stop = PyErr_CheckSignals() != 0;
    r->ts = PyEval_SaveThread();
    return stop;
}

void
samba_py_run_begin(samba_py_run *r)
{
    r->ctx.n_threads = 0;
    r->ctx.should_stop = samba_py_should_stop;
    r->ctx.user = r;
    r->ts = PyEval_SaveThread();
}

void
samba_py_run_end(samba_py_run *r)
{
    PyEval_RestoreThread(r->ts);
    r->ts = NULL;
}

int
samba_py_status(samba_status s, const char *kernel)
{
    switch (s) {
    case SAMBA_OK:
        return 0;
    case SAMBA_ERR_INTERRUPTED:
        if (!PyErr_Occurred()) {
            PyErr_SetNone(PyExc_KeyboardInterrupt);
        }
        return -1;
    case SAMBA_ERR_ALLOC:
        PyErr_Format(PyExc_MemoryError, "%s: out of memory for scratch buffers", kernel);
        return -1;
    case SAMBA_ERR_ARG:
        PyErr_Format(PyExc_ValueError, "%s: invalid argument (rejected by the C kernel)",
                     kernel);
        return -1;
    default:
        PyErr_Format(PyExc_RuntimeError, "%s: %s", kernel, samba_status_str(s));
        return -1;
    }
}
