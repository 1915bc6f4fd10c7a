/*
 * py_cuda.c - the samba_ext._cuda extension module: its init, the argument converters and
 * status -> exception mapping shared by the glue, device queries and the current-device
 * switch (exchange_device / restore_device, used by samba_ext.cuda.runtime.DeviceGuard so
 * that every call leaves the thread's current device as it found it). By concern:
 *   py_cuda_memory.c   stream-ordered device buffers (Buffer), copies, memset, pool stats;
 *   py_cuda_stream.c   streams, synchronisation and CUDA graphs;
 *   py_cuda_dlpack.c   the DLPack producer / consumer;
 *   py_cuda_kernels.c  one wrapper per kernel launcher (csrc/cuda/samba_cuda.h).
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

static PyObject *
py_get_device(PyObject *self, PyObject *noargs)
{
    int dev = -1;
    samba_status s = samba_cu_get_device(&dev);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    return PyLong_FromLong(dev);
}

static PyObject *
py_exchange_device(PyObject *self, PyObject *args)
{
    int dev, prev = -1;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    samba_status s = samba_cu_exchange_device(dev, &prev);
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    return PyLong_FromLong(prev);
}

static PyObject *
py_restore_device(PyObject *self, PyObject *args)
{
    int prev;
    if (!PyArg_ParseTuple(args, "i", &prev)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_restore_device(prev));
}

static PyObject *
py_primary_context_active(PyObject *self, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i", &dev)) {
        return NULL;
    }
    int a = samba_cu_primary_ctx_active(dev);
    if (a < 0) {
        Py_RETURN_NONE;
    }
    return PyBool_FromLong(a);
}

PyObject *
samba_pycu_status_none(samba_status s)
{
    if (s != SAMBA_OK) {
        return samba_pycu_raise(s);
    }
    Py_RETURN_NONE;
}

static PyObject *
py_last_error(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(samba_cuda_last_error());
}

static PyMethodDef cuda_methods[] = {
    {"device_count", py_device_count, METH_NOARGS,
     "device_count($module, /)\n--\n\nNumber of CUDA devices (0 on any error)."},
    {"device_status", py_device_status, METH_NOARGS,
     "device_status($module, /)\n--\n\n(count or -cudaError code, message)."},
    {"build_info", py_build_info, METH_NOARGS,
     "build_info($module, /)\n--\n\n"
     "Build information (nvcc, archs, CUDA runtime and driver versions) as a dict."},
    {"cublas_version", py_cublas_version, METH_NOARGS,
     "cublas_version($module, /)\n--\n\ncuBLAS version as an int."},
    {"device_info", py_device_info, METH_VARARGS,
     "device_info($module, device, /)\n--\n\n"
     "Name, capability, memory and SM count of a device, as a dict."},
    {"set_device", py_set_device, METH_VARARGS,
     "set_device($module, device, /)\n--\n\nMake device the current one of this thread."},
    {"get_device", py_get_device, METH_NOARGS,
     "get_device($module, /)\n--\n\nThe current device of this thread."},
    {"exchange_device", py_exchange_device, METH_VARARGS,
     "exchange_device($module, device, /)\n--\n\n"
     "Make device the current one of this thread; return the device that was current before\n"
     "(-1 when it could not be read). Pair with restore_device(previous)."},
    {"restore_device", py_restore_device, METH_VARARGS,
     "restore_device($module, previous, /)\n--\n\n"
     "Make previous (from exchange_device) current again. Does nothing when it is current\n"
     "already or is -1, nor when its primary context is not active: making it current would\n"
     "create a context on a device this process never used (PyTorch's device guard does the\n"
     "same). When the context state cannot be read, previous is made current regardless."},
    {"primary_context_active", py_primary_context_active, METH_VARARGS,
     "primary_context_active($module, device, /)\n--\n\n"
     "True / False: whether the device's primary context is active; None when the driver\n"
     "cannot be asked (cuDevicePrimaryCtxGetState not available)."},
    {"last_error", py_last_error, METH_NOARGS,
     "last_error($module, /)\n--\n\nLast error message of this thread."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef cuda_module = {PyModuleDef_HEAD_INIT, "_cuda",
                                         "CUDA kernels of samba_ext (use samba_ext's public "
                                         "functions instead).",
                                         -1, cuda_methods};

PyMODINIT_FUNC
PyInit__cuda(void)
{
    PyObject *m;
    if (PyType_Ready(&samba_pycu_BufferType) < 0 || PyType_Ready(&samba_pycu_ImportedType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&cuda_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddFunctions(m, samba_pycu_memory_methods) < 0 ||
        PyModule_AddFunctions(m, samba_pycu_stream_methods) < 0 ||
        PyModule_AddFunctions(m, samba_pycu_dlpack_methods) < 0 ||
        PyModule_AddFunctions(m, samba_pycu_kernel_methods) < 0 ||
        PyModule_AddFunctions(m, samba_pycu_bwd_attn_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddFunctions(m, samba_pycu_bwd_scan_methods) < 0) {
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
    Py_INCREF(&samba_pycu_BufferType);
    Py_INCREF(&samba_pycu_ImportedType);
    if (PyModule_AddObject(m, "CudaError", samba_pycu_CudaError) < 0 ||
        PyModule_AddObject(m, "Buffer", (PyObject *)&samba_pycu_BufferType) < 0 ||
        PyModule_AddObject(m, "Imported", (PyObject *)&samba_pycu_ImportedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
