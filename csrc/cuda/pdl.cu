// pdl.cu - whether samba_launch (pdl.cuh) uses programmatic dependent launch: on for devices of
// compute capability 9.0 and later unless SAMBA_EXT_PDL=0 (read once) or samba_cu_pdl_set(0).
#include <stdlib.h>
#include <string.h>

#include "cu_common.cuh"
#include "pdl.cuh"

#define PDL_MAX_DEVICES 64

static int g_pdl = -1;                    // 0 / 1 once known
static signed char g_cc9[PDL_MAX_DEVICES];  // 0 unknown, 1 cc >= 9.0, -1 older

static int device_has_pdl(void) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= PDL_MAX_DEVICES) {
        (void)cudaGetLastError();
        return 0;
    }
    if (g_cc9[dev] == 0) {
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        g_cc9[dev] = major >= 9 ? 1 : -1;
    }
    return g_cc9[dev] > 0;
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
