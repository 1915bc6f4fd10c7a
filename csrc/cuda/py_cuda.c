/*
 * py_cuda.c - the samba_ext._cuda extension module: device queries, stream-ordered device
 * buffers, copies, streams and graphs, and the DLPack producer / consumer in C.
 * Kernel wrappers live in py_cuda_kernels.c.
 *
 * Buffer: owns one cudaMallocAsync allocation made on a stream (and keeps the Python object
 * of that stream alive, so the handle stays valid until the free). The memory is released
 * with cudaFreeAsync on the allocation stream (stream-ordered). If a DLPack consumer used it
 * on another stream (add_use), that stream may be destroyed by the time the Buffer dies, so
 * the free first waits for the whole device (the rare cross-stream export case only).
 *
 * DLPack producer (to_capsule): one PyMem_Malloc block holds the managed tensor, shape and
 * strides; manager_ctx keeps a reference to the exporting Python object; the deleter takes
 * the GIL (it may run on any thread) and does nothing after interpreter shutdown.
 * DLPack consumer (Imported): parses a "dltensor_versioned" or "dltensor" capsule, renames
 * it to "used_*", and calls the producer's deleter when the Imported object dies.
 */
#include "py_cuda.h"

#include <string.h>

#include "dlpack_min.h"

#ifndef SAMBA_NVCC_VERSION
#define SAMBA_NVCC_VERSION "?"
#endif
#ifndef SAMBA_CUDA_ARCHS
#define SAMBA_CUDA_ARCHS "?"
#endif

PyObject *samba_pycu_CudaError = NULL;

PyObject *
samba_pycu_raise(samba_status s)
{
    const char *msg = samba_cuda_last_error();
    switch (s) {
    case SAMBA_ERR_ARG:
    case SAMBA_ERR_UNSUPPORTED:
        PyErr_SetString(PyExc_ValueError, msg);
        break;
    case SAMBA_ERR_ALLOC:
        PyErr_Format(PyExc_MemoryError, "CUDA out of memory: %s", msg);
        break;
    default:
        PyErr_SetString(samba_pycu_CudaError ? samba_pycu_CudaError : PyExc_RuntimeError, msg);
        break;
    }
    return NULL;
}

int
samba_pycu_ptr(PyObject *obj, void *out)
{
    void **p = (void **)out;
    if (obj == Py_None) {
        *p = NULL;
        return 1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return 0;
    }
    *p = (void *)(uintptr_t)v;
    return 1;
}

int
samba_pycu_ref(PyObject *obj, void *out)
{
    samba_cu_ref *r = (samba_cu_ref *)out;
    r->ptr = NULL;
    r->dtype = 0;
    if (obj == Py_None) {
        return 1;
    }
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        PyErr_SetString(PyExc_TypeError, "internal: array ref must be (ptr, dtype)");
        return 0;
    }
    if (!samba_pycu_ptr(PyTuple_GET_ITEM(obj, 0), &r->ptr)) {
        return 0;
    }
    r->dtype = (int)PyLong_AsLong(PyTuple_GET_ITEM(obj, 1));
    if (r->dtype == -1 && PyErr_Occurred()) {
        return 0;
    }
    return 1;
}

