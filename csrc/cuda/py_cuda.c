/*
 * py_cuda.c - the samba_ext._cuda extension module (CPython glue over the CUDA kernels).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "samba_cuda.h"

#ifndef SAMBA_NVCC_VERSION
#define SAMBA_NVCC_VERSION "?"
#endif
#ifndef SAMBA_CUDA_ARCHS
#define SAMBA_CUDA_ARCHS "?"
#endif

static PyObject *
py_device_count(PyObject *self, PyObject *noargs)
{
    int n = samba_cuda_device_count();
    return PyLong_FromLong(n < 0 ? 0 : n);
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

static PyMethodDef cuda_methods[] = {
    {"device_count", py_device_count, METH_NOARGS, "device_count() -> int"},
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict"},
    {"cublas_version", py_cublas_version, METH_NOARGS, "cublas_version() -> int"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef cuda_module = {PyModuleDef_HEAD_INIT, "_cuda",
                                         "CUDA kernels of samba_ext.", -1, cuda_methods};

PyMODINIT_FUNC
PyInit__cuda(void)
{
    return PyModule_Create(&cuda_module);
}
