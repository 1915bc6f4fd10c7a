/*
 * simd.c - the one instruction-set dispatch of the CPU kernels (see simd.h).
 *
 * samba_isa() = min(the best level this CPU supports, the cap in SAMBA_EXT_ISA). The CPU's level
 * is probed once (__builtin_cpu_supports) and cached; the environment is read on every call, so
 * a test can switch the level between calls. SAMBA_EXT_ISA: avx512 | avx2 | vec | scalar; unset
 * or empty: no cap. Any other value is ignored (no cap), as is a cap above what the CPU has.
 */
#include "simd.h"

#include <stdlib.h>
#include <string.h>

static int
cpu_isa(void)
{
#if SAMBA_X86_DISPATCH
    static volatile int cached = -1; /* benign race: every thread computes the same value */
    int level = cached;
    if (level < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
            __builtin_cpu_supports("fma")) {
            level = SAMBA_ISA_AVX512;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            level = SAMBA_ISA_AVX2;
        } else {
            level = SAMBA_ISA_VEC;
        }
        cached = level;
    }
    return level;
#elif SAMBA_HAVE_VEC_EXT
    return SAMBA_ISA_VEC;
#else
    return SAMBA_ISA_SCALAR;
#endif
}

static int
env_cap(void)
{
    const char *e = getenv("SAMBA_EXT_ISA");
    if (e == NULL || e[0] == '\0') {
        return SAMBA_ISA_AVX512;
    }
    if (strcmp(e, "scalar") == 0) {
        return SAMBA_ISA_SCALAR;
    }
    if (strcmp(e, "vec") == 0) {
        return SAMBA_ISA_VEC;
    }
    if (strcmp(e, "avx2") == 0) {
        return SAMBA_ISA_AVX2;
    }
    return SAMBA_ISA_AVX512;
}

int
samba_isa(void)
{
    const int cpu = cpu_isa(), cap = env_cap();
    return cpu < cap ? cpu : cap;
}

const char *
samba_isa_name(int level)
{
    switch (level) {
    case SAMBA_ISA_AVX512: return "avx512";
    case SAMBA_ISA_AVX2: return "avx2";
    case SAMBA_ISA_VEC: return "vec";
    default: return "scalar";
    }
}