int
samba_pycu_i64s_conv(PyObject *obj, void *out)
{
    samba_pycu_i64s *s = (samba_pycu_i64s *)out;
    PyObject *seq = PySequence_Fast(obj, "internal: expected a sequence of ints");
    if (seq == NULL) {
        return 0;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 8) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "at most 8 dimensions are supported");
        return 0;
    }
    s->n = (int)n;
    for (Py_ssize_t i = 0; i < n; ++i) {
        s->v[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (s->v[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return 0;
        }
    }
    Py_DECREF(seq);
    return 1;
}

/* ------------------------------------------------------------------ device info ------ */

static PyObject *
py_device_count(PyObject *self, PyObject *noargs)
{
    int n = samba_cuda_device_count();
    return PyLong_FromLong(n < 0 ? 0 : n);
}

/* (count or -error code, message) */
static PyObject *
py_device_status(PyObject *self, PyObject *noargs)
{
    int n = samba_cuda_device_count();
    return Py_BuildValue("(is)", n, n < 0 ? samba_cuda_last_error() : "");
}

static PyObject *
py_build_info(PyObject *self, PyObject *noargs)
{
    int rt = 0, drv = 0;
    samba_cuda_versions(&rt, &drv);
    return Py_BuildValue("{s:s,s:s,s:s,s:i,s:i}", "nvcc", SAMBA_NVCC_VERSION, "archs",
                         SAMBA_CUDA_ARCHS, "cublas", "linked", "runtime_version", rt,
                         "driver_version", drv);
}

static PyObject *
py_cublas_version(PyObject *self, PyObject *noargs)
{
    int v = 0;
    if (samba_cuda_cublas_check(&v) != SAMBA_OK) {
        PyErr_Format(PyExc_RuntimeError, "cuBLAS: %s", samba_cuda_last_error());
        return NULL;
    }
    return PyLong_FromLong(v);
}

static PyObject *
py_device_info(PyObject *self, PyObject *args)
{
    int dev, major, minor, sms;
    int64_t mem;
    char name[256];
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    samba_status s = samba_cu_device_info(dev, name, sizeof name, &major, &minor, &mem, &sms);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    return Py_BuildValue("{s:s,s:(ii),s:L,s:i}", "name", name, "capability", major, minor,
                         "total_memory", (long long)mem, "multiprocessors", sms);
}

static PyObject *
py_set_device(PyObject *self, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    samba_status s = samba_cu_set_device(dev);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ Buffer ----------- */

typedef struct {
    PyObject_HEAD void *ptr;
    Py_ssize_t nbytes;
    int device;
    void *stream;
    PyObject *keep; /* the Python stream object of `stream` (kept alive), or NULL */
    int foreign;    /* used on another stream (DLPack consumer): synchronize before free */
} BufferObject;

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
    samba_status s = samba_cu_set_device(device);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    void *ptr = NULL;
    s = samba_cu_malloc(&ptr, (size_t)nbytes, stream);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    BufferObject *b = (BufferObject *)type->tp_alloc(type, 0);
    if (b == NULL) {
        samba_cu_free(ptr, stream);
        return NULL;
    }
    b->ptr = ptr;
    b->nbytes = nbytes;
    b->device = device;
    b->stream = stream;
    b->keep = (keep != NULL && keep != Py_None) ? keep : NULL;
    Py_XINCREF(b->keep);
    b->foreign = 0;
    return (PyObject *)b;
}

static void
Buffer_dealloc(BufferObject *b)
{
    if (b->ptr != NULL) {
        /* Errors cannot be raised from a destructor; a failed free leaves the memory in
         * the pool (a broken context is reported by the next launch anyway). */
        if (samba_cu_set_device(b->device) == SAMBA_OK) {
            if (b->foreign) {
                /* A consumer used the memory on its own stream, which may be gone by now:
                 * wait for all work of the device rather than for a stream handle. */
                samba_cu_device_sync();
            }
            samba_cu_free(b->ptr, b->stream);
        }
        b->ptr = NULL;
    }
    Py_CLEAR(b->keep);
    Py_TYPE(b)->tp_free((PyObject *)b);
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

static PyTypeObject BufferType = {
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

/* ------------------------------------------------------------------ DLPack producer -- */

static const char *CAPSULE_V = "dltensor_versioned";
static const char *CAPSULE_V_USED = "used_dltensor_versioned";
static const char *CAPSULE_L = "dltensor";
static const char *CAPSULE_L_USED = "used_dltensor";

static void
export_deleter_v(DLManagedTensorVersioned *self)
{
    if (!Py_IsInitialized()) {
        return;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    Py_XDECREF((PyObject *)self->manager_ctx);
    PyMem_Free(self);
    PyGILState_Release(g);
}

static void
export_deleter_l(DLManagedTensor *self)
{
    if (!Py_IsInitialized()) {
        return;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    Py_XDECREF((PyObject *)self->manager_ctx);
    PyMem_Free(self);
    PyGILState_Release(g);
}

static void
capsule_destructor_v(PyObject *cap)
{
    if (PyCapsule_IsValid(cap, CAPSULE_V)) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, CAPSULE_V);
        if (m != NULL && m->deleter != NULL) {
            m->deleter(m);
        }
    }
    PyErr_Clear();
}

static void
capsule_destructor_l(PyObject *cap)
{
    if (PyCapsule_IsValid(cap, CAPSULE_L)) {
        DLManagedTensor *m = PyCapsule_GetPointer(cap, CAPSULE_L);
        if (m != NULL && m->deleter != NULL) {
            m->deleter(m);
        }
    }
    PyErr_Clear();
}

/*
 * to_capsule(owner, ptr, shape, strides or None, dl_code, bits, device_type, device_id,
 *            versioned, minor, readonly, copied) -> PyCapsule
 */
static PyObject *
py_to_capsule(PyObject *self, PyObject *args)
{
    PyObject *owner, *strides_obj;
    void *ptr;
    samba_pycu_i64s shape, strides;
    int code, bits, dtype_dev, dev_id, versioned, minor, readonly, copied;
    if (!PyArg_ParseTuple(args, "OO&O&Oiiiiiiii", &owner, samba_pycu_ptr, &ptr,
                          samba_pycu_i64s_conv, &shape, &strides_obj, &code, &bits, &dtype_dev,
                          &dev_id, &versioned, &minor, &readonly, &copied)) {
        return NULL;
    }
    int has_strides = strides_obj != Py_None;
    if (has_strides) {
        if (!samba_pycu_i64s_conv(strides_obj, &strides)) {
            return NULL;
        }
        if (strides.n != shape.n) {
            PyErr_SetString(PyExc_ValueError, "internal: strides / shape length mismatch");
            return NULL;
        }
    }
    int nd = shape.n;
    size_t head = versioned ? sizeof(DLManagedTensorVersioned) : sizeof(DLManagedTensor);
    head = (head + 7) & ~(size_t)7;
    char *mem = PyMem_Malloc(head + sizeof(int64_t) * 2 * (nd > 0 ? nd : 1));
    if (mem == NULL) {
        return PyErr_NoMemory();
    }
    int64_t *shp = (int64_t *)(mem + head);
    int64_t *str = shp + nd;
    for (int i = 0; i < nd; ++i) {
        shp[i] = shape.v[i];
        if (has_strides) {
            str[i] = strides.v[i];
        }
    }
    DLTensor *t;
    if (versioned) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)mem;
        m->version.major = 1;
        m->version.minor = (uint32_t)minor;
        m->manager_ctx = owner;
        m->deleter = export_deleter_v;
        m->flags = (readonly ? DLPACK_FLAG_BITMASK_READ_ONLY : 0) |
                   (copied ? DLPACK_FLAG_BITMASK_IS_COPIED : 0);
        t = &m->dl_tensor;
    }
    else {
        DLManagedTensor *m = (DLManagedTensor *)mem;
        m->manager_ctx = owner;
        m->deleter = export_deleter_l;
        t = &m->dl_tensor;
    }
    t->data = ptr;
    t->device.device_type = dtype_dev;
    t->device.device_id = dev_id;
    t->ndim = nd;
    t->dtype.code = (uint8_t)code;
    t->dtype.bits = (uint8_t)bits;
    t->dtype.lanes = 1;
    t->shape = shp;
    t->strides = has_strides ? str : NULL;
    t->byte_offset = 0;
    PyObject *cap = PyCapsule_New(mem, versioned ? CAPSULE_V : CAPSULE_L,
                                  versioned ? capsule_destructor_v : capsule_destructor_l);
    if (cap == NULL) {
        PyMem_Free(mem);
        return NULL;
    }
    Py_INCREF(owner);
    return cap;
}

/* ------------------------------------------------------------------ DLPack consumer -- */

typedef struct {
    PyObject_HEAD void *managed;
    int versioned;
    void *data;
    int device_type, device_id;
    int code, bits, lanes;
    int readonly;
    PyObject *shape;   /* tuple */
    PyObject *strides; /* tuple or None */
} ImportedObject;

static void
Imported_dealloc(ImportedObject *o)
{
    if (o->managed != NULL) {
        if (o->versioned) {
            DLManagedTensorVersioned *m = o->managed;
            if (m->deleter) {
                m->deleter(m);
            }
        }
        else {
            DLManagedTensor *m = o->managed;
            if (m->deleter) {
                m->deleter(m);
            }
        }
        o->managed = NULL;
    }
    Py_XDECREF(o->shape);
    Py_XDECREF(o->strides);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyObject *
Imported_info(ImportedObject *o, PyObject *noargs)
{
    return Py_BuildValue("{s:K,s:(ii),s:(iii),s:O,s:O,s:O}", "ptr",
                         (unsigned long long)(uintptr_t)o->data, "device", o->device_type,
                         o->device_id, "dtype", o->code, o->bits, o->lanes, "shape", o->shape,
                         "strides", o->strides, "readonly", o->readonly ? Py_True : Py_False);
}

static PyMethodDef Imported_methods[] = {
    {"info", (PyCFunction)Imported_info, METH_NOARGS,
     "info() -> dict(ptr, device, dtype=(code, bits, lanes), shape, strides, readonly)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ImportedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "samba_ext._cuda.Imported",
    .tp_basicsize = sizeof(ImportedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A consumed DLPack tensor; the producer's deleter runs when this dies.",
    .tp_dealloc = (destructor)Imported_dealloc,
    .tp_methods = Imported_methods,
};

static PyObject *
py_from_capsule(PyObject *self, PyObject *cap)
{
    DLTensor *t;
    void *managed;
    int versioned;
    int readonly = 0;

    if (PyCapsule_IsValid(cap, CAPSULE_V)) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, CAPSULE_V);
        if (m == NULL) {
            return NULL;
        }
        if (m->version.major != 1) {
            PyErr_Format(PyExc_BufferError,
                         "DLPack version %u.%u is not supported (this package reads 1.x)",
                         m->version.major, m->version.minor);
            return NULL;
        }
        t = &m->dl_tensor;
        readonly = (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
        managed = m;
        versioned = 1;
    }
    else if (PyCapsule_IsValid(cap, CAPSULE_L)) {
        DLManagedTensor *m = PyCapsule_GetPointer(cap, CAPSULE_L);
        if (m == NULL) {
            return NULL;
        }
        t = &m->dl_tensor;
        managed = m;
        versioned = 0;
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "expected an unused DLPack capsule ('dltensor_versioned' or "
                        "'dltensor')");
        return NULL;
    }
    if (t->ndim < 0 || t->ndim > 8) {
        PyErr_Format(PyExc_BufferError, "DLPack tensor with %d dimensions (at most 8)",
                     (int)t->ndim);
        return NULL;
    }
    PyObject *shape = PyTuple_New(t->ndim);
    if (shape == NULL) {
        return NULL;
    }
    PyObject *strides = Py_None;
    Py_INCREF(Py_None);
    for (int i = 0; i < t->ndim; ++i) {
        PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t->shape[i]));
    }
    if (t->strides != NULL) {
        Py_DECREF(strides);
        strides = PyTuple_New(t->ndim);
        if (strides == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        for (int i = 0; i < t->ndim; ++i) {
            PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(t->strides[i]));
        }
    }
    ImportedObject *o = PyObject_New(ImportedObject, &ImportedType);
    if (o == NULL) {
        Py_DECREF(shape);
        Py_DECREF(strides);
        return NULL;
    }
    o->managed = NULL;
    o->shape = shape;
    o->strides = strides;
    o->versioned = versioned;
    o->data = (char *)t->data + t->byte_offset;
    o->device_type = t->device.device_type;
    o->device_id = t->device.device_id;
    o->code = t->dtype.code;
    o->bits = t->dtype.bits;
    o->lanes = t->dtype.lanes;
    o->readonly = readonly;
    if (PyCapsule_SetName(cap, versioned ? CAPSULE_V_USED : CAPSULE_L_USED) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    o->managed = managed; /* ours now: the deleter runs in Imported_dealloc */
    return (PyObject *)o;
}

/* ------------------------------------------------------------------ copies, streams -- */

static PyObject *
status_none(samba_status s)
{
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    Py_RETURN_NONE;
}

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
    return status_none(s);
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
    return status_none(s);
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
    return status_none(samba_cu_memcpy_d2d(dst, src, (size_t)n, stream));
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
    return status_none(samba_cu_memset(dst, value, (size_t)n, stream));
}

