// scan_bwd.cu - launcher of the selective scan's backward (kernels: scan_bwd_kernels.cuh).
//
// Choices, each overridable from the environment (benchmarks/gpu_backward.py compares them):
//   SAMBA_EXT_SCAN_BWD_LANES=4|8   threads per channel (default 8 for float32 inputs or
//                                  fewer than 32768 channels x batch, else 4);
//   SAMBA_EXT_SCAN_BWD_CHUNK=S     groups of 8 steps per checkpointed chunk, 1..16 (default:
//                                  the smallest S whose checkpoints fit the budget below, and
//                                  at least 4 with 8 lanes and 16-bit inputs);
//   SAMBA_EXT_SCAN_BWD_WS_MB=M     checkpoint budget in MiB (default 512).
//   SAMBA_EXT_SCAN_BWD_VEC=1|0     dB / dC added by 16-byte atomics, 4 steps each (default 1),
//                                  where the seqlen is a multiple of 4 and dB / dC are 16-byte
//                                  aligned (sm_90 builds; elsewhere the scalar adds): a quarter
//                                  of the atomics of the scalar path (one float per (block,
//                                  state, step)); 3-8% faster on an H100 (gpu_backward.md).
//   SAMBA_EXT_SCAN_BWD_VARIANT=tile|split  the tiled kernels (scan_tile_bwd.cuh; the default
//                                  where they apply: d_state 16, whole blocks of 32 channels
//                                  per group, unit time strides, 16-byte aligned rows, seqlen a
//                                  multiple of 4, the 16-byte atomics above) or those above;
//   SAMBA_EXT_SCAN_BWD_TILES=K     the tiled kernels' tiles of 32 steps per checkpointed chunk
//                                  (default: the fewest whose checkpoints fit the budget, at
//                                  most 16);
//   SAMBA_EXT_SCAN_BWD_OCC=2|3     the tiled main kernel compiled for 2 or 3 resident blocks
//                                  per multiprocessor (default 3 with 16-bit inputs, 2 with
//                                  float32; see TB_MIN_BLOCKS);
//   SAMBA_EXT_SCAN_BWD_SEGS=S      the tiled kernels' segments per row (blocks along the
//                                  sequence; default: as many as fill the resident blocks of
//                                  one wave, batch x dim / 32 blocks per segment, at most the
//                                  number of chunks; 1 where one wave is already full).
#include <stdlib.h>
#include <string.h>

#include "samba_cuda_bwd_scan.h"
#include "scan_bwd_kernels.cuh"
#include "scan_tile_bwd.cuh"

#define SBWD_MAX_CHUNK_GROUPS 16

static int sbwd_env(const char *name, int dflt) {
    const char *v = getenv(name);
    return (v != NULL && v[0] >= '0' && v[0] <= '9') ? atoi(v) : dflt;
}

static int sbwd_lanes(const samba_cu_scan_bwd_args *a) {
    const int v = sbwd_env("SAMBA_EXT_SCAN_BWD_LANES", 0);
    if (v == 4 || v == 8) return v;
    return (a->u.dtype == SAMBA_CU_F32 || a->batch * a->dim < 32768) ? 8 : 4;
}

static int64_t sbwd_ckpt_floats(const samba_cu_scan_bwd_args *a, int64_t S, int64_t NS) {
    const int64_t nck = cdiv(a->seqlen, S * SPLIT_T);
    return a->batch * a->dim * (nck - 1) * NS;
}

static int64_t sbwd_chunk_groups(const samba_cu_scan_bwd_args *a, int64_t NS, int lanes) {
    const int forced = sbwd_env("SAMBA_EXT_SCAN_BWD_CHUNK", 0);
    if (forced >= 1) return forced < SBWD_MAX_CHUNK_GROUPS ? forced : SBWD_MAX_CHUNK_GROUPS;
    const int64_t budget = (int64_t)sbwd_env("SAMBA_EXT_SCAN_BWD_WS_MB", 512) << 20;
    // 8 lanes with 16-bit inputs (the main kernel loading ahead): chunks of at least 4 groups
    // were 4-7% faster than 1 at batch 1 in each of three H100 runs (gpu_backward.md)
    int64_t S = lanes == 8 && a->u.dtype != SAMBA_CU_F32 ? 4 : 1;
    while (S < SBWD_MAX_CHUNK_GROUPS && sbwd_ckpt_floats(a, S, NS) * 4 > budget) ++S;
    return S;
}

