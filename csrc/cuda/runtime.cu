// runtime.cu - device discovery, error reporting, stream-ordered memory, copies, streams,
// CUDA graphs, and the strided / dtype-converting copy kernel.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_common.cuh"
#include "pdl.cuh"

static thread_local char g_err[512];

extern "C" const char *samba_cuda_last_error(void) { return g_err; }

/* Errors after which the context is corrupt: every later CUDA call in the process fails. */
static int samba_cu_is_sticky(cudaError_t e) {
    return e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure ||
           e == cudaErrorIllegalInstruction || e == cudaErrorMisalignedAddress ||
           e == cudaErrorInvalidAddressSpace || e == cudaErrorInvalidPc ||
           e == cudaErrorHardwareStackError || e == cudaErrorAssert;
}

extern "C" samba_status samba_cu_fail(const char *what, int err) {
    cudaError_t e = (cudaError_t)err;
    snprintf(g_err, sizeof g_err, "%s: %s (%s)%s", what, cudaGetErrorString(e), cudaGetErrorName(e),
             samba_cu_is_sticky(e)
                 ? "; this error is sticky: the process's CUDA context is unusable and every later "
                   "CUDA call will fail, so restart the Python process (the error may come from an "
                   "earlier asynchronous launch: SAMBA_EXT_CUDA_SYNC=1 reports it at its kernel)"
                 : "");
    return e == cudaErrorMemoryAllocation ? SAMBA_ERR_ALLOC : SAMBA_ERR_CUDA;
}

extern "C" samba_status samba_cu_fail_msg(samba_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return s;
}

#define CU_TRY(what, call)                                       \
    do {                                                         \
        cudaError_t e_ = (call);                                 \
        if (e_ != cudaSuccess) return samba_cu_fail((what), e_); \
    } while (0)

extern "C" int samba_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        samba_cu_fail("cudaGetDeviceCount", e);
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

extern "C" samba_status samba_cu_device_info(int device, char *name, size_t name_len,
                                             int *major, int *minor, int64_t *total_mem,
                                             int *sm_count) {
    cudaDeviceProp p;
    CU_TRY("cudaGetDeviceProperties", cudaGetDeviceProperties(&p, device));
    snprintf(name, name_len, "%s", p.name);
    *major = p.major;
    *minor = p.minor;
    *total_mem = (int64_t)p.totalGlobalMem;
    *sm_count = p.multiProcessorCount;
    return SAMBA_OK;
}

// ------------------------------------------------------------------ devices, memory ----
#define SAMBA_MAX_DEVICES 64
static int g_pool_ready[SAMBA_MAX_DEVICES];

extern "C" samba_status samba_cu_get_device(int *device) {
    CU_TRY("cudaGetDevice", cudaGetDevice(device));
    return SAMBA_OK;
}

static samba_status samba_cu_pool_setup(int device) {
    if (!g_pool_ready[device]) {
        // Keep freed blocks cached in the pool (the default threshold 0 would return them
        // to the driver at every synchronization).
        cudaMemPool_t pool;
        CU_TRY("cudaDeviceGetDefaultMemPool", cudaDeviceGetDefaultMemPool(&pool, device));
        uint64_t thr = UINT64_MAX;
        CU_TRY("cudaMemPoolSetAttribute",
               cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &thr));
        g_pool_ready[device] = 1;
    }
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_exchange_device(int device, int *prev) {
    int cur = -1;
    *prev = -1;
    if (device < 0 || device >= SAMBA_MAX_DEVICES)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "device %d out of range", device);
    if (cudaGetDevice(&cur) != cudaSuccess) {
        cudaGetLastError();  // not left behind for the next launch check
        cur = -1;
    }
    *prev = cur;
    if (cur != device) CU_TRY("cudaSetDevice", cudaSetDevice(device));
    return samba_cu_pool_setup(device);
}

extern "C" samba_status samba_cu_set_device(int device) {
    int prev;
    return samba_cu_exchange_device(device, &prev);
}

// cuDevicePrimaryCtxGetState and cuDeviceGet, fetched from the driver through the runtime
// (samba_ext does not link libcuda). Both NULL when the runtime cannot provide them.
typedef int (*samba_drv_ctx_state_fn)(int dev, unsigned int *flags, int *active);
typedef int (*samba_drv_device_get_fn)(int *dev, int ordinal);
struct SambaDriverFns {
    samba_drv_ctx_state_fn ctx_state;
    samba_drv_device_get_fn device_get;
};

