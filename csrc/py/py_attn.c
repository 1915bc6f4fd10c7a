/*
 * py_attn.c - glue for the attention kernels (attention.c, attention_decode.c); memory-safety
 * checks only (the argument rules: samba_ext/ops/contracts.py):
 *   swa_attention(q, k, v, window=None, softmax_scale=None) -> out (B, Lq, H, hd)
 *   swa_decode(q, k_cache, v_cache, pos, n_valid, softmax_scale=None) -> out (B, H, hd)
 */
#include "common.h"

#include <math.h>

/* window: None -> 0 (full causal), else an integer (the kernel treats < 1 as full). */
static int
attn_parse_window(PyObject *obj, int64_t *window)
{
    long long w;

    *window = 0;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    w = PyLong_AsLongLong(obj);
    if (w == -1 && PyErr_Occurred()) {
        return -1;
    }
    *window = (int64_t)w;
    return 0;
}

/* softmax_scale: None -> 1/sqrt(headdim), else a number converted to float. */
static int
attn_parse_scale(PyObject *obj, int64_t headdim, float *scale)
{
    double s;

    if (obj == NULL || obj == Py_None) {
        *scale = headdim > 0 ? (float)(1.0 / sqrt((double)headdim)) : 1.0f;
        return 0;
    }
    s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *scale = (float)s;
    return 0;
}

static PyObject *
py_swa_attention(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k", "v", "window", "softmax_scale", NULL};
    PyObject *oq, *ok, *ov, *owin = Py_None, *oscale = Py_None;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *out = NULL;
    PyObject *res = NULL;
    samba_attn_args a;
    samba_py_run run;
    samba_status st;
    npy_intp B, Lq, H, hd, Lk, Hkv;
    npy_intp oshape[4];

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO:swa_attention", kwlist, &oq, &ok,
                                     &ov, &owin, &oscale)) {
        return NULL;
    }
    memset(&a, 0, sizeof(a));
    if (attn_parse_window(owin, &a.window) < 0) {
        return NULL;
    }
    if ((q = samba_py_f32(oq, "q", 4)) == NULL || (k = samba_py_f32(ok, "k", 4)) == NULL ||
        (v = samba_py_f32(ov, "v", 4)) == NULL) {
        goto done;
    }
    B = PyArray_DIM(q, 0);
    Lq = PyArray_DIM(q, 1);
    H = PyArray_DIM(q, 2);
    hd = PyArray_DIM(q, 3);
    Lk = PyArray_DIM(k, 1);
    Hkv = PyArray_DIM(k, 2);
    /* memory safety only; nheads % nheads_kv and seqlen_k >= seqlen_q are the kernel's
     * (SAMBA_ERR_ARG), the rules and their messages samba_ext/ops/contracts.py's */
    if (SAMBA_PY_SHAPE(k, "swa_attention", "k", B, -1, -1, hd) < 0 ||
        SAMBA_PY_SHAPE(v, "swa_attention", "v", B, Lk, Hkv, hd) < 0) {
        goto done;
    }
    if (attn_parse_scale(oscale, (int64_t)hd, &a.softmax_scale) < 0) {
        goto done;
    }
    oshape[0] = B;
    oshape[1] = Lq;
    oshape[2] = H;
    oshape[3] = hd;
    if ((out = samba_py_empty(4, oshape)) == NULL) {
        goto done;
    }
    a.batch = B;
    a.seqlen_q = Lq;
    a.seqlen_k = Lk;
    a.nheads = H;
    a.nheads_kv = Hkv;
    a.headdim = hd;
    a.q = SAMBA_F32(q);
    a.k = SAMBA_F32(k);
    a.v = SAMBA_F32(v);
    a.out = SAMBA_F32(out);
    samba_py_run_begin(&run);
    st = samba_attn_fwd(&a, &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "swa_attention") < 0) {
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(out);
    return res;
}

