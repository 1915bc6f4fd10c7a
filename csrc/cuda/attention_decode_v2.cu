// attention_decode_v2.cu - split-KV decode attention, one launch: a fixed grid of blocks that
// fills the GPU once, an even ("stream-K") division of the key tiles over those blocks, and
// the merge of each (batch, kv head)'s partial softmax states folded into the same kernel.
//
// Work: a "row" is (batch b, kv head, group of up to 8 query heads sharing it); its keys are
// the recency indices 0 .. n_valid-1 (slot (pos - r) mod C), cut into tiles of BT keys, with
// the row count taken from the capacity C (n_valid is read on the device, so a captured graph
// needs no change between steps; tiles past n_valid are skipped). All rows' tiles form one
// list, rows in the order (b, kv head, group) - the groups of one kv head are adjacent, so
// their blocks read the same K/V rows together through L2. Block i of nblk takes the tiles
// [i * total / nblk, (i + 1) * total / nblk): every block streams the same number of tiles
// (within one), with nblk = SMs x resident blocks per SM (one wave, no tail of half-empty
// waves). A block whose range crosses a row boundary handles two or more "segments".
//
// Per segment (the tensor-core scheme of attention_decode.cu with 8 warps instead of 4):
//   * K/V tiles of BT = 16 x NW keys stream through shared memory with cp.async, STAGES - 1
//     tiles in flight (16-byte copies, row addresses following the ring buffer);
//   * each warp takes 16 keys of a tile: S^T = K Q^T (the 8 query heads as the mma N side),
//     float32 online softmax per head, O^T += V^T P^T with P^T from movmatrix;
//   * the NW warps are merged through shared memory into one (m, l, o) per head.
// A row covered by one segment is written out directly. Otherwise each segment stores its
// state in the workspace slot (block + row) - unique, since a block's next segment is the next
// row - then adds 1 to the row's counter (one acquire-release atomic by thread 0 after a
// barrier); the block that brings the counter to the number of segments of the row merges the
// row's slots (float4 loads from L2, 16 slots in flight per thread, the first 16 issued before
// the combine weights are computed), writes the output and sets the counter back to zero, so
// the next launch finds it zeroed without a memset.
//
// Workspace: per (device, stream), a counter buffer and a slot buffer, allocated with
// cudaMalloc on first use (the counters zeroed with cudaMemsetAsync on that stream) and grown
// geometrically. A replaced buffer is never freed, because a captured graph may point at it
// (nor are the buffers of a stream evicted from the table of 64 streams, see d2_workspace).
// A call under stream capture whose workspace is too small runs the two-kernel path of
// attention_decode.cu instead (no allocation while capturing). Graphs captured on one stream
// share its workspace: they must not be replayed concurrently with each other or with direct
// calls on that stream.
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "decode_warp.cuh"
#include "pdl.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_decode;

constexpr int D2_GB = 8;             // query heads per row (the mma N side)
constexpr int D2_MAX_BLOCKS = 1024;  // bounds the slots one row can have (combine weights)
constexpr int D2_LOADS = 16;         // slots in flight per thread in the combine

// Phase stamps for benchmarks/cuda_decode_phases.cu, which includes this file with
// SAMBA_D2_PHASES defined: thread 0 of each block records the SM clock and the global timer at
// the points D2_STAMP names. Without the macro they compile to nothing.
#ifdef SAMBA_D2_PHASES
constexpr int D2_NSTAMPS = 10;  // 8 and 9: inside the combine (the row's last block)
__device__ unsigned long long d2_stamps[D2_MAX_BLOCKS][D2_NSTAMPS][2];
#define D2_STAMP(i)                                                              \
    do {                                                                         \
        if (threadIdx.x == 0) {                                                  \
            unsigned long long g_;                                               \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g_));               \
            d2_stamps[blockIdx.x][i][0] = clock64();                             \
            d2_stamps[blockIdx.x][i][1] = g_;                                    \
        }                                                                        \
    } while (0)
