// swiglu.cu - SwiGLU, silu(gate) * up (the CUDA side of csrc/swiglu.c).
#include "pdl.cuh"
#include "vecio.cuh"

#define SWIGLU_THREADS 256
// Items per thread and iteration: 16 bytes of each input in flight per thread for 16-bit
// dtypes (2 x 8 elements, 4 x 4, ...), twice that for float32, at a register count that
// still allows 4+ blocks of 256 threads per multiprocessor.
template <int E> constexpr int swiglu_unroll() { return E == 8 ? 2 : 4; }

// y = silu(gate) * up over rows x cols, cols = vpr * E: item i of the rows * vpr items is
// the E consecutive elements at row i / vpr, column (i % vpr) * E, loaded and stored with
// one vector access per array of its own dtype (vecio.cuh). Each thread loads UNROLL items
// (blockDim.x apart, so a warp's accesses stay contiguous) as raw bits before converting,
// computing and storing any, so that many loads are in flight per thread; grid-stride loop
// over the rest. I is the index type: 32-bit (cheaper division) when rows * vpr < 2^31 - 1.
template <int E, typename I>
__global__ void __launch_bounds__(SWIGLU_THREADS)
swiglu_vec_kernel(I nitems, I vpr, samba_cu_ref g, int64_t ldg, samba_cu_ref u, int64_t ldu,
                  samba_cu_ref y, int64_t ldy) {
    constexpr int SWIGLU_UNROLL = swiglu_unroll<E>();
    const I step = (I)gridDim.x * (I)(blockDim.x * SWIGLU_UNROLL);
    pdl_wait();
    pdl_trigger();
    for (I base = (I)blockIdx.x * (I)(blockDim.x * SWIGLU_UNROLL) + threadIdx.x; base < nitems;
         base += step) {
        RawV<E> ra[SWIGLU_UNROLL], rb[SWIGLU_UNROLL];
        int64_t r[SWIGLU_UNROLL], c[SWIGLU_UNROLL];
#pragma unroll
        for (int k = 0; k < SWIGLU_UNROLL; ++k) {
            const I i = base + (I)(k * blockDim.x);
            if (i < nitems) {
                const I ri = i / vpr;
                r[k] = (int64_t)ri;
                c[k] = (int64_t)(i - ri * vpr) * E;
                ldraw<E>(g, r[k] * ldg + c[k], ra[k]);
                ldraw<E>(u, r[k] * ldu + c[k], rb[k]);
            }
        }
#pragma unroll
        for (int k = 0; k < SWIGLU_UNROLL; ++k) {
            const I i = base + (I)(k * blockDim.x);
            if (i < nitems) {
                float a[E], b[E], o[E];
                cvt<E>(ra[k], g.dtype, a);
                cvt<E>(rb[k], u.dtype, b);
#pragma unroll
                for (int e = 0; e < E; ++e) o[e] = silu_f(a[e]) * b[e];
                stv<E>(y, r[k] * ldy + c[k], o);
            }
        }
    }
}

template <int E>
static void launch_swiglu(int64_t rows, int64_t cols, samba_cu_ref g, int64_t ldg, samba_cu_ref u,
                          int64_t ldu, samba_cu_ref y, int64_t ldy, cudaStream_t st) {
    const int64_t vpr = cols / E, nitems = rows * vpr;
    const unsigned grid = grid_1d(cdiv(nitems, swiglu_unroll<E>()), SWIGLU_THREADS);
    // 32-bit: base < nitems < 2^31 and step = grid * 256 * UNROLL <= (65535 * 32) * 1024 < 2^31,
    // so base + step never wraps.
    if (nitems < 0x7fffffffLL)
        samba_launch(swiglu_vec_kernel<E, uint32_t>, grid, SWIGLU_THREADS, 0, st, (uint32_t)nitems,
                     (uint32_t)vpr, g, ldg, u, ldu, y, ldy);
    else
        samba_launch(swiglu_vec_kernel<E, uint64_t>, grid, SWIGLU_THREADS, 0, st, (uint64_t)nitems,
                     (uint64_t)vpr, g, ldg, u, ldu, y, ldy);
}

extern "C" samba_status samba_cu_swiglu(int64_t rows, int64_t cols, samba_cu_ref gate,
                                        int64_t ld_gate, samba_cu_ref up, int64_t ld_up,
                                        samba_cu_ref y, int64_t ld_y, void *stream) {
    if (rows * cols == 0) return SAMBA_OK;
    if (!vec_float_dtype(gate.dtype) || !vec_float_dtype(up.dtype) || !vec_float_dtype(y.dtype))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "swiglu: gate, up and y must be float arrays");
    cudaStream_t st = (cudaStream_t)stream;
    // The widest E in {8, 4, 2, 1} that divides cols and that every array's base address and
    // row stride allow (e.g. bf16 width 8196 at row stride 8196 or 16392: E = 4, 8-byte
    // accesses; width 8256: E = 8, 16-byte accesses; odd widths: E = 1).
    int E = 8;
    for (; E > 1; E /= 2)
        if (cols % E == 0 && vec_ok(E, gate, ld_gate) && vec_ok(E, up, ld_up) && vec_ok(E, y, ld_y))
            break;
    if (E == 8) launch_swiglu<8>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y, st);
    else if (E == 4) launch_swiglu<4>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y, st);
    else if (E == 2) launch_swiglu<2>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y, st);
    else launch_swiglu<1>(rows, cols, gate, ld_gate, up, ld_up, y, ld_y, st);
    return samba_cu_check_launch("swiglu", stream);
}
