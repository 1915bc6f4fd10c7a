/*
 * common.h - shared helpers for the thin CPython + NumPy glue over the C kernels.
 *
 * The argument rules of each op (what a caller may pass, with messages that explain the fix)
 * live in one place, samba_ext/ops/contracts.py, checked before any backend runs. The glue
 * only protects memory, so that a direct _core call with bad arguments raises instead of
 * reading or writing out of bounds. Every glue function follows one pattern:
 *   1. parse arguments (keywords as in mamba_ssm / causal-conv1d / flash-attn);
 *   2. convert each array with samba_py_f32() (float16/float64 -> float32, non-contiguous or
 *      negative-stride arrays are copied to C order) and check that the buffers fit
 *      together with SAMBA_PY_SHAPE() (one line per argument);
 *   3. allocate outputs with samba_py_empty();
 *   4. run the kernel between samba_py_run_begin()/samba_py_run_end() (GIL released,
 *      Ctrl-C polled between chunks);
 *   5. turn the status into an exception with samba_py_status();
 *   6. release references on one exit path (goto done).
 */
#ifndef SAMBA_PY_COMMON_H
#define SAMBA_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL samba_ext_core_ARRAY_API
#ifndef SAMBA_PY_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../samba.h"

/* New reference to a C-contiguous, aligned float32 copy/view of obj, or NULL with
 * TypeError (not a floating-point array) / ValueError (wrong ndim) naming `name`.
 * ndim < 0 accepts any ndim. */
PyArrayObject *samba_py_f32(PyObject *obj, const char *name, int ndim);

/* Optional argument: *out = NULL when obj is NULL or None. Returns 0 or -1 (error set). */
int samba_py_f32_opt(PyObject *obj, const char *name, int ndim, PyArrayObject **out);

/* Array updated in place (a decode state): must already be a writeable, C-contiguous,
 * aligned float32 ndarray in native byte order with the given ndim. Returns a new reference or NULL (error set). */
PyArrayObject *samba_py_f32_inplace(PyObject *obj, const char *name, int ndim);

/* New reference to a C-contiguous int64 array converted from obj (integers only; uint64
 * values above INT64_MAX are refused instead of wrapping). */
PyArrayObject *samba_py_i64(PyObject *obj, const char *name, int ndim);

/* Memory-safety check: a (NULL = absent optional argument, passes) has ndim dimensions of
 * the sizes in want (an entry < 0 matches any size). Otherwise ValueError "op: name has
 * shape (...), which does not fit the other arguments (expected (...))". Returns 0 or -1. */
int samba_py_shape(PyArrayObject *a, const char *op, const char *name, int ndim,
                   const npy_intp *want);
#define SAMBA_PY_SHAPE(a, op, name, ...)                                                    \
    samba_py_shape((a), (op), (name),                                                      \
                   (int)(sizeof((npy_intp[]){__VA_ARGS__}) / sizeof(npy_intp)),            \
                   (npy_intp[]){__VA_ARGS__})

/* Memory-safety check of an integer (int64 after conversion) array: every value in
 * [lo, hi], else ValueError naming op and name. Returns 0 or -1. */
int samba_py_range(PyArrayObject *a, const char *op, const char *name, int64_t lo,
                   int64_t hi);

/* Checks a.shape[axis] == expected; ValueError "name: expected shape[axis] == expected
 * (what), got ..." on mismatch. Returns 0 or -1. */
int samba_py_dim(PyArrayObject *a, const char *name, int axis, npy_intp expected,
                 const char *what);

/* New C-contiguous float32 array (uninitialised). */
PyArrayObject *samba_py_empty(int ndim, const npy_intp *shape);

#define SAMBA_F32(a) ((float *)PyArray_DATA(a))
#define SAMBA_F32_OPT(a) ((a) != NULL ? (const float *)PyArray_DATA(a) : NULL)

/* Releases the GIL and prepares ctx so that the kernel polls Ctrl-C between chunks. */
typedef struct samba_py_run {
    PyThreadState *ts;
    samba_ctx ctx;
} samba_py_run;

void samba_py_run_begin(samba_py_run *r);
void samba_py_run_end(samba_py_run *r);

/* 0 for SAMBA_OK, else sets an exception (KeyboardInterrupt when interrupted, MemoryError,
 * ValueError, RuntimeError) mentioning `kernel`, and returns -1. */
int samba_py_status(samba_status s, const char *kernel);

/* Method tables of each kernel family (one glue file each). */
extern PyMethodDef samba_py_scan_methods[];
extern PyMethodDef samba_py_conv_methods[];
extern PyMethodDef samba_py_attn_methods[];
extern PyMethodDef samba_py_misc_methods[];

#endif /* SAMBA_PY_COMMON_H */