#else
#define D2_STAMP(i) ((void)0)
#endif

template <int D_, int NW_, int STAGES_> struct D2Cfg {
    static constexpr int D = D_;            // template head dim (>= hd)
    static constexpr int NW = NW_;          // warps
    static constexpr int THREADS = 32 * NW;
    static constexpr int BT = 16 * NW;      // keys per tile (16 per warp)
    static constexpr int STAGES = STAGES_;  // K/V pipeline depth
    static constexpr int LD = D + 8;        // padded smem row (elements)
    static constexpr int KSTEPS = D / 16;
    static constexpr int CH = D / 8;        // 16-byte chunks per row
    static constexpr size_t STAGE_BYTES = (size_t)STAGES * BT * LD * 2;  // all K (or V) stages
    static constexpr size_t SMEM = (size_t)D2_GB * LD * 2 + 2 * STAGE_BYTES;
    static_assert(KSTEPS % 2 == 0, "two k-steps per ldmatrix.x4");
    static_assert((BT * CH) % THREADS == 0, "whole tile-load iterations");
    // scratch reusing the K stages: the warp merge (NW x 8 heads x D floats), the combine's
    // maxima / weights and sums (2 x slots x 8 floats); the V stages: the combine's partial
    // sums of outputs (float4s)
    static_assert((size_t)NW * D2_GB * D * 4 <= STAGE_BYTES, "merge scratch");
    static_assert((size_t)2 * D2_MAX_BLOCKS * D2_GB * 4 <= STAGE_BYTES, "combine (m, l) / weights");
    static_assert((size_t)(THREADS + 2 * D) * 16 <= STAGE_BYTES, "combine sums");
};
// 8 warps (128-key tiles) and 3-4 stages: 64-96 KB in flight per SM at d64, more above;
// d256 keeps 4 warps (a 128-key tile would not fit twice).
// SAMBA_D2_STAGES64: the head-dim-64 pipeline depth, for benchmarks/cuda_decode_phases.cu's
// comparisons (6 stages fit: 222.3 KB)
#ifndef SAMBA_D2_STAGES64
#define SAMBA_D2_STAGES64 4
#endif
using D2_64 = D2Cfg<64, 8, SAMBA_D2_STAGES64>;  // 148.6 KB at 4 stages
using D2_96 = D2Cfg<96, 8, 3>;    // 161.4 KB
using D2_128 = D2Cfg<128, 8, 3>;  // 211.1 KB
using D2_256 = D2Cfg<256, 4, 3>;  // 207.0 KB

struct Dec2Args {
    int64_t nheads, nheads_kv, C;
    int64_t rows, tpr, total;  // rows, tiles per row, rows * tpr
    int hd, G, ngroups, nblk;
    const void *q, *k, *v;
    samba_cu_ref pos, n_valid;
    float sl;  // softmax_scale * log2(e)
    void *out;
    float *ws_o;      // [nblk + rows][8][hd]  unnormalised outputs
    float *ws_ml;     // [nblk + rows][8][2]   (max, sum) in base-2 units
    unsigned *count;  // [rows]                arrivals, zero between launches
};

// first tile of block i, and the block that owns tile x (the inverse: the largest i with
// first(i) <= x)
__device__ __forceinline__ int64_t d2_first(const Dec2Args &a, int64_t i) {
    return i * a.total / a.nblk;
}
__device__ __forceinline__ int64_t d2_owner(const Dec2Args &a, int64_t x) {
    return ((x + 1) * a.nblk - 1) / a.total;
}

template <typename T> __device__ __forceinline__ T d2_from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 d2_from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half d2_from_f<__half>(float x) {
    return __float2half_rn(x);
}

// atomicAdd(count, 1) with acquire-release semantics at GPU scope; returns the old value.
__device__ __forceinline__ unsigned d2_arrive(unsigned *count) {
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                 : "=r"(old) : "l"(count) : "memory");
    return old;
}