static PyObject *
py_stream_sync(PyObject *self, PyObject *arg)
{
    void *stream;
    if (!samba_pycu_ptr(arg, &stream)) {
        return NULL;
    }
    samba_status s;
    Py_BEGIN_ALLOW_THREADS s = samba_cu_stream_sync(stream);
    Py_END_ALLOW_THREADS return status_none(s);
}

static PyObject *
py_device_sync(PyObject *self, PyObject *noargs)
{
    samba_status s;
    Py_BEGIN_ALLOW_THREADS s = samba_cu_device_sync();
    Py_END_ALLOW_THREADS return status_none(s);
}

static PyObject *
py_stream_wait(PyObject *self, PyObject *args)
{
    void *waiter, *producer;
    if (!PyArg_ParseTuple(args, "O&O&", samba_pycu_ptr, &waiter, samba_pycu_ptr, &producer)) {
        return NULL;
    }
    return status_none(samba_cu_stream_wait(waiter, producer));
}

static PyObject *
py_stream_create(PyObject *self, PyObject *noargs)
{
    void *s = NULL;
    samba_status st = samba_cu_stream_create(&s);
    if (st != SAMBA_OK) {
        return samba_pycu_raise(st);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)s);
}

static PyObject *
py_stream_destroy(PyObject *self, PyObject *arg)
{
    void *s;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    return status_none(samba_cu_stream_destroy(s));
}