static int sbwd_vec_ok(const samba_cu_scan_bwd_args *a) {
    const int64_t item = a->u.dtype == SAMBA_CU_F32 ? 4 : 2;
    const samba_cu_ref *r[6] = {&a->u, &a->delta, &a->dout, &a->z, &a->B, &a->C};
    const int64_t *s[6] = {a->u_s, a->delta_s, a->dout_s, a->z_s, a->B_s, a->C_s};
    const int nd[6] = {3, 3, 3, 3, 4, 4};
    for (int i = 0; i < 6; ++i) {
        if (r[i]->ptr == NULL) continue;  // z absent
        if (s[i][nd[i] - 1] != 1 || (uintptr_t)r[i]->ptr % 16) return 0;
        for (int j = 0; j < nd[i] - 1; ++j)
            if ((s[i][j] * item) % 16) return 0;
    }
    return 1;
}

template <typename T, int LPC>
static samba_status sbwd_launch(const SbwdParams &p, dim3 grid, size_t smem, cudaStream_t st) {
    if (p.nchunks > 1) {
        sbwd_ckpt_kernel<T, LPC><<<grid, SBWD_THREADS, 0, st>>>(p);
        samba_status s = samba_cu_check_launch("selective_scan_bwd (checkpoints)", st);
        if (s != SAMBA_OK) return s;
    }
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(sbwd_main_kernel<T, LPC>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
        if (e != cudaSuccess) return samba_cu_fail("selective_scan_bwd: shared memory", e);
    }
    sbwd_main_kernel<T, LPC><<<grid, SBWD_THREADS, smem, st>>>(p);
    samba_status s = samba_cu_check_launch("selective_scan_bwd", st);
    if (s != SAMBA_OK || p.nslices == 1) return s;
    const int64_t warps = p.batch * p.dim;
    sbwd_finish_kernel<T><<<(unsigned)cdiv(warps, SBWD_WARPS), SBWD_THREADS, 0, st>>>(p);
    return samba_cu_check_launch("selective_scan_bwd (finish)", st);
}

template <typename T>
static samba_status sbwd_launch_t(const SbwdParams &p, int lanes, dim3 grid, cudaStream_t st) {
    const int npl = SBWD_SLICE / lanes;
    const size_t smem = (size_t)(2 * SBWD_RED_FLOATS + p.chunk_groups * npl * SBWD_THREADS) *
                        sizeof(float);
    if (lanes == 8) return sbwd_launch<T, 8>(p, grid, smem, st);
    return sbwd_launch<T, 4>(p, grid, smem, st);
}

// The tiled kernels (scan_tile_bwd.cuh) where they apply and are not switched off.
static int tb_applies(const samba_cu_scan_bwd_args *a, const SbwdParams &p) {
    const char *v = getenv("SAMBA_EXT_SCAN_BWD_VARIANT");
    if (v != NULL && strcmp(v, "split") == 0) return 0;
    return a->dstate == TILE_N && (a->dim / a->ngroups) % TB_CPB == 0 && p.vec &&
           p.vec_atomics && a->seqlen % 4 == 0;
}

// Tiles per checkpointed chunk: SAMBA_EXT_SCAN_BWD_TILES, else the fewest (at most TB_MAX_K)
// whose checkpoints ((chunks - 1) x batch x dim x 16 floats) fit SAMBA_EXT_SCAN_BWD_WS_MB.
static int64_t tb_chunk_tiles(const samba_cu_scan_bwd_args *a) {
    const int64_t ntiles = cdiv(a->seqlen, TILE_T);
    const int forced = sbwd_env("SAMBA_EXT_SCAN_BWD_TILES", 0);
    if (forced >= 1) return forced < TB_MAX_K ? forced : TB_MAX_K;
    const int64_t budget = (int64_t)sbwd_env("SAMBA_EXT_SCAN_BWD_WS_MB", 512) << 20;
    int64_t K = 1;
    while (K < TB_MAX_K && (cdiv(ntiles, K) - 1) * a->batch * a->dim * TILE_N * 4 > budget) ++K;
    return K;
}

// Resident blocks per multiprocessor the tiled main kernel is built for (TB_MIN_BLOCKS, or 2
// with SAMBA_EXT_SCAN_BWD_OCC=2).
static int tb_min_blocks(const samba_cu_scan_bwd_args *a) {
    const char *occ = getenv("SAMBA_EXT_SCAN_BWD_OCC");
    return a->u.dtype == SAMBA_CU_F32 || (occ != NULL && strcmp(occ, "2") == 0) ? 2 : 3;
}

