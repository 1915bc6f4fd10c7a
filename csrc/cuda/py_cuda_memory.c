/*
 * py_cuda_memory.c - device memory of the samba_ext._cuda module.
 *
 * Buffer: owns one cudaMallocAsync allocation made on a stream (and keeps the Python object
 * of that stream alive, so the handle stays valid until the free). The memory is released
 * with cudaFreeAsync on the allocation stream (stream-ordered). If a DLPack consumer used it
 * on another stream (add_use), that stream may be destroyed by the time the Buffer dies, so
 * the free first waits for the whole device (the rare cross-stream export case only).
 * A Buffer that dies while its stream is being captured into a graph (the garbage collector
 * runs at any point, also inside a model's step capture) cannot be freed then: a free during
 * capture becomes a free node of the graph, which must free an allocation of that graph. Such
 * frees wait in a list and run at the next allocation or free made outside a capture (or at
 * flush_frees()); buffers allocated inside the capture are the graph's and are freed at once.
 * Also: host <-> device copies, memset, strided copies with dtype conversion, pool trim and
 * statistics.
 */
#include "py_cuda.h"

#include <string.h>

/* ------------------------------------------------------------------ Buffer ----------- */

typedef struct {
    PyObject_HEAD void *ptr;
    Py_ssize_t nbytes;
    int device;
    void *stream;
    PyObject *keep; /* the Python stream object of `stream` (kept alive), or NULL */
    int foreign;    /* used on another stream (DLPack consumer): synchronize before free */
    int graph;      /* allocated while `stream` was being captured: a graph allocation */
} BufferObject;

/* ------------------------------------------------------------------ deferred frees ---- */

typedef struct {
    void *ptr, *stream;
    int device, foreign;
    PyObject *keep; /* the reference the Buffer held */
} DeferredFree;

static DeferredFree *g_deferred; /* under the GIL */
static Py_ssize_t g_ndeferred, g_cap_deferred;

/* Free ptr on its device and stream (device made current for the call, then put back).
 * Errors cannot be raised here: a failed free leaves the memory in the pool (a broken context
 * is reported by the next launch anyway). */
static void
free_now(void *ptr, void *stream, int device, int foreign)
{
    int prev = -1;
    if (samba_cu_exchange_device(device, &prev) == SAMBA_OK) {
        if (foreign) {
            /* A consumer used the memory on its own stream, which may be gone by now:
             * wait for all work of the device rather than for a stream handle. */
            samba_cu_device_sync();
        }
        samba_cu_free(ptr, stream);
    }
    samba_cu_restore_device(prev);
}

/* Run the deferred frees whose stream is no longer being captured. */
static void
flush_deferred(void)
{
    Py_ssize_t i = 0;
    while (i < g_ndeferred) {
        DeferredFree d = g_deferred[i];
        int prev = -1, cap = -1;
        if (samba_cu_exchange_device(d.device, &prev) == SAMBA_OK) {
            cap = samba_cu_stream_capturing(d.stream);
        }
        samba_cu_restore_device(prev);
        if (cap != 0) {
            ++i;
            continue;
        }
        g_deferred[i] = g_deferred[--g_ndeferred];
        free_now(d.ptr, d.stream, d.device, d.foreign);
        Py_XDECREF(d.keep);
    }
}

/* Queue b's free (taking over its reference to the stream object); 0 if there is no room. */
static int
defer_free(BufferObject *b)
{
    if (g_ndeferred == g_cap_deferred) {
        Py_ssize_t cap = g_cap_deferred ? 2 * g_cap_deferred : 16;
        DeferredFree *p = PyMem_RawRealloc(g_deferred, (size_t)cap * sizeof(DeferredFree));
        if (p == NULL) {
            return 0;
        }
        g_deferred = p;
        g_cap_deferred = cap;
    }
    DeferredFree d = {b->ptr, b->stream, b->device, b->foreign, b->keep};
    g_deferred[g_ndeferred++] = d;
    b->keep = NULL;
    return 1;
}

/* 1 if `stream` on `device` is being captured (or that cannot be told), else 0. */
static int
capturing_on(void *stream, int device)
{
    int prev = -1, cap = -1;
    if (samba_cu_exchange_device(device, &prev) == SAMBA_OK) {
        cap = samba_cu_stream_capturing(stream);
    }
    samba_cu_restore_device(prev);
    return cap != 0;
}