struct D2Shared {
    float m[8][D2_GB], l[8][D2_GB];  // per warp (NW <= 8)
    float L[D2_GB];
    int last;
};

// Merges the P slots p0 .. p0 + P - 1 of one row into the output rows out_rows (nh heads).
template <typename T, class C>
__device__ __forceinline__ void d2_combine(const Dec2Args &a, int64_t p0, int P, int nh,
                                           T *out_rows, unsigned char *smem, D2Shared &sh) {
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    float *wts = reinterpret_cast<float *>(smem + (size_t)D2_GB * C::LD * 2);  // K stages
    float *lsh = wts + D2_MAX_BLOCKS * D2_GB;
    float4 *red = reinterpret_cast<float4 *>(smem + (size_t)D2_GB * C::LD * 2 + C::STAGE_BYTES);
    const float2 *ml = reinterpret_cast<const float2 *>(a.ws_ml) + p0 * D2_GB;
    const int c4 = a.hd / 4, cols = nh * c4;
    const int subs = cols >= C::THREADS ? 1 : C::THREADS / cols;
    const int64_t stride = (int64_t)D2_GB * c4;  // float4s per slot
    // 0. this thread's first round of output loads (step 2's first item), issued before the
    //    weights are known so that their latency overlaps step 1's
    float4 v0[D2_LOADS];
    {
        const int it = tid, u = it / cols, c = it % cols;
        const float4 *src = reinterpret_cast<const float4 *>(a.ws_o + (p0 * D2_GB + c / c4) * a.hd) + c % c4;
#pragma unroll
        for (int e = 0; e < D2_LOADS; ++e) {
            const int s = u + e * subs;
            v0[e] = it < cols * subs && s < P ? __ldcg(src + s * stride)
                                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    // 1. per head: the largest max M, each slot's weight w_s = 2^(m_s - M), L = sum w_s l_s
    //    (one pass over the (m, l) pairs in L2, the pairs kept in shared memory)
    for (int j = warp; j < nh; j += C::NW) {
        float mx = -INFINITY;
        for (int s = lane; s < P; s += 32) {
            const float2 x = __ldcg(ml + s * D2_GB + j);
            wts[s * D2_GB + j] = x.x;
            lsh[s * D2_GB + j] = x.y;
            mx = fmaxf(mx, x.x);
        }
        mx = warp_max(mx);
        const float mref = mx == -INFINITY ? 0.0f : mx;
        float ls = 0.0f;
        for (int s = lane; s < P; s += 32) {
            const float w = fast_exp2(wts[s * D2_GB + j] - mref);
            wts[s * D2_GB + j] = w;
            ls += w * lsh[s * D2_GB + j];  // 0 * NaN stays NaN
        }
        ls = warp_sum(ls);
        if (lane == 0) sh.L[j] = ls;
    }
    __syncthreads();
    D2_STAMP(8);
    // 2. sum_s w_s o_s: one float4 column (head j, dims 4 d4 ..) per item; when the columns
    //    are fewer than the threads, `subs` threads share a column over interleaved slots.
    //    The first round of the first item comes from step 0's registers.
    float4 acc0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (tid < cols * subs) {
        const int u = tid / cols, j = (tid % cols) / c4;
#pragma unroll
        for (int e = 0; e < D2_LOADS; ++e) {
            const int s = u + e * subs;
            const float w = s < P ? wts[s * D2_GB + j] : 0.0f;
            acc0.x += w * v0[e].x;
            acc0.y += w * v0[e].y;
            acc0.z += w * v0[e].z;
            acc0.w += w * v0[e].w;
        }
    }
    for (int it = tid; it < cols * subs; it += C::THREADS) {
        const int u = it / cols, c = it % cols, j = c / c4, d4 = c % c4;
        const float4 *src = reinterpret_cast<const float4 *>(a.ws_o + (p0 * D2_GB + j) * a.hd) + d4;
        const bool first = it == tid;
        float4 acc = first ? acc0 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int s0 = first ? u + D2_LOADS * subs : u; s0 < P; s0 += D2_LOADS * subs) {
            float4 v[D2_LOADS];
            float w[D2_LOADS];
#pragma unroll
            for (int e = 0; e < D2_LOADS; ++e) {  // independent loads in flight
                const int s = s0 + e * subs;
                const bool ok = s < P;
                v[e] = ok ? __ldcg(src + s * stride) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                w[e] = ok ? wts[s * D2_GB + j] : 0.0f;
            }
#pragma unroll
            for (int e = 0; e < D2_LOADS; ++e) {
                acc.x += w[e] * v[e].x;
                acc.y += w[e] * v[e].y;
                acc.z += w[e] * v[e].z;
                acc.w += w[e] * v[e].w;
            }
        }
        red[u * cols + c] = acc;
    }
    __syncthreads();
    D2_STAMP(9);
    for (int c = tid; c < cols; c += C::THREADS) {
        const int j = c / c4, d4 = c % c4;
        float4 acc = red[c];
        for (int u = 1; u < subs; ++u) {
            const float4 r = red[u * cols + c];
            acc.x += r.x;
            acc.y += r.y;
            acc.z += r.z;
            acc.w += r.w;
        }
        const float L = sh.L[j];
        T *o = out_rows + (int64_t)j * a.hd + 4 * d4;
        o[0] = d2_from_f<T>(L == 0.0f ? 0.0f : acc.x / L);
        o[1] = d2_from_f<T>(L == 0.0f ? 0.0f : acc.y / L);
        o[2] = d2_from_f<T>(L == 0.0f ? 0.0f : acc.z / L);
        o[3] = d2_from_f<T>(L == 0.0f ? 0.0f : acc.w / L);
    }
}

// One segment: row `row`, tiles [t0, t1) of it.
template <typename T, class C>
__device__ __forceinline__ void d2_segment(const Dec2Args &a, int64_t row, int64_t t0,
                                           int64_t t1, unsigned char *smem, D2Shared &sh) {
    T *sQ = reinterpret_cast<T *>(smem);   // [8][LD]
    T *sK = sQ + D2_GB * C::LD;            // [STAGES][BT][LD]
    T *sV = sK + C::STAGES * C::BT * C::LD;  // [STAGES][BT][LD]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2;

    const int grp = (int)(row % a.ngroups);
    const int64_t bh = row / a.ngroups;
    const int64_t hkv = bh % a.nheads_kv, b = bh / a.nheads_kv;
    const int64_t h0 = hkv * a.G + (int64_t)grp * D2_GB;  // first query head of the row
    const int nh = min(D2_GB, a.G - grp * D2_GB);

    int64_t nv = ldi(a.n_valid.ptr, a.n_valid.dtype, b);
    nv = nv < 0 ? 0 : (nv > a.C ? a.C : nv);
    const int64_t p = ldi(a.pos.ptr, a.pos.dtype, b);
    const int64_t newest = ((p % a.C) + a.C) % a.C;
    const int64_t r_begin = t0 * C::BT;
    const int64_t r_end = t1 * C::BT < nv ? t1 * C::BT : nv;
    const int ntiles = r_end > r_begin ? (int)((r_end - r_begin + C::BT - 1) / C::BT) : 0;
#ifdef SAMBA_D2_PHASES
    asm volatile("" ::"l"(nv), "l"(p));  // the stamp waits for both loads
#endif
    D2_STAMP(2);

    const T *kg = (const T *)a.k + (b * a.C * a.nheads_kv + hkv) * a.hd;
    const T *vg = (const T *)a.v + (b * a.C * a.nheads_kv + hkv) * a.hd;
    const int64_t rstride = a.nheads_kv * a.hd;  // elements between slots
    auto load_tile = [&](int tile, int stage) {
        const int64_t r0 = r_begin + (int64_t)tile * C::BT;
        T *ks = sK + stage * C::BT * C::LD, *vs = sV + stage * C::BT * C::LD;
#pragma unroll
        for (int i0 = 0; i0 < C::BT * C::CH; i0 += C::THREADS) {
            const int i = i0 + tid;
            const int r = i / C::CH, c = i % C::CH;
            const bool ok = r0 + r < r_end && c * 8 < a.hd;
            int64_t slot = newest - (r0 + r);
            if (slot < 0) slot += a.C;
            const int64_t off = ok ? slot * rstride + c * 8 : 0;
            cp_async16(ks + r * C::LD + c * 8, kg + off, ok);
            cp_async16(vs + r * C::LD + c * 8, vg + off, ok);
        }
    };

    float o[C::KSTEPS][4];  // O^T m-tiles: (dims mt*16 + g (+8), heads 2tq, 2tq+1)
#pragma unroll
    for (int i = 0; i < C::KSTEPS; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // heads 2tq, 2tq + 1

    if (ntiles > 0) {
        const T *qg = (const T *)a.q + (b * a.nheads + h0) * a.hd;
        for (int i = tid; i < D2_GB * C::CH; i += C::THREADS) {
            const int r = i / C::CH, c = i % C::CH;
            const bool ok = r < nh && c * 8 < a.hd;
            cp_async16(sQ + r * C::LD + c * 8, ok ? qg + r * a.hd + c * 8 : qg, ok);
        }
#pragma unroll
        for (int st = 0; st < C::STAGES - 1; ++st) {
            if (st < ntiles) load_tile(st, st);
            cp_async_commit();  // (possibly empty) group st; group 0 also holds Q
        }
        uint32_t qb[C::KSTEPS][2];  // Q^T B fragments
        for (int it = 0; it < ntiles; ++it) {
            cp_async_wait<C::STAGES - 2>();  // tile it (and Q) landed
            __syncthreads();                 // ... for every thread; stage (it-1) is free again
            if (it == 0) {
                D2_STAMP(3);
                dec_q_frags<T, C::KSTEPS, C::LD>(qb, sQ, lane);
            }
            const int nxt = it + C::STAGES - 1;
            if (nxt < ntiles) load_tile(nxt, nxt % C::STAGES);
            cp_async_commit();

            const int stage = it % C::STAGES;
            const int64_t key0 = r_begin + (int64_t)it * C::BT + warp * 16;
            if (key0 >= r_end) continue;  // this warp's 16 keys are all past the end
            const T *k_w = sK + (stage * C::BT + warp * 16) * C::LD;
            const T *v_w = sV + (stage * C::BT + warp * 16) * C::LD;

            dec_warp_tile<T, C::KSTEPS, C::LD>(k_w, v_w, qb, key0 + g, r_end, a.sl, o, m, l, lane);
        }
        cp_async_wait<0>();
    }
    __syncthreads();  // the K stages become the merge scratch
    D2_STAMP(4);

    // ---- merge the NW warps: (m, l) per head, O^T per head and dim ----
    float *so = reinterpret_cast<float *>(sK);  // [NW][8][D]
    dec_warp_publish<C::KSTEPS, C::D>(o, m, l, sh.m, sh.l, so, warp, lane);
    __syncthreads();
    D2_STAMP(5);

    const int64_t first = d2_owner(a, row * a.tpr), last = d2_owner(a, (row + 1) * a.tpr - 1);
    const int nseg = (int)(last - first + 1);
    const int64_t slot = blockIdx.x + row;
    T *out_rows = (T *)a.out + (b * a.nheads + h0) * a.hd;
    for (int item = tid; item < D2_GB * C::D; item += C::THREADS) {
        const int j = item / C::D, d = item % C::D;
        if (j >= nh || d >= a.hd) continue;
        float M, L, acc;
        dec_merge_warps<C::NW, C::D>(sh.m, sh.l, so, j, d, M, L, acc);
        if (nseg == 1) {
            out_rows[(int64_t)j * a.hd + d] = d2_from_f<T>(L == 0.0f ? 0.0f : acc / L);
        } else {
            a.ws_o[(slot * D2_GB + j) * a.hd + d] = acc;
            if (d == 0) {
                a.ws_ml[(slot * D2_GB + j) * 2] = M;
                a.ws_ml[(slot * D2_GB + j) * 2 + 1] = L;
            }
        }
    }
    if (nseg > 1) {
        // The arrival is one acquire-release add by thread 0 after the barrier: the release
        // publishes every thread's slot writes (ordered before it by the barrier), the
        // acquire makes the earlier arrivals' slots visible to the block that comes last
        // (through the barrier that follows; the combine reads them past L1).
        __syncthreads();
        if (tid == 0) sh.last = d2_arrive(a.count + row) == (unsigned)(nseg - 1);
        __syncthreads();
        D2_STAMP(6);
        if (sh.last) {
            d2_combine<T, C>(a, first + row, nseg, nh, out_rows, smem, sh);
            if (tid == 0) a.count[row] = 0u;  // ready for the next launch
        }
    }
    __syncthreads();  // shared memory is reused by the next segment
    D2_STAMP(7);
}

template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS, 1) decode_v2_kernel(Dec2Args a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ D2Shared sh;
    D2_STAMP(0);
    pdl_wait();
    pdl_trigger();
    D2_STAMP(1);
    const int64_t x_end = d2_first(a, (int64_t)blockIdx.x + 1);
    for (int64_t x = d2_first(a, blockIdx.x); x < x_end;) {
        const int64_t row = x / a.tpr;
        const int64_t t0 = x - row * a.tpr;
        const int64_t t1 = t0 + (x_end - x) < a.tpr ? t0 + (x_end - x) : a.tpr;
        d2_segment<T, C>(a, row, t0, t1, smem_raw, sh);
        x += t1 - t0;
    }
}

// ------------------------------------------------------------------ host ---------------
// Resident blocks per SM x SMs for one kernel, per device (cached; 0 = unknown).
template <typename T, class C> int d2_grid_blocks() {
    static int cached[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        cudaGetLastError();
        return 0;
    }
    if (cached[dev] == 0) {
        int sms = 0, per_sm = 0;
        if (cudaFuncSetAttribute(decode_v2_kernel<T, C>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)C::SMEM) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_v2_kernel<T, C>,
                                                          C::THREADS, C::SMEM) != cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        cached[dev] = per_sm < 1 ? 0 : sms * per_sm;
    }
    return cached[dev];
}