static void *samba_driver_symbol(const char *name) {
    void *fn = NULL;
#if CUDART_VERSION >= 12050
    // Version 12.0 of the symbol: both functions are unchanged since CUDA 7, and every driver
    // that runs this 12.5+ runtime supports 12.0 (a later version would fail on older ones).
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        fn = NULL;
#elif CUDART_VERSION >= 12000
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        fn = NULL;
#elif CUDART_VERSION >= 11030
    if (cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault) != cudaSuccess) fn = NULL;
#else
    (void)name;
#endif
    cudaGetLastError();  // a failed lookup is not an error of the next launch
    return fn;
}

static const SambaDriverFns &samba_driver_fns(void) {
    static const SambaDriverFns fns = {
        (samba_drv_ctx_state_fn)samba_driver_symbol("cuDevicePrimaryCtxGetState"),
        (samba_drv_device_get_fn)samba_driver_symbol("cuDeviceGet")};
    return fns;
}

extern "C" int samba_cu_primary_ctx_active(int device) {
    const SambaDriverFns &f = samba_driver_fns();
    int dev = -1, active = 0;
    unsigned int flags = 0;
    if (f.ctx_state == NULL || f.device_get == NULL || device < 0) return -1;
    if (f.device_get(&dev, device) != 0 || f.ctx_state(dev, &flags, &active) != 0) return -1;
    return active ? 1 : 0;
}

extern "C" samba_status samba_cu_restore_device(int prev) {
    int cur = -1;
    if (prev < 0) return SAMBA_OK;  // no previous device was known
    if (cudaGetDevice(&cur) != cudaSuccess) {
        cudaGetLastError();
        cur = -1;
    }
    if (cur == prev) return SAMBA_OK;
    // Making a device current creates its primary context (hundreds of MB) when it has none:
    // a thread that never used `prev` is left on the device it is on now.
    if (samba_cu_primary_ctx_active(prev) == 0) return SAMBA_OK;
    cudaError_t e = cudaSetDevice(prev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return samba_cu_fail("cudaSetDevice (making the previous device current again)", e);
    }
    return SAMBA_OK;
}

static int g_poison = 0;  // samba_cu_set_poison

extern "C" void samba_cu_set_poison(int on) { g_poison = on != 0; }

// After an out-of-memory cudaMallocAsync outside stream capture: wait for the device, return
// the pool's cached blocks to the driver (the memory the process freed but kept) and try once
// more, as torch's caching allocator does with its own cache.
static cudaError_t malloc_after_trim(void **ptr, size_t nbytes, cudaStream_t st) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    int dev = 0;
    cudaMemPool_t pool;
    if (cudaStreamIsCapturing(st, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone ||
        cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess || cudaMemPoolTrimTo(pool, 0) != cudaSuccess) {
        cudaGetLastError();
        return cudaErrorMemoryAllocation;
    }
    return cudaMallocAsync(ptr, nbytes, st);
}

