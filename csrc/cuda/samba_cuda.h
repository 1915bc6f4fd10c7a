/*
 * samba_cuda.h - C interface of the CUDA kernels (implemented in *.cu, extern "C").
 */
#ifndef SAMBA_CUDA_H
#define SAMBA_CUDA_H
#include "../samba.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices, or a negative CUDA error code. */
int samba_cuda_device_count(void);
/* Creates and destroys a cuBLAS handle: checks that cuBLAS loads and works. */
samba_status samba_cuda_cublas_check(int *version);
/* CUDA runtime / driver versions (e.g. 13000). */
void samba_cuda_versions(int *runtime, int *driver);
const char *samba_cuda_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