// Segments per row: SAMBA_EXT_SCAN_BWD_SEGS, else the resident blocks of one wave (SMs x
// tb_min_blocks) over the blocks of one segment, at least 1, at most one chunk per segment;
// then the fewest segments of the same chunk count (none empty). Sets seg_chunks, nsegs.
static void tb_segments(const samba_cu_scan_bwd_args *a, SbwdParams &p) {
    const int64_t nblk = a->batch * a->dim / TB_CPB;
    const int forced = sbwd_env("SAMBA_EXT_SCAN_BWD_SEGS", 0);
    int64_t S = forced >= 1 ? forced : (int64_t)tb_min_blocks(a) * samba_sm_count() / nblk;
    S = max((int64_t)1, min(min(S, p.nchunks), (int64_t)4096));  // grid.y = 2 S - 1 < 65536
    p.seg_chunks = cdiv(p.nchunks, S);
    p.nsegs = cdiv(p.nchunks, p.seg_chunks);
}

template <typename T>
static samba_status tb_launch(const samba_cu_scan_bwd_args *a, const SbwdParams &p,
                              cudaStream_t st) {
    const unsigned nblk = (unsigned)(p.batch * p.dim / TB_CPB);
    if (p.nchunks > 1) {  // (one chunk: one segment)
        const dim3 grid(nblk, (unsigned)(2 * p.nsegs - 1));
        if (p.nsegs > 1)
            tb_ckpt_kernel<T, true><<<grid, TILE_THREADS, 0, st>>>(p);
        else
            tb_ckpt_kernel<T, false><<<grid, TILE_THREADS, 0, st>>>(p);
        samba_status s = samba_cu_check_launch("selective_scan_bwd (tiled checkpoints)", st);
        if (s != SAMBA_OK) return s;
    }
    if (p.nsegs > 1) {
        const int64_t n = p.batch * p.dim * 4;
        tb_seg_kernel<<<(unsigned)cdiv(n, 256), 256, 0, st>>>(p);
        samba_status s = samba_cu_check_launch("selective_scan_bwd (tiled segments)", st);
        if (s != SAMBA_OK) return s;
    }
    const size_t smem = sizeof(TbSmem) + (size_t)p.chunk_tiles * TILE_THREADS * sizeof(float4);
    constexpr int MINB = TB_MIN_BLOCKS(T);
    const bool two = tb_min_blocks(a) == 2;  // (always with float32, where MINB is 2)
    const bool seg = p.nsegs > 1;
    auto kern = p.z != nullptr
                    ? (two ? (seg ? tb_main_kernel<T, true, 2, true> : tb_main_kernel<T, true, 2, false>)
                           : (seg ? tb_main_kernel<T, true, MINB, true>
                                  : tb_main_kernel<T, true, MINB, false>))
                    : (two ? (seg ? tb_main_kernel<T, false, 2, true> : tb_main_kernel<T, false, 2, false>)
                           : (seg ? tb_main_kernel<T, false, MINB, true>
                                  : tb_main_kernel<T, false, MINB, false>));
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
        if (e != cudaSuccess) return samba_cu_fail("selective_scan_bwd: shared memory", e);
    }
    kern<<<dim3(nblk, (unsigned)p.nsegs), TILE_THREADS, smem, st>>>(p);
    return samba_cu_check_launch("selective_scan_bwd (tiled)", st);
}

// Backward calls per kernel so far (0 split, 1 tiled): the tests check which kernel a shape reaches.
static long long g_bwd_launches[2];

extern "C" long long samba_cu_scan_bwd_launches(int kind) {
    return kind >= 0 && kind < 2 ? g_bwd_launches[kind] : -1;
}

static samba_status sbwd_zero(void *p, int64_t nfloats, cudaStream_t st) {
    if (p == NULL || nfloats <= 0) return SAMBA_OK;
    cudaError_t e = cudaMemsetAsync(p, 0, (size_t)nfloats * sizeof(float), st);
    return e == cudaSuccess ? SAMBA_OK : samba_cu_fail("selective_scan_bwd: cudaMemsetAsync", e);
}