extern "C" samba_status samba_cu_malloc(void **ptr, size_t nbytes, void *stream) {
    *ptr = NULL;
    if (nbytes == 0) return SAMBA_OK;
    cudaError_t e = cudaMallocAsync(ptr, nbytes, (cudaStream_t)stream);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        *ptr = NULL;
        e = malloc_after_trim(ptr, nbytes, (cudaStream_t)stream);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        *ptr = NULL;
        samba_cu_fail("cudaMallocAsync", e);
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s while allocating %zu bytes", g_err, nbytes);
        snprintf(g_err, sizeof g_err, "%s", tmp);
        return e == cudaErrorMemoryAllocation ? SAMBA_ERR_ALLOC : SAMBA_ERR_CUDA;
    }
    if (g_poison) {
        e = cudaMemsetAsync(*ptr, 0xFF, nbytes, (cudaStream_t)stream);
        if (e != cudaSuccess) {
            cudaFreeAsync(*ptr, (cudaStream_t)stream);
            *ptr = NULL;
            return samba_cu_fail("cudaMemsetAsync (poison)", e);
        }
    }
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_free(void *ptr, void *stream) {
    if (ptr == NULL) return SAMBA_OK;
    CU_TRY("cudaFreeAsync", cudaFreeAsync(ptr, (cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_trim(int device) {
    cudaMemPool_t pool;
    CU_TRY("cudaDeviceGetDefaultMemPool", cudaDeviceGetDefaultMemPool(&pool, device));
    CU_TRY("cudaDeviceSynchronize", cudaDeviceSynchronize());
    CU_TRY("cudaMemPoolTrimTo", cudaMemPoolTrimTo(pool, 0));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_pool_stats(int device, uint64_t *reserved, uint64_t *used) {
    cudaMemPool_t pool;
    CU_TRY("cudaDeviceGetDefaultMemPool", cudaDeviceGetDefaultMemPool(&pool, device));
    CU_TRY("cudaMemPoolGetAttribute",
           cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, reserved));
    CU_TRY("cudaMemPoolGetAttribute",
           cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, used));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_memcpy_h2d(void *dst, const void *src, size_t n, void *stream) {
    if (n == 0) return SAMBA_OK;
    CU_TRY("cudaMemcpyAsync (host to device)",
           cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, (cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_memcpy_d2h(void *dst, const void *src, size_t n, void *stream) {
    if (n > 0)
        CU_TRY("cudaMemcpyAsync (device to host)",
               cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
    CU_TRY("cudaStreamSynchronize", cudaStreamSynchronize((cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_memcpy_d2d(void *dst, const void *src, size_t n, void *stream) {
    if (n == 0) return SAMBA_OK;
    CU_TRY("cudaMemcpyAsync (device to device)",
           cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_memset(void *dst, int value, size_t n, void *stream) {
    if (n == 0) return SAMBA_OK;
    CU_TRY("cudaMemsetAsync", cudaMemsetAsync(dst, value, n, (cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_stream_sync(void *stream) {
    CU_TRY("cudaStreamSynchronize", cudaStreamSynchronize((cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_device_sync(void) {
    CU_TRY("cudaDeviceSynchronize", cudaDeviceSynchronize());
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_stream_wait(void *waiter, void *producer) {
    if (waiter == producer) return SAMBA_OK;
    cudaEvent_t ev;
    CU_TRY("cudaEventCreate", cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    cudaError_t e = cudaEventRecord(ev, (cudaStream_t)producer);
    if (e == cudaSuccess) e = cudaStreamWaitEvent((cudaStream_t)waiter, ev, 0);
    cudaEventDestroy(ev);  // released once the wait is done
    if (e != cudaSuccess) return samba_cu_fail("stream synchronization (event record/wait)", e);
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_stream_create(void **stream) {
    cudaStream_t s;
    CU_TRY("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = (void *)s;
    return SAMBA_OK;
}

extern "C" int samba_cu_stream_capturing(void *stream) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing((cudaStream_t)stream, &cs) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return cs == cudaStreamCaptureStatusNone ? 0 : 1;
}

extern "C" samba_status samba_cu_stream_destroy(void *stream) {
    CU_TRY("cudaStreamDestroy", cudaStreamDestroy((cudaStream_t)stream));
    return SAMBA_OK;
}

extern "C" int samba_cu_sync_mode(void) {
    static int mode = -1;
    if (mode < 0) {
        const char *v = getenv("SAMBA_EXT_CUDA_SYNC");
        mode = (v != NULL && v[0] == '1') ? 1 : 0;
    }
    return mode;
}

extern "C" samba_status samba_cu_check_launch(const char *kernel, void *stream) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return samba_cu_fail(kernel, e);
    if (samba_cu_sync_mode()) {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        cudaStreamIsCapturing((cudaStream_t)stream, &cs);
        if (cs == cudaStreamCaptureStatusNone) {
            e = cudaStreamSynchronize((cudaStream_t)stream);
            if (e != cudaSuccess) return samba_cu_fail(kernel, e);
        }
    }
    return SAMBA_OK;
}

// ------------------------------------------------------------------ graphs -------------
extern "C" samba_status samba_cu_graph_begin(void *stream) {
    CU_TRY("cudaStreamBeginCapture",
           cudaStreamBeginCapture((cudaStream_t)stream, cudaStreamCaptureModeThreadLocal));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_graph_end(void *stream, void **graph_exec) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    *graph_exec = NULL;
    CU_TRY("cudaStreamEndCapture", cudaStreamEndCapture((cudaStream_t)stream, &g));
    cudaError_t e = cudaGraphInstantiate(&ge, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return samba_cu_fail("cudaGraphInstantiate", e);
    *graph_exec = (void *)ge;
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_graph_launch(void *graph_exec, void *stream) {
    CU_TRY("cudaGraphLaunch", cudaGraphLaunch((cudaGraphExec_t)graph_exec, (cudaStream_t)stream));
    return samba_cu_check_launch("decode graph", stream);
}

extern "C" samba_status samba_cu_graph_free(void *graph_exec) {
    if (graph_exec) CU_TRY("cudaGraphExecDestroy", cudaGraphExecDestroy((cudaGraphExec_t)graph_exec));
    return SAMBA_OK;
}

// ------------------------------------------------------------------ strided copy -------
#define COPY_MAX_DIMS 8
struct CopyParams {
    int ndim, axis, batched;
    int64_t n;
    int64_t shape[COPY_MAX_DIMS];
    int64_t sstride[COPY_MAX_DIMS], dstride[COPY_MAX_DIMS];
    samba_cu_ref src, dst, sidx, didx;
};

// One thread per element of `shape` (grid-stride): unravel the coordinate, replace the
// coordinate along `axis` through an index array where given, convert and store. I: the
// type of the element index and the unravelling divisions, 32-bit (a few instructions per
// division instead of a 64-bit division routine) when the element count allows.
template <typename I>
__global__ void copy_kernel(CopyParams p) {
    const int is_int = p.src.dtype >= SAMBA_CU_I32;
    const I n = (I)p.n;
    pdl_wait();
    pdl_trigger();
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n;
         i += (I)gridDim.x * (I)blockDim.x) {
        I rem = i;
        int64_t soff = 0, doff = 0, c0 = 0, ca = 0;
        for (int d = p.ndim - 1; d >= 0; --d) {
            const I q = rem / (I)p.shape[d];
            const int64_t c = (int64_t)(rem - q * (I)p.shape[d]);
            rem = q;
            if (d == 0) c0 = c;
            if (d == p.axis) {
                ca = c;
                continue;
            }
            soff += c * p.sstride[d];
            doff += c * p.dstride[d];
        }
        if (p.axis >= 0) {
            const int64_t key = p.batched ? c0 : ca;
            const int64_t sc = p.sidx.ptr ? ldi(p.sidx.ptr, p.sidx.dtype, key) : ca;
            const int64_t dc = p.didx.ptr ? ldi(p.didx.ptr, p.didx.dtype, key) : ca;
            soff += sc * p.sstride[p.axis];
            doff += dc * p.dstride[p.axis];
        }
        if (is_int) {
            const int64_t v = ldi(p.src.ptr, p.src.dtype, soff);
            if (p.dst.dtype == SAMBA_CU_I32)
                ((int32_t *)p.dst.ptr)[doff] = (int32_t)v;
            else
                ((int64_t *)p.dst.ptr)[doff] = v;
        } else {
            stf(p.dst, doff, ldf(p.src, soff));
        }
    }
}

extern "C" samba_status samba_cu_copy(int ndim, const int64_t *shape, samba_cu_ref src,
                                      const int64_t *src_strides, samba_cu_ref dst,
                                      const int64_t *dst_strides, int axis, samba_cu_ref src_idx,
                                      samba_cu_ref dst_idx, int idx_batched, void *stream) {
    CopyParams p;
    if (ndim < 0 || ndim > COPY_MAX_DIMS)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "copy: at most %d dimensions, got %d",
                                 COPY_MAX_DIMS, ndim);
    if ((src.dtype >= SAMBA_CU_I32) != (dst.dtype >= SAMBA_CU_I32))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "copy: cannot convert between int and float");
    if (axis >= ndim || (axis < 0 && (src_idx.ptr || dst_idx.ptr)))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "copy: bad index axis %d", axis);
    p.ndim = ndim;
    p.axis = (src_idx.ptr || dst_idx.ptr) ? axis : -1;
    p.batched = idx_batched;
    p.n = 1;
    for (int d = 0; d < ndim; ++d) {
        p.shape[d] = shape[d];
        p.sstride[d] = src_strides[d];
        p.dstride[d] = dst_strides[d];
        p.n *= shape[d];
    }
    if (p.n == 0) return SAMBA_OK;
    p.src = src;
    p.dst = dst;
    p.sidx = src_idx;
    p.didx = dst_idx;
    // 32-bit: i < n < 2^31 and the grid stride <= (65535 * 32) * 256 < 2^29: no wrap.
    if (p.n < 0x7fffffffLL)
        samba_launch(copy_kernel<uint32_t>, grid_1d(p.n, 256), 256, 0, (cudaStream_t)stream, p);
    else
        samba_launch(copy_kernel<uint64_t>, grid_1d(p.n, 256), 256, 0, (cudaStream_t)stream, p);
    return samba_cu_check_launch("copy (strided / gather / scatter / dtype conversion)", stream);
}