static PyObject *
py_graph_begin(PyObject *self, PyObject *arg)
{
    void *s;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    return status_none(samba_cu_graph_begin(s));
}

static PyObject *
py_graph_end(PyObject *self, PyObject *arg)
{
    void *s, *g = NULL;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    samba_status st = samba_cu_graph_end(s, &g);
    if (st != SAMBA_OK) {
        return samba_pycu_raise(st);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)g);
}

static PyObject *
py_graph_launch(PyObject *self, PyObject *args)
{
    void *g, *s;
    if (!PyArg_ParseTuple(args, "O&O&", samba_pycu_ptr, &g, samba_pycu_ptr, &s)) {
        return NULL;
    }
    return status_none(samba_cu_graph_launch(g, s));
}

static PyObject *
py_graph_free(PyObject *self, PyObject *arg)
{
    void *g;
    if (!samba_pycu_ptr(arg, &g)) {
        return NULL;
    }
    return status_none(samba_cu_graph_free(g));
}

static PyObject *
py_trim(PyObject *self, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    samba_status s = samba_cu_set_device(dev);
    if (s == SAMBA_OK) {
        s = samba_cu_trim(dev);
    }
    return status_none(s);
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
    return status_none(samba_cu_copy(shape.n, shape.v, src, ss.v, dst, ds.v, axis, sidx, didx,
                                     batched, stream));
}