static samba_status sbwd_check(const samba_cu_scan_bwd_args *a) {
    if (a->batch < 0 || a->dim < 0 || a->seqlen < 0 || a->ngroups < 1 || a->dim % a->ngroups)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "selective_scan_bwd: dim %lld not divisible by "
                                 "ngroups %lld", (long long)a->dim, (long long)a->ngroups);
    if (a->dstate < 1 || a->dstate > 256)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "selective_scan_bwd: dstate must be in "
                                 "1..256 on CUDA, got %lld", (long long)a->dstate);
    const int dt = a->u.dtype;
    if (a->delta.dtype != dt || a->dout.dtype != dt || a->B.dtype != dt || a->C.dtype != dt ||
        (a->z.ptr != NULL && a->z.dtype != dt) || dt > SAMBA_CU_BF16)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "selective_scan_bwd: u, delta, z, dout, B and "
                                 "C must have one float dtype");
    const int64_t bdl = a->batch * a->dim * a->seqlen;
    if ((a->dim > 0 && a->dA == NULL) ||
        (a->batch * a->seqlen > 0 && (a->dB == NULL || a->dC == NULL)) ||
        (bdl > 0 && (a->du.ptr == NULL || a->ddelta.ptr == NULL ||
                     (a->z.ptr != NULL && a->dz.ptr == NULL))))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "selective_scan_bwd: an output is missing");
    const int64_t nslices = cdiv(a->dstate, SBWD_SLICE);
    if (a->batch > 65535 || a->ngroups * nslices > 65535)
        return samba_cu_fail_msg(SAMBA_ERR_UNSUPPORTED, "selective_scan_bwd: batch (%lld) and "
                                 "ngroups x ceil(dstate / 16) (%lld) must be <= 65535 on CUDA",
                                 (long long)a->batch, (long long)(a->ngroups * nslices));
    return SAMBA_OK;
}