// The per-(device, stream) workspace (see the header comment): two buffers, the arrival
// counters (zero between launches; zeroed when allocated) and the slots (written before read).
struct D2Buffer {
    void *ptr;
    size_t bytes;
};
struct D2Workspace {
    int dev;
    cudaStream_t stream;
    uint64_t used;  // last use (a call counter), for the eviction below
    D2Buffer count, slots;
};
constexpr int D2_WS_MAX = 64;
std::mutex d2_ws_mutex;
D2Workspace d2_ws[D2_WS_MAX];
int d2_ws_n;
uint64_t d2_ws_clock;

// Makes b hold >= bytes (a new buffer, the old one kept: a captured graph may use it).
samba_status d2_grow(D2Buffer *b, size_t bytes, int zero, cudaStream_t st) {
    if (b->bytes >= bytes) return SAMBA_OK;
    size_t nb = b->bytes * 2 > bytes ? b->bytes * 2 : bytes;
    nb = (nb + 4095) & ~(size_t)4095;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nb);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return samba_cu_fail("swa_decode (workspace)", e);
    }
    if (zero && (e = cudaMemsetAsync(p, 0, nb, st)) != cudaSuccess) {
        cudaFree(p);
        return samba_cu_fail("swa_decode (workspace memset)", e);
    }
    b->ptr = p;
    b->bytes = nb;
    return SAMBA_OK;
}