static PyObject *
py_swa_decode(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k_cache", "v_cache", "pos", "n_valid", "softmax_scale",
                             NULL};
    PyObject *oq, *okc, *ovc, *opos, *onv, *oscale = Py_None;
    PyArrayObject *q = NULL, *kc = NULL, *vc = NULL, *pos = NULL, *nv = NULL, *out = NULL;
    PyObject *res = NULL;
    samba_py_run run;
    samba_status st;
    npy_intp B, H, hd, C, Hkv;
    npy_intp oshape[3];
    float scale;
    const int64_t *pp, *nn;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|O:swa_decode", kwlist, &oq, &okc,
                                     &ovc, &opos, &onv, &oscale)) {
        return NULL;
    }
    if ((q = samba_py_f32(oq, "q", 3)) == NULL ||
        (kc = samba_py_f32(okc, "k_cache", 4)) == NULL ||
        (vc = samba_py_f32(ovc, "v_cache", 4)) == NULL ||
        (pos = samba_py_i64(opos, "pos", 1)) == NULL ||
        (nv = samba_py_i64(onv, "n_valid", 1)) == NULL) {
        goto done;
    }
    B = PyArray_DIM(q, 0);
    H = PyArray_DIM(q, 1);
    hd = PyArray_DIM(q, 2);
    C = PyArray_DIM(kc, 1);
    Hkv = PyArray_DIM(kc, 2);
    /* memory safety only; the kernel refuses (SAMBA_ERR_ARG) GQA mismatches and pos /
     * n_valid outside [0, ...] / [1, capacity] before it reads a cache slot */
    if (SAMBA_PY_SHAPE(kc, "swa_decode", "k_cache", B, -1, -1, hd) < 0 ||
        SAMBA_PY_SHAPE(vc, "swa_decode", "v_cache", B, C, Hkv, hd) < 0 ||
        SAMBA_PY_SHAPE(pos, "swa_decode", "pos", B) < 0 ||
        SAMBA_PY_SHAPE(nv, "swa_decode", "n_valid", B) < 0) {
        goto done;
    }
    pp = (const int64_t *)PyArray_DATA(pos);
    nn = (const int64_t *)PyArray_DATA(nv);
    if (attn_parse_scale(oscale, (int64_t)hd, &scale) < 0) {
        goto done;
    }
    oshape[0] = B;
    oshape[1] = H;
    oshape[2] = hd;
    if ((out = samba_py_empty(3, oshape)) == NULL) {
        goto done;
    }
    samba_py_run_begin(&run);
    st = samba_attn_decode(B, H, Hkv, hd, C, SAMBA_F32(q), SAMBA_F32(kc), SAMBA_F32(vc), pp,
                           nn, scale, SAMBA_F32(out), &run.ctx);
    samba_py_run_end(&run);
    if (samba_py_status(st, "swa_decode") < 0) {
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(q);
    Py_XDECREF(kc);
    Py_XDECREF(vc);
    Py_XDECREF(pos);
    Py_XDECREF(nv);
    Py_XDECREF(out);
    return res;
}

PyMethodDef samba_py_attn_methods[] = {
    {"swa_attention", (PyCFunction)(void (*)(void))py_swa_attention,
     METH_VARARGS | METH_KEYWORDS,
     "swa_attention($module, q, k, v, window=None, softmax_scale=None)\n--\n\n"
     "Causal sliding-window attention with GQA. q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd), "
     "H % Hkv == 0, Lk >= Lq. Query i sits at key position i + Lk - Lq and sees the window "
     "keys ending there (None: all earlier keys). out (B, Lq, H, hd) float32."},
    {"swa_decode", (PyCFunction)(void (*)(void))py_swa_decode, METH_VARARGS | METH_KEYWORDS,
     "swa_decode($module, q, k_cache, v_cache, pos, n_valid, softmax_scale=None)\n--\n\n"
     "Decode attention over a ring-buffer KV cache. q (B, H, hd); k_cache, v_cache "
     "(B, C, Hkv, hd); pos, n_valid (B,) int: the newest key sits in slot pos % C, the "
     "n_valid - 1 older ones before it (mod C). out (B, H, hd) float32."},
    {NULL, NULL, 0, NULL}};