extern "C" samba_status samba_cu_scan_bwd(const samba_cu_scan_bwd_args *a, void *stream) {
    samba_status s = sbwd_check(a);
    if (s != SAMBA_OK) return s;
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t B = a->batch, Dm = a->dim, N = a->dstate, L = a->seqlen, G = a->ngroups;
    // the sums (atomic adds) start from 0
    if ((s = sbwd_zero(a->dA, Dm * N, st)) != SAMBA_OK ||
        (s = sbwd_zero(a->dB, B * G * N * L, st)) != SAMBA_OK ||
        (s = sbwd_zero(a->dC, B * G * N * L, st)) != SAMBA_OK ||
        (s = sbwd_zero(a->dD, Dm, st)) != SAMBA_OK ||
        (s = sbwd_zero(a->ddelta_bias, Dm, st)) != SAMBA_OK)
        return s;
    if (B * Dm == 0) return SAMBA_OK;
    if (L == 0) {  // no steps: the gradient of the last state is that of the initial state
        if (a->dinitial_state == NULL) return SAMBA_OK;
        const size_t nb = (size_t)(B * Dm * N) * sizeof(float);
        cudaError_t e = a->dlast_state
                            ? cudaMemcpyAsync(a->dinitial_state, a->dlast_state, nb,
                                              cudaMemcpyDeviceToDevice, st)
                            : cudaMemsetAsync(a->dinitial_state, 0, nb, st);
        return e == cudaSuccess ? SAMBA_OK : samba_cu_fail("selective_scan_bwd (empty)", e);
    }
    SbwdParams p;
    memset(&p, 0, sizeof p);
    p.batch = B;
    p.dim = Dm;
    p.dstate = N;
    p.seqlen = L;
    p.ngroups = G;
    p.u = a->u.ptr;
    p.delta = a->delta.ptr;
    p.z = a->z.ptr;
    p.dout = a->dout.ptr;
    p.B = a->B.ptr;
    p.C = a->C.ptr;
    memcpy(p.u_s, a->u_s, sizeof p.u_s);
    memcpy(p.delta_s, a->delta_s, sizeof p.delta_s);
    memcpy(p.z_s, a->z_s, sizeof p.z_s);
    memcpy(p.dout_s, a->dout_s, sizeof p.dout_s);
    memcpy(p.B_s, a->B_s, sizeof p.B_s);
    memcpy(p.C_s, a->C_s, sizeof p.C_s);
    p.A = a->A;
    p.D = a->D;
    p.delta_bias = a->delta_bias;
    p.initial_state = a->initial_state;
    p.dlast_state = a->dlast_state;
    p.du = a->du;
    p.ddelta = a->ddelta;
    p.dz = a->dz;
    p.dA = a->dA;
    p.dB = a->dB;
    p.dC = a->dC;
    p.dD = a->D.ptr ? a->dD : NULL;
    p.ddelta_bias = a->delta_bias.ptr ? a->ddelta_bias : NULL;
    p.dinitial_state = a->dinitial_state;
    p.softplus = a->delta_softplus != 0;
    p.vec = sbwd_vec_ok(a);
    p.vec_atomics = sbwd_env("SAMBA_EXT_SCAN_BWD_VEC", 1) == 1 && L % 4 == 0 &&
                    (uintptr_t)a->dB % 16 == 0 && (uintptr_t)a->dC % 16 == 0;
    p.nslices = (int)cdiv(N, SBWD_SLICE);
    const int64_t NS = (int64_t)p.nslices * SBWD_SLICE;
    const int tiled = tb_applies(a, p);
    const int lanes = sbwd_lanes(a);
    int64_t nck_f, seg_f = 0;
    if (tiled) {
        p.chunk_tiles = tb_chunk_tiles(a);
        p.nchunks = cdiv(cdiv(L, TILE_T), p.chunk_tiles);
        tb_segments(a, p);
        nck_f = (p.nchunks - 1) * B * Dm * TILE_N;
        // with segments: ckpt_dt, seg_g, seg_h, seg_dt after the checkpoints (float4-aligned:
        // B x Dm is a multiple of 32)
        if (p.nsegs > 1)
            seg_f = (p.nchunks - 1) * B * Dm + (p.nsegs - 1) * B * Dm * (2 * TILE_N + 1);
        const samba_cu_ref *o[3] = {&a->du, &a->ddelta, &a->dz};
        p.vec_out = L % 8 == 0;
        for (int i = 0; i < 3; ++i)
            if (o[i]->ptr != NULL && (uintptr_t)o[i]->ptr % 16) p.vec_out = 0;
    } else {
        p.chunk_groups = sbwd_chunk_groups(a, NS, lanes);
        p.nchunks = cdiv(L, p.chunk_groups * SPLIT_T);
        nck_f = sbwd_ckpt_floats(a, p.chunk_groups, NS);
    }

    // workspace: checkpoints, and the per-step sums when there is more than one slice
    const int64_t acc_f = p.nslices > 1 ? 3 * B * Dm * L : 0;
    void *ws = NULL;
    if (nck_f + seg_f + acc_f > 0) {
        cudaError_t e = cudaMallocAsync(&ws, (size_t)(nck_f + seg_f + acc_f) * sizeof(float), st);
        if (e != cudaSuccess) return samba_cu_fail("selective_scan_bwd: workspace cudaMallocAsync", e);
        p.ckpt = (float *)ws;
        if (seg_f > 0) {
            p.ckpt_dt = p.ckpt + nck_f;
            p.seg_g = p.ckpt_dt + (p.nchunks - 1) * B * Dm;
            p.seg_h = p.seg_g + (p.nsegs - 1) * B * Dm * TILE_N;
            p.seg_dt = p.seg_h + (p.nsegs - 1) * B * Dm * TILE_N;
        }
        p.acc = p.ckpt + nck_f + seg_f;
        s = sbwd_zero(p.acc, acc_f, st);
    }
    const int64_t cpb = SBWD_THREADS / lanes;
    const dim3 grid((unsigned)cdiv(Dm / G, cpb), (unsigned)(G * p.nslices), (unsigned)B);
    if (s == SAMBA_OK) ++g_bwd_launches[tiled ? 1 : 0];
    if (s == SAMBA_OK && tiled) {
        if (a->u.dtype == SAMBA_CU_BF16)
            s = tb_launch<__nv_bfloat16>(a, p, st);
        else if (a->u.dtype == SAMBA_CU_F16)
            s = tb_launch<__half>(a, p, st);
        else
            s = tb_launch<float>(a, p, st);
    } else if (s == SAMBA_OK) {
        if (a->u.dtype == SAMBA_CU_BF16)
            s = sbwd_launch_t<__nv_bfloat16>(p, lanes, grid, st);
        else if (a->u.dtype == SAMBA_CU_F16)
            s = sbwd_launch_t<__half>(p, lanes, grid, st);
        else
            s = sbwd_launch_t<float>(p, lanes, grid, st);
    }
    if (ws != NULL) {
        cudaError_t e = cudaFreeAsync(ws, st);
        if (s == SAMBA_OK && e != cudaSuccess)
            return samba_cu_fail("selective_scan_bwd: cudaFreeAsync", e);
    }
    return s;
}