// *count / *slots = buffers of >= the given sizes for (current device, st), or NULL when they
// cannot be had without allocating under stream capture: the caller then takes the two-kernel
// path. The table holds D2_WS_MAX streams; a new stream beyond that takes over the least
// recently used entry, whose buffers are then forgotten, not freed (a graph may use them).
samba_status d2_workspace(size_t count_bytes, size_t slot_bytes, cudaStream_t st,
                          unsigned **count, float **slots) {
    *count = NULL;
    *slots = NULL;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return samba_cu_fail("swa_decode (cudaGetDevice)", e);
    std::lock_guard<std::mutex> lock(d2_ws_mutex);
    D2Workspace *w = NULL;
    for (int i = 0; i < d2_ws_n; ++i)
        if (d2_ws[i].dev == dev && d2_ws[i].stream == st) w = &d2_ws[i];
    if (!w || w->count.bytes < count_bytes || w->slots.bytes < slot_bytes) {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(st, &cs) != cudaSuccess) {
            cudaGetLastError();
            return SAMBA_OK;  // cannot tell: no allocation
        }
        if (cs != cudaStreamCaptureStatusNone) return SAMBA_OK;
        if (!w) {
            if (d2_ws_n < D2_WS_MAX) {
                w = &d2_ws[d2_ws_n++];
            } else {
                w = &d2_ws[0];
                for (int i = 1; i < D2_WS_MAX; ++i)
                    if (d2_ws[i].used < w->used) w = &d2_ws[i];
            }
            memset(w, 0, sizeof *w);
            w->dev = dev;
            w->stream = st;
        }
        samba_status s = d2_grow(&w->count, count_bytes, 1, st);
        if (s == SAMBA_OK) s = d2_grow(&w->slots, slot_bytes, 0, st);
        if (s != SAMBA_OK) return s;
    }
    w->used = ++d2_ws_clock;
    *count = (unsigned *)w->count.ptr;
    *slots = (float *)w->slots.ptr;
    return SAMBA_OK;
}

