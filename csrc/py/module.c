/*
 * module.c - the samba_ext._core extension module: registers each kernel family's glue
 * (py_scan.c, py_conv.c, py_attn.c, py_misc.c) and the thread / build-info functions.
 */
#define SAMBA_PY_MODULE_MAIN
#include "common.h"
#include "py_bwd.h"
#include "simd.h"

#ifndef NUMPY_VERSION_STRING
#define NUMPY_VERSION_STRING "?"
#endif
#ifndef SAMBA_COMPILER
#define SAMBA_COMPILER "unknown"
#endif

static PyObject *
py_set_num_threads(PyObject *self, PyObject *arg)
{
    int overflow = 0;
    long n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow || n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "n: expected 1 <= n <= 4096 threads, got %R", arg);
        return NULL;
    }
    samba_threads_set((int)n);
    Py_RETURN_NONE;
}

static PyObject *
py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(samba_threads_get());
}

static PyObject *
py_build_info(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("{s:s,s:O,s:s,s:i,s:s}", "compiler", SAMBA_COMPILER, "openmp",
                         samba_has_openmp() ? Py_True : Py_False, "numpy_build",
                         NUMPY_VERSION_STRING, "c_standard", 99, "cpu_kernels",
                         samba_isa_name(samba_isa()));
}

static PyMethodDef core_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads($module, n, /)\n--\n\nNumber of threads of the kernels."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads($module, /)\n--\n\nNumber of threads of the kernels."},
    {"build_info", py_build_info, METH_NOARGS,
     "build_info($module, /)\n--\n\nCompiler, OpenMP and NumPy of the build, as a dict."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core",
    "C kernels of samba_ext (CPU). Use the public functions in samba_ext instead.", -1,
    core_methods};

PyMODINIT_FUNC
PyInit__core(void)
{
    PyObject *m;

    import_array();
    m = PyModule_Create(&core_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddFunctions(m, samba_py_scan_methods) < 0 ||
        PyModule_AddFunctions(m, samba_py_conv_methods) < 0 ||
        PyModule_AddFunctions(m, samba_py_attn_methods) < 0 ||
        PyModule_AddFunctions(m, samba_py_misc_methods) < 0 ||
        PyModule_AddFunctions(m, samba_py_bwd_methods) < 0 ||
        PyModule_AddFunctions(m, samba_py_bwd_small_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