static PyObject *
Buffer_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"nbytes", "device", "stream", "keep", NULL};
    Py_ssize_t nbytes;
    int device;
    void *stream = NULL;
    PyObject *keep = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ni|O&O", kwlist, &nbytes, &device,
                                     samba_pycu_ptr, &stream, &keep)) {
        return NULL;
    }
    if (nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be >= 0");
        return NULL;
    }
    if (g_ndeferred > 0) {
        flush_deferred();
    }
    BufferObject *b = (BufferObject *)type->tp_alloc(type, 0);
    if (b == NULL) {
        return NULL;
    }
    b->ptr = NULL; /* until allocated: a failure below frees nothing */
    b->keep = NULL;
    /* Allocated with `device` current; the caller's current device is put back after. */
    int prev = -1;
    void *ptr = NULL;
    samba_status s = samba_cu_exchange_device(device, &prev);
    int graph = 0;
    if (s == SAMBA_OK) {
        s = samba_cu_malloc(&ptr, (size_t)nbytes, stream);
        graph = samba_cu_stream_capturing(stream) == 1;
    }
    samba_status r = samba_cu_restore_device(prev);
    if (s == SAMBA_OK && r != SAMBA_OK) {
        samba_cu_free(ptr, stream); /* still on `device`: the restore failed */
        s = r;
    }
    if (s != SAMBA_OK) {
        Py_DECREF(b);
        return samba_pycu_raise(s);
    }
    b->ptr = ptr;
    b->nbytes = nbytes;
    b->device = device;
    b->stream = stream;
    b->keep = (keep != NULL && keep != Py_None) ? keep : NULL;
    Py_XINCREF(b->keep);
    b->foreign = 0;
    b->graph = graph;
    return (PyObject *)b;
}

static void
Buffer_dealloc(BufferObject *b)
{
    if (b->ptr != NULL) {
        /* The free runs on the buffer's device; the thread's current device is put back
         * afterwards (a destructor runs at any point of the caller's code, e.g. inside torch's
         * work on another device). */
        if (b->graph || !capturing_on(b->stream, b->device) || !defer_free(b)) {
            free_now(b->ptr, b->stream, b->device, b->foreign);
        }
        b->ptr = NULL;
    }
    Py_CLEAR(b->keep);
    Py_TYPE(b)->tp_free((PyObject *)b);
    if (g_ndeferred > 0) {
        flush_deferred();
    }
}

static PyObject *
Buffer_add_use(BufferObject *b, PyObject *arg)
{
    void *s = NULL;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    if (s != b->stream) {
        b->foreign = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *
Buffer_get_ptr(BufferObject *b, void *c)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)b->ptr);
}

static PyObject *
Buffer_get_nbytes(BufferObject *b, void *c)
{
    return PyLong_FromSsize_t(b->nbytes);
}

static PyObject *
Buffer_get_device(BufferObject *b, void *c)
{
    return PyLong_FromLong(b->device);
}

static PyObject *
Buffer_get_stream(BufferObject *b, void *c)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)b->stream);
}

static PyObject *
Buffer_get_keep(BufferObject *b, void *c)
{
    PyObject *k = b->keep ? b->keep : Py_None;
    Py_INCREF(k);
    return k;
}

static PyMethodDef Buffer_methods[] = {
    {"add_use", (PyCFunction)Buffer_add_use, METH_O,
     "add_use(stream): the buffer is used on `stream`; its free will wait for the device."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Buffer_getset[] = {
    {"ptr", (getter)Buffer_get_ptr, NULL, "device pointer (int)", NULL},
    {"nbytes", (getter)Buffer_get_nbytes, NULL, "size in bytes", NULL},
    {"device", (getter)Buffer_get_device, NULL, "CUDA device index", NULL},
    {"stream", (getter)Buffer_get_stream, NULL, "allocation stream (int handle)", NULL},
    {"keep", (getter)Buffer_get_keep, NULL, "the stream object kept alive (or None)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject samba_pycu_BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "samba_ext._cuda.Buffer",
    .tp_basicsize = sizeof(BufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Buffer(nbytes, device, stream=None, keep=None): stream-ordered device "
              "allocation; `keep` (the stream's Python object) is kept alive with it.",
    .tp_new = Buffer_new,
    .tp_dealloc = (destructor)Buffer_dealloc,
    .tp_methods = Buffer_methods,
    .tp_getset = Buffer_getset,
};

static PyObject *
py_memcpy_h2d(PyObject *self, PyObject *args)
{
    void *dst, *stream;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "O&y*O&", samba_pycu_ptr, &dst, &buf, samba_pycu_ptr, &stream)) {
        return NULL;
    }
    samba_status s = samba_cu_memcpy_h2d(dst, buf.buf, (size_t)buf.len, stream);
    PyBuffer_Release(&buf);
    return samba_pycu_status_none(s);
}

static PyObject *
py_memcpy_d2h(PyObject *self, PyObject *args)
{
    void *src, *stream;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "w*O&O&", &buf, samba_pycu_ptr, &src, samba_pycu_ptr, &stream)) {
        return NULL;
    }
    samba_status s;
    Py_BEGIN_ALLOW_THREADS s = samba_cu_memcpy_d2h(buf.buf, src, (size_t)buf.len, stream);
    Py_END_ALLOW_THREADS PyBuffer_Release(&buf);
    return samba_pycu_status_none(s);
}

static PyObject *
py_memcpy_d2d(PyObject *self, PyObject *args)
{
    void *dst, *src, *stream;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O&O&nO&", samba_pycu_ptr, &dst, samba_pycu_ptr, &src, &n,
                          samba_pycu_ptr, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_memcpy_d2d(dst, src, (size_t)n, stream));
}

static PyObject *
py_memset(PyObject *self, PyObject *args)
{
    void *dst, *stream;
    int value;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O&inO&", samba_pycu_ptr, &dst, &value, &n, samba_pycu_ptr,
                          &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_memset(dst, value, (size_t)n, stream));
}

