/*
 * py_cuda.h - shared helpers of the samba_ext._cuda glue: py_cuda.c (module init, device
 * queries), py_cuda_memory.c (Buffer, copies), py_cuda_stream.c (streams, graphs),
 * py_cuda_dlpack.c (DLPack producer / consumer), py_cuda_kernels.c (one wrapper per kernel
 * launcher).
 *
 * The glue is deliberately thin: the op contracts (samba_ext/ops/contracts.py) check the
 * arguments, samba_ext/cuda/ turns every array into (pointer, dtype code) pairs plus
 * element strides and checks that the buffers fit together; the wrappers here
 * only unpack Python ints and call the launchers, holding the GIL (launches are
 * asynchronous and short; holding it serialises use of the per-device cuBLAS handle).
 */
#ifndef SAMBA_PY_CUDA_H
#define SAMBA_PY_CUDA_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "samba_cuda.h"

/* Raises the exception for a failed launcher (message from samba_cuda_last_error()):
 * ValueError (argument / unsupported), MemoryError (allocation), samba_ext._cuda.CudaError
 * (RuntimeError subclass) otherwise. Returns NULL. */
PyObject *samba_pycu_raise(samba_status s);

extern PyObject *samba_pycu_CudaError;

/* "O&" converters. ref: None -> {NULL, 0}; (ptr: int, dtype: int) tuple. */
int samba_pycu_ref(PyObject *obj, void *out);
/* ptr: None or int -> void* */
int samba_pycu_ptr(PyObject *obj, void *out);

/* Up to 8 int64 values from a tuple / list. */
typedef struct samba_pycu_i64s {
    int n;
    int64_t v[8];
} samba_pycu_i64s;
int samba_pycu_i64s_conv(PyObject *obj, void *out);

/* None on SAMBA_OK, else the exception of samba_pycu_raise(). */
PyObject *samba_pycu_status_none(samba_status s);

/* The module's types (py_cuda_memory.c, py_cuda_dlpack.c) and method tables (one per file). */
extern PyTypeObject samba_pycu_BufferType;
extern PyTypeObject samba_pycu_ImportedType;
extern PyMethodDef samba_pycu_bwd_scan_methods[]; /* py_cuda_bwd_scan.c */
extern PyMethodDef samba_pycu_memory_methods[];
extern PyMethodDef samba_pycu_stream_methods[];
extern PyMethodDef samba_pycu_dlpack_methods[];
extern PyMethodDef samba_pycu_kernel_methods[];
extern PyMethodDef samba_pycu_bwd_attn_methods[]; /* py_cuda_bwd_attn.c */

#endif