// The block count (the default; SAMBA_EXT_ATTN_DECODE_ALIGN=0, read on every call, keeps the
// even stream-K split of nblk blocks): one that keeps every block inside one row, or every row
// inside one block. rows <= nblk: k blocks per row with k | tpr, so a block's tiles are one
// piece of one row (no pipeline restart at a row boundary); rows > nblk: m whole rows per block
// with m | rows (no merge at all). Used when it keeps at least 7/8 of nblk; returns nblk
// otherwise. Measured (H100, benchmarks/results/gpu_attention_notes.md): as fast or faster at
// every decode size, 12% at batch 16 with 4K caches.
int64_t d2_aligned_blocks(int64_t rows, int64_t tpr, int64_t nblk) {
    const char *e = getenv("SAMBA_EXT_ATTN_DECODE_ALIGN");
    if ((e && e[0] == '0') || rows < 1 || tpr < 1) return nblk;
    int64_t n;
    if (rows <= nblk) {
        int64_t k = nblk / rows;
        while (k > 1 && tpr % k) --k;
        n = rows * k;
    } else {
        int64_t m = cdiv(rows, nblk);
        while (rows % m) ++m;
        n = rows / m;
    }
    return 8 * n >= 7 * nblk ? n : nblk;
}

template <typename T, class C>
samba_status d2_run(Dec2Args a, int64_t batch, cudaStream_t st, int *taken) {
    *taken = 0;
    const int grid = d2_grid_blocks<T, C>();
    if (grid < 1) return SAMBA_OK;
    a.tpr = cdiv(a.C, C::BT);
    a.rows = batch * a.nheads_kv * a.ngroups;
    a.total = a.rows * a.tpr;
    if (a.total > ((int64_t)1 << 50)) return SAMBA_OK;  // keeps (x + 1) * nblk in int64
    int64_t nblk = grid < D2_MAX_BLOCKS ? grid : D2_MAX_BLOCKS;
    if (nblk > a.total) nblk = a.total;
    nblk = d2_aligned_blocks(a.rows, a.tpr, nblk);
    a.nblk = (int)nblk;
    // (max, sum) then outputs for nblk + rows slots; one counter per row
    const size_t slots = (size_t)(nblk + a.rows);
    const size_t ml_bytes = slots * D2_GB * 2 * sizeof(float);
    const size_t o_bytes = slots * D2_GB * (size_t)a.hd * sizeof(float);
    float *ws = NULL;
    samba_status s = d2_workspace((size_t)a.rows * sizeof(unsigned), ml_bytes + o_bytes, st,
                                  &a.count, &ws);
    if (s != SAMBA_OK || ws == NULL) return s;
    a.ws_ml = ws;
    a.ws_o = ws + ml_bytes / sizeof(float);
    cudaError_t e = cudaFuncSetAttribute(decode_v2_kernel<T, C>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess) return samba_cu_fail("swa_decode (shared memory opt-in)", e);
    *taken = 1;
    samba_launch(decode_v2_kernel<T, C>, (unsigned)a.nblk, C::THREADS, C::SMEM, st, a);
    return samba_cu_check_launch("swa_decode (v2)", st);
}

