/*
 * py_cuda_dlpack.c - the DLPack producer / consumer of the samba_ext._cuda module.
 *
 * Producer (to_capsule): one PyMem_Malloc block holds the managed tensor, shape and
 * strides; manager_ctx keeps a reference to the exporting Python object; the deleter takes
 * the GIL (it may run on any thread) and does nothing after interpreter shutdown.
 * Consumer (Imported): parses a "dltensor_versioned" or "dltensor" capsule, renames it to
 * "used_*", and calls the producer's deleter when the Imported object dies.
 */
#include "py_cuda.h"

#include <string.h>

#include "dlpack_min.h"

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

PyTypeObject samba_pycu_ImportedType = {
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
    ImportedObject *o = PyObject_New(ImportedObject, &samba_pycu_ImportedType);
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

PyMethodDef samba_pycu_dlpack_methods[] = {
    {"to_capsule", py_to_capsule, METH_VARARGS,
     "to_capsule($module, owner, ptr, shape, strides, code, bits, device_type, device_id, "
     "versioned, minor, readonly, copied, /)\n--\n\n"
     "DLPack export of device memory owned by owner (see py_cuda_dlpack.c)."},
    {"from_capsule", py_from_capsule, METH_O,
     "from_capsule($module, capsule, /)\n--\n\n"
     "DLPack import: an Imported object describing the capsule's tensor."},
    {NULL, NULL, 0, NULL}};
