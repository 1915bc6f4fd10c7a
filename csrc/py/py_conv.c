/* py_conv.c - glue for the conv kernel family (placeholder: filled by its kernel work). */
#include "common.h"

PyMethodDef samba_py_conv_methods[] = {{NULL, NULL, 0, NULL}};