/* l2_prefetch(ptr, nbytes, mode, sm_count, stream) */
static PyObject *
py_l2_prefetch(PyObject *self, PyObject *args)
{
    void *ptr, *stream;
    long long n;
    int mode, sms;
    if (!PyArg_ParseTuple(args, "O&LiiO&", samba_pycu_ptr, &ptr, &n, &mode, &sms,
                          samba_pycu_ptr, &stream)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_l2_prefetch(ptr, (int64_t)n, mode, sms, stream));
}

static PyObject *
py_set_poison(PyObject *self, PyObject *arg)
{
    const int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    samba_cu_set_poison(on);
    Py_RETURN_NONE;
}

static PyObject *
py_trim(PyObject *self, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    int prev = -1;
    samba_status s = samba_cu_exchange_device(dev, &prev);
    if (s == SAMBA_OK) {
        s = samba_cu_trim(dev);
    }
    samba_status r = samba_cu_restore_device(prev); /* the caller's device, as found */
    return samba_pycu_status_none(s != SAMBA_OK ? s : r);
}

static PyObject *
py_pool_stats(PyObject *self, PyObject *args)
{
    int dev;
    uint64_t reserved = 0, used = 0;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    samba_status s = samba_cu_pool_stats(dev, &reserved, &used);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    return Py_BuildValue("{s:K,s:K}", "reserved", (unsigned long long)reserved, "used",
                         (unsigned long long)used);
}

/* copy(shape, src, src_strides, dst, dst_strides, axis, src_idx, dst_idx, batched, stream) */
static PyObject *
py_copy(PyObject *self, PyObject *args)
{
    samba_pycu_i64s shape, ss, ds;
    samba_cu_ref src, dst, sidx, didx;
    int axis, batched;
    void *stream;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&iO&O&iO&", samba_pycu_i64s_conv, &shape,
                          samba_pycu_ref, &src, samba_pycu_i64s_conv, &ss, samba_pycu_ref, &dst,
                          samba_pycu_i64s_conv, &ds, &axis, samba_pycu_ref, &sidx,
                          samba_pycu_ref, &didx, &batched, samba_pycu_ptr, &stream)) {
        return NULL;
    }
    if (ss.n != shape.n || ds.n != shape.n) {
        PyErr_SetString(PyExc_ValueError, "internal: strides / shape length mismatch");
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_copy(shape.n, shape.v, src, ss.v, dst, ds.v, axis,
                                                sidx, didx, batched, stream));
}

/* flush_frees(): run the frees that waited for a capture to end; returns how many still wait. */
static PyObject *
py_flush_frees(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    flush_deferred();
    return PyLong_FromSsize_t(g_ndeferred);
}

PyMethodDef samba_pycu_memory_methods[] = {
    {"flush_frees", py_flush_frees, METH_NOARGS,
     "flush_frees($module, /)\n--\n\nRun the frees of buffers that died while their stream was "
     "captured, where the capture has ended; returns how many still wait."},
    {"memcpy_h2d", py_memcpy_h2d, METH_VARARGS,
     "memcpy_h2d($module, dst, src, stream, /)\n--\n\n"
     "Copy the bytes-like src to device pointer dst on stream."},
    {"memcpy_d2h", py_memcpy_d2h, METH_VARARGS,
     "memcpy_d2h($module, dst, src, stream, /)\n--\n\n"
     "Copy device memory at src into the writable bytes-like dst; synchronizes."},
    {"memcpy_d2d", py_memcpy_d2d, METH_VARARGS,
     "memcpy_d2d($module, dst, src, nbytes, stream, /)\n--\n\n"
     "Device-to-device copy of nbytes on stream."},
    {"memset", py_memset, METH_VARARGS,
     "memset($module, dst, value, nbytes, stream, /)\n--\n\n"
     "Set nbytes at dst to the byte value on stream."},
    {"l2_prefetch", py_l2_prefetch, METH_VARARGS,
     "l2_prefetch($module, ptr, nbytes, mode, sm_count, stream, /)\n--\n\n"
     "Pull nbytes at device pointer ptr into the L2 cache on stream (mode 1: bulk prefetch, "
     "2: loads); reads only."},
    {"set_poison", py_set_poison, METH_O,
     "set_poison($module, on, /)\n--\n\nTesting aid: fill the kernels' new scratch blocks with "
     "0xFF bytes (NaN)."},
    {"trim", py_trim, METH_VARARGS,
     "trim($module, device, /)\n--\n\nRelease the memory cached by the device's pool."},
    {"pool_stats", py_pool_stats, METH_VARARGS,
     "pool_stats($module, device, /)\n--\n\n"
     "Bytes reserved by / in use in the device's default pool, as a dict."},
    {"copy", py_copy, METH_VARARGS,
     "copy($module, shape, src, src_strides, dst, dst_strides, axis, src_idx, dst_idx, "
     "batched, stream, /)\n--\n\n"
     "Strided copy / gather / scatter with dtype conversion."},
    {NULL, NULL, 0, NULL}};
