/*
 * threads.c - status strings, the process-wide thread count and the stop callback.
 */
#include "samba.h"

#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int g_threads = 0; /* 0: not initialised yet */

const char *
samba_status_str(samba_status s)
{
    switch (s) {
    case SAMBA_OK: return "ok";
    case SAMBA_ERR_ARG: return "invalid argument";
    case SAMBA_ERR_ALLOC: return "out of memory";
    case SAMBA_ERR_INTERRUPTED: return "interrupted";
    case SAMBA_ERR_CUDA: return "CUDA error";
    case SAMBA_ERR_UNSUPPORTED: return "unsupported arguments";
    }
    return "unknown status";
}

static int
samba_threads_default(void)
{
    const char *env = getenv("OMP_NUM_THREADS");
    if (env != NULL) {
        int n = atoi(env);
        if (n > 0) {
            return n;
        }
    }
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

void
samba_threads_set(int n)
{
    g_threads = n > 0 ? n : samba_threads_default();
}

int
samba_threads_get(void)
{
    if (g_threads <= 0) {
        g_threads = samba_threads_default();
    }
#ifndef _OPENMP
    return 1;
#else
    return g_threads;
#endif
}

int
samba_ctx_threads(const samba_ctx *ctx)
{
    if (ctx != NULL && ctx->n_threads > 0) {
        return ctx->n_threads;
    }
    return samba_threads_get();
}

int
samba_ctx_stop(const samba_ctx *ctx)
{
    if (ctx == NULL || ctx->should_stop == NULL) {
        return 0;
    }
    return ctx->should_stop(ctx->user) != 0;
}

int
samba_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
