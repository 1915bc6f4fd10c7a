/*
 * py_bwd.h - helpers shared by the backward glue files (py_bwd.c, py_bwd_small.c) and
 * their method tables (registered in module.c).
 */
#ifndef SAMBA_PY_BWD_H
#define SAMBA_PY_BWD_H

#include "common.h"

#include <string.h>

/* New reference to a float32 C-contiguous copy/view of obj with the given ndim whose
 * shape matches `shape` (entries < 0 match anything); NULL with ValueError/TypeError naming
 * `name`.  optional: None/NULL gives NULL without an exception. */
PyArrayObject *bwd_in(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                      int optional);

/* New zero-filled float32 array. */
PyArrayObject *bwd_zeros(int ndim, const npy_intp *shape);

/* New reference to a, or to None when a is NULL. */
PyObject *bwd_or_none(PyArrayObject *a);

extern PyMethodDef samba_py_bwd_methods[];
extern PyMethodDef samba_py_bwd_small_methods[];

#endif /* SAMBA_PY_BWD_H */
