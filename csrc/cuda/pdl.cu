// pdl.cu - whether samba_launch (pdl.cuh) uses programmatic dependent launch: on for devices of
// compute capability 9.0 and later unless SAMBA_EXT_PDL=0 (read once) or samba_cu_pdl_set(0).
// The device must also run code compiled for sm_90 or later: a build whose image for the device
// comes from older PTX (e.g. SAMBA_EXT_CUDA_ARCHS=80 on an H100, JIT-compiled) has no
// griddepcontrol.wait in its kernels, and launching those early would race.
#include <stdlib.h>
#include <string.h>

#include "cu_common.cuh"
#include "pdl.cuh"

#define PDL_MAX_DEVICES 64

static int g_pdl = -1;                      // 0 / 1 once known
static signed char g_ok[PDL_MAX_DEVICES];   // 0 unknown, 1 PDL works, -1 not

// Compiled with the same architectures as every other kernel, so its image tells which PTX
// version the device's kernels come from.
__global__ void pdl_probe_kernel(void) {}

static int device_has_pdl(void) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= PDL_MAX_DEVICES) {
        (void)cudaGetLastError();
        return 0;
    }
    if (g_ok[dev] == 0) {
        int major = 0;
        cudaFuncAttributes fa;
        const bool ok =
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            major >= 9 && cudaFuncGetAttributes(&fa, pdl_probe_kernel) == cudaSuccess &&
            fa.ptxVersion >= 90;
        (void)cudaGetLastError();
        g_ok[dev] = ok ? 1 : -1;
    }
    return g_ok[dev] > 0;
}

extern "C" int samba_cu_pdl_mode(void) {
    if (g_pdl < 0) {
        const char *v = getenv("SAMBA_EXT_PDL");
        g_pdl = (v != NULL && strcmp(v, "0") == 0) ? 0 : 1;
    }
    return g_pdl;
}

extern "C" int samba_cu_pdl_enabled(void) { return samba_cu_pdl_mode() && device_has_pdl(); }

extern "C" samba_status samba_cu_pdl_set(int on) {
    if (on != 0 && on != 1) return samba_cu_fail_msg(SAMBA_ERR_ARG, "pdl: expected 0 or 1, got %d", on);
    g_pdl = on;
    return SAMBA_OK;
}