template <typename T> samba_status d2_by_dim(Dec2Args a, int64_t batch, cudaStream_t st, int *taken) {
    if (a.hd <= 64) return d2_run<T, D2_64>(a, batch, st, taken);
    if (a.hd <= 96) return d2_run<T, D2_96>(a, batch, st, taken);
    if (a.hd <= 128) return d2_run<T, D2_128>(a, batch, st, taken);
    return d2_run<T, D2_256>(a, batch, st, taken);
}

size_t d2_smem(int64_t hd) {
    if (hd <= 64) return D2_64::SMEM;
    if (hd <= 96) return D2_96::SMEM;
    if (hd <= 128) return D2_128::SMEM;
    return D2_256::SMEM;
}

}  // namespace

int attn_decode_v2_applicable(int64_t headdim, samba_cu_ref q, samba_cu_ref k_cache,
                              samba_cu_ref v_cache, samba_cu_ref out) {
    const int dt = q.dtype;
    if (dt != SAMBA_CU_BF16 && dt != SAMBA_CU_F16) return 0;
    if (k_cache.dtype != dt || v_cache.dtype != dt || out.dtype != dt) return 0;
    if (headdim % 8 != 0 || headdim > 256) return 0;
    return is_aligned16(q.ptr) && is_aligned16(k_cache.ptr) && is_aligned16(v_cache.ptr) &&
           is_aligned16(out.ptr) && attn_tensor_cores_ok() && d2_smem(headdim) <= attn_smem_optin();
}

samba_status attn_decode_v2(int64_t batch, int64_t nheads, int64_t nheads_kv, int64_t headdim,
                            int64_t capacity, samba_cu_ref q, samba_cu_ref k_cache,
                            samba_cu_ref v_cache, samba_cu_ref pos, samba_cu_ref n_valid,
                            float softmax_scale, samba_cu_ref out, cudaStream_t st, int *taken) {
    Dec2Args a;
    memset(&a, 0, sizeof a);
    a.nheads = nheads;
    a.nheads_kv = nheads_kv;
    a.C = capacity;
    a.hd = (int)headdim;
    a.G = (int)(nheads / nheads_kv);
    a.ngroups = (a.G + D2_GB - 1) / D2_GB;
    a.q = q.ptr;
    a.k = k_cache.ptr;
    a.v = v_cache.ptr;
    a.pos = pos;
    a.n_valid = n_valid;
    a.sl = softmax_scale * 1.4426950408889634f;
    a.out = out.ptr;
    return q.dtype == SAMBA_CU_BF16 ? d2_by_dim<__nv_bfloat16>(a, batch, st, taken)
                                    : d2_by_dim<__half>(a, batch, st, taken);
}
