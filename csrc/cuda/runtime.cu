// runtime.cu - device discovery and cuBLAS availability.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "samba_cuda.h"

static char g_err[256];

extern "C" const char *samba_cuda_last_error(void) { return g_err; }

extern "C" int samba_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(g_err, sizeof g_err, "%s", cudaGetErrorString(e));
        cudaGetLastError();
        return -(int)e;
    }
    return n;
}

extern "C" void samba_cuda_versions(int *runtime, int *driver) {
    *runtime = 0;
    *driver = 0;
    cudaRuntimeGetVersion(runtime);
    cudaDriverGetVersion(driver);
}

extern "C" samba_status samba_cuda_cublas_check(int *version) {
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_err, sizeof g_err, "cublasCreate failed");
        return SAMBA_ERR_CUDA;
    }
    cublasGetVersion(h, version);
    cublasDestroy(h);
    return SAMBA_OK;
}
