/* py_attn.c - glue for the attn kernel family (placeholder: filled by its kernel work). */
#include "common.h"

PyMethodDef samba_py_attn_methods[] = {{NULL, NULL, 0, NULL}};