static PyObject *
py_last_error(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(samba_cuda_last_error());
}

static PyMethodDef cuda_methods[] = {
    {"device_count", py_device_count, METH_NOARGS, "device_count() -> int (0 on any error)"},
    {"device_status", py_device_status, METH_NOARGS,
     "device_status() -> (count or -cudaError code, message)"},
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict"},
    {"cublas_version", py_cublas_version, METH_NOARGS, "cublas_version() -> int"},
    {"device_info", py_device_info, METH_VARARGS, "device_info(device) -> dict"},
    {"set_device", py_set_device, METH_VARARGS, "set_device(device)"},
    {"to_capsule", py_to_capsule, METH_VARARGS, "DLPack export (see py_cuda.c)"},
    {"from_capsule", py_from_capsule, METH_O, "from_capsule(capsule) -> Imported"},
    {"memcpy_h2d", py_memcpy_h2d, METH_VARARGS, "memcpy_h2d(dst, bytes-like, stream)"},
    {"memcpy_d2h", py_memcpy_d2h, METH_VARARGS,
     "memcpy_d2h(writable bytes-like, src, stream): copies and synchronizes"},
    {"memcpy_d2d", py_memcpy_d2d, METH_VARARGS, "memcpy_d2d(dst, src, nbytes, stream)"},
    {"memset", py_memset, METH_VARARGS, "memset(dst, value, nbytes, stream)"},
    {"stream_sync", py_stream_sync, METH_O, "stream_sync(stream)"},
    {"device_sync", py_device_sync, METH_NOARGS, "device_sync()"},
    {"stream_wait", py_stream_wait, METH_VARARGS,
     "stream_wait(waiter, producer): waiter waits for work queued on producer"},
    {"stream_create", py_stream_create, METH_NOARGS, "stream_create() -> int (non-blocking)"},
    {"stream_destroy", py_stream_destroy, METH_O, "stream_destroy(stream)"},
    {"graph_begin", py_graph_begin, METH_O, "graph_begin(stream): start stream capture"},
    {"graph_end", py_graph_end, METH_O, "graph_end(stream) -> graph exec handle"},
    {"graph_launch", py_graph_launch, METH_VARARGS, "graph_launch(graph, stream)"},
    {"graph_free", py_graph_free, METH_O, "graph_free(graph)"},
    {"trim", py_trim, METH_VARARGS, "trim(device): release cached pool memory"},
    {"pool_stats", py_pool_stats, METH_VARARGS, "pool_stats(device) -> dict"},
    {"copy", py_copy, METH_VARARGS,
     "copy(shape, src, src_strides, dst, dst_strides, axis, src_idx, dst_idx, batched, "
     "stream): strided copy / gather / scatter with dtype conversion"},
    {"last_error", py_last_error, METH_NOARGS, "last error message of this thread"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef cuda_module = {PyModuleDef_HEAD_INIT, "_cuda",
                                         "CUDA kernels of samba_ext (use samba_ext's public "
                                         "functions instead).",
                                         -1, cuda_methods};

PyMODINIT_FUNC
PyInit__cuda(void)
{
    PyObject *m;
    if (PyType_Ready(&BufferType) < 0 || PyType_Ready(&ImportedType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&cuda_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddFunctions(m, samba_pycu_kernel_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    samba_pycu_CudaError = PyErr_NewExceptionWithDoc(
        "samba_ext._cuda.CudaError",
        "A CUDA runtime or kernel error (the message names the kernel).", PyExc_RuntimeError,
        NULL);
    if (samba_pycu_CudaError == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(samba_pycu_CudaError);
    Py_INCREF(&BufferType);
    Py_INCREF(&ImportedType);
    if (PyModule_AddObject(m, "CudaError", samba_pycu_CudaError) < 0 ||
        PyModule_AddObject(m, "Buffer", (PyObject *)&BufferType) < 0 ||
        PyModule_AddObject(m, "Imported", (PyObject *)&ImportedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
