/* py_misc.c - glue for the misc kernel family (placeholder: filled by its kernel work). */
#include "common.h"

PyMethodDef samba_py_misc_methods[] = {{NULL, NULL, 0, NULL}};
