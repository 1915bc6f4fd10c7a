/* py_scan.c - glue for the scan kernel family (placeholder: filled by its kernel work). */
#include "common.h"

PyMethodDef samba_py_scan_methods[] = {{NULL, NULL, 0, NULL}};
