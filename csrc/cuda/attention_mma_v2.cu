// attention_mma_v2.cu - causal sliding-window attention (prefill) for bfloat16 / float16 on the
// tensor cores, variants 2 and 3. Same algorithm and fragment layouts as attention_mma.cu
// (FlashAttention-2 style, mma.sync m16n8k16, P kept in registers as the A operand of P V);
// what changes is how the work is fed to the tensor cores. Two block shapes share the code:
//   * variant 2: 8 warps x 16 query rows (BQ = 128) share each K/V tile loaded into shared
//     memory (v1: 4 warps, 64 rows), with __launch_bounds__ capping the registers at 128 so
//     that two blocks (16 warps) stay resident per SM;
//   * variant 3: v1's block shapes (4 warps; 16 rows per warp at d64 / d256, 32 at d96 /
//     d128), so that v1 -> v3 measures the changes below alone and v3 -> v2 the block shape.
// For both:
//   * K/V tiles flow through a STAGES-deep cp.async ring (3 at d64/d96) and each tile costs
//     one __syncthreads (v1: a double buffer and two barriers per tile);
//   * softmax in base 2 with the scale folded into the exponent: the row max is taken over
//     the raw scores and p = 2^(s * sl - m * sl) is one FFMA + one ex2 (sl = scale * log2 e;
//     v1 multiplies every score first). This needs sl > 0: other scales run v1. The O
//     accumulators are rescaled only on tiles where a row of the warp found a new maximum
//     (one warp vote per tile; v1 rescales on every tile: at d128 64 multiplies per thread);
//   * each warp skips the key tiles that lie entirely outside its own 16 rows' causal window
//     (on the diagonal of a 128-row block about half the pairs), and applies the mask only on
//     tiles that cross one of its own edges (v1 decides per block);
//   * blocks are ordered as in v1: heads fastest (the H / Hkv heads sharing K/V run together
//     and hit the same rows in L2), the longest (last) query tiles first for causal.
// Positions are int32 (seqlen_k < 2^30; longer sequences run v1).
// Head dims: templates for D = 64, 96, 128 and 256 (a head dim that is a multiple of 8 runs in
// the next larger one, the extra columns zero-filled).
#include "prefill_common.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_prefill;

template <int D_, int BK_, int MT_, int NW_, int STAGES_, bool QREG_, int MINB_> struct Cfg2 {
    static constexpr int D = D_;             // head dim of the template (>= the real hd)
    static constexpr int BK = BK_;           // keys per tile
    static constexpr int MT = MT_;           // 16-row m-tiles per warp
    static constexpr int NW = NW_;           // warps
    static constexpr int STAGES = STAGES_;   // K/V ring depth (>= 2)
    static constexpr bool QREG = QREG_;      // Q fragments held in registers
    static constexpr int MINB = MINB_;       // blocks per SM the registers must allow
    static constexpr int BQ = 16 * MT * NW;  // query rows per block
    static constexpr int THREADS = 32 * NW;
    static constexpr int LD = D + 8;         // padded shared-memory row (elements)
    static constexpr int KSTEPS = D / 16;
    static constexpr int NT_S = BK / 8;
    static constexpr int NT_O = D / 8;
    static constexpr size_t SMEM = (size_t)(BQ + 2 * STAGES * BK) * LD * 2;
    static_assert(NT_S % 2 == 0 && NT_O % 2 == 0 && BK % 16 == 0 && STAGES >= 2, "tile shape");
};
// The configurations (shared memory; registers and spills from ptxas -v, sm_90, in
// gpu_attention_notes.md). Variant 2: 8 warps x 16 rows (BQ = 128), registers capped for two
// blocks (16 warps) per SM.
using P2_64 = Cfg2<64, 64, 1, 8, 3, true, 2>;     // 73.7 KB
using P2_96 = Cfg2<96, 64, 1, 8, 3, false, 2>;    // 106.5 KB
using P2_128 = Cfg2<128, 32, 1, 8, 3, false, 2>;  // 87.0 KB
using P2_256 = Cfg2<256, 32, 1, 8, 2, false, 1>;  // 135.2 KB
// Variant 3: the block shapes of v1 (4 warps; 16 rows per warp at d64 / d256, 32 at d96 /
// d128), with the pipeline and softmax of this file.
using P3_64 = Cfg2<64, 64, 1, 4, 3, true, 3>;     // 64.5 KB
using P3_96 = Cfg2<96, 32, 2, 4, 3, false, 2>;    // 66.6 KB
using P3_128 = Cfg2<128, 32, 2, 4, 3, false, 2>;  // 87.0 KB
using P3_256 = Cfg2<256, 32, 1, 4, 2, false, 2>;  // 101.4 KB

// rows [r0, r0 + ROWS) of a (rows, hd) global matrix with row stride `rs` into a padded shared
// tile at shared address s; rows >= rlimit and columns >= hd are zero-filled.
template <class C, int ROWS, typename T>
__device__ __forceinline__ void load_tile2(uint32_t s, const T *g, int64_t rs, int r0, int rlimit,
                                           int hd) {
    constexpr int CH = C::D / 8;
    constexpr int ITERS = (ROWS * CH + C::THREADS - 1) / C::THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int i = it * C::THREADS + threadIdx.x;
        if (ROWS * CH % C::THREADS != 0 && i >= ROWS * CH) break;
        const int r = i / CH, c = i % CH;
        const bool ok = r0 + r < rlimit && c * 8 < hd;
        cp_async16_s(s + (uint32_t)(r * C::LD + c * 8) * 2,
                     ok ? g + (int64_t)(r0 + r) * rs + c * 8 : g, ok);
    }
}

template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS, C::MINB)
attn_mma2_kernel(samba_cu_attn_args p, int n_qtiles) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // shared addresses (bytes): Q [BQ][LD], K and V [STAGES][BK][LD] each
    constexpr uint32_t STAGE_B = C::BK * C::LD * 2;
    const uint32_t sQ = smem_addr(smem_raw);
    const uint32_t sK = sQ + C::BQ * C::LD * 2;
    const uint32_t sV = sK + C::STAGES * STAGE_B;

    const int h = blockIdx.x;
    const int qtile = n_qtiles - 1 - (int)blockIdx.y;  // longest rows first (causal)
    const int64_t b = blockIdx.z;
    const int64_t hkv = h / (p.nheads / p.nheads_kv);
    const int hd = (int)p.headdim;
    // positions in int32: attn_mma_v2_applicable() keeps seqlen_k below 2^30, and a window
    // longer than every distance is the same as none (W = 0)
    const int Lq = (int)p.seqlen_q, Lk = (int)p.seqlen_k, off = Lk - Lq;
    const int W = (p.window <= 0 || p.window > (int64_t)Lk + C::BQ) ? 0 : (int)p.window;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;

    const T *qg = (const T *)p.q.ptr + b * p.q_stride[0] + h * p.q_stride[2];
    const T *kg = (const T *)p.k.ptr + b * p.k_stride[0] + hkv * p.k_stride[2];
    const T *vg = (const T *)p.v.ptr + b * p.v_stride[0] + hkv * p.v_stride[2];

    // keys seen by the block: [kmin, kmax] (absolute positions; query q sits at q + off)
    const int q0 = qtile * C::BQ;
    const int q_last = (q0 + C::BQ < Lq ? q0 + C::BQ : Lq) - 1;
    const int kmax = q_last + off;
    const int kmin = (W > 0 && q0 + off - W + 1 > 0) ? q0 + off - W + 1 : 0;
    const int t_first = kmin / C::BK;
    const int ntiles = (int)(kmax / C::BK - t_first + 1);

    auto load_kv = [&](int tile, int stage) {
        const int k0 = (t_first + tile) * C::BK;
        load_tile2<C, C::BK>(sK + stage * STAGE_B, kg, p.k_stride[1], k0, Lk, hd);
        load_tile2<C, C::BK>(sV + stage * STAGE_B, vg, p.v_stride[1], k0, Lk, hd);
    };
    load_tile2<C, C::BQ>(sQ, qg, p.q_stride[1], q0, Lq, hd);
#pragma unroll
    for (int st = 0; st < C::STAGES - 1; ++st) {
        if (st < ntiles) load_kv(st, st);
        cp_async_commit();  // (possibly empty) group st; group 0 also holds Q
    }

    // this warp's rows: absolute positions [qw0, qw1]; this thread's rows wrow + mt*16 + g
    // (+ 8), the first at qp0
    const int wrow = warp * 16 * C::MT;
    const int qw0 = q0 + wrow + off, qw1 = qw0 + 16 * C::MT - 1;
    const bool warp_live = q0 + wrow < Lq;
    const int qp0 = qw0 + g;
    const float sl = p.softmax_scale * 1.4426950408889634f;  // > 0 (attn_mma_v2_applicable)

    float o[C::MT][C::NT_O][4];
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int i = 0; i < C::NT_O; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    float m[C::MT][2], l[C::MT][2];  // m: running max of the raw (unscaled) scores
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    uint32_t qf[C::QREG ? C::MT : 1][C::QREG ? C::KSTEPS : 1][4];
    // Q fragment (m-tile mt, k-step ks): rows wrow + mt*16 + (lane % 16), cols ks*16 + (lane/16)*8
    const uint32_t q_lane = sQ + ((wrow + (lane & 15)) * C::LD + (lane >> 4) * 8) * 2;
    // K fragments for key tiles n, n+1: keys n*8 + (lane % 8) + (lane / 16) * 8,
    // dims ks*16 + ((lane / 8) % 2) * 8
    const uint32_t k_lane = ((((lane & 7) + ((lane >> 4) << 3)) * C::LD) + ((lane >> 3) & 1) * 8) * 2;
    // V fragments (.trans) for dim tiles i, i+1: keys kk*16 + (lane % 8) + ((lane/8) % 2)*8,
    // dims i*8 + (lane / 16) * 8
    const uint32_t v_lane = ((((lane & 7) + (((lane >> 3) & 1) << 3)) * C::LD) + (lane >> 4) * 8) * 2;

    for (int it = 0; it < ntiles; ++it) {
        cp_async_wait<C::STAGES - 2>();  // tile it (and Q) landed
        __syncthreads();                 // ... for every thread; stage (it-1) is free again
        if (C::QREG && it == 0) {
#pragma unroll
            for (int mt = 0; mt < (C::QREG ? C::MT : 0); ++mt)
#pragma unroll
                for (int ks = 0; ks < C::KSTEPS; ++ks)
                    ldsm_x4_s(qf[C::QREG ? mt : 0][C::QREG ? ks : 0],
                              q_lane + (mt * 16 * C::LD + ks * 16) * 2);
        }
        const int nxt = it + C::STAGES - 1;
        if (nxt < ntiles) load_kv(nxt, nxt % C::STAGES);
        cp_async_commit();

        const int kbase = (t_first + it) * C::BK;
        // tiles entirely outside this warp's rows' windows contribute nothing
        if (!warp_live || kbase > qw1 || (W > 0 && kbase + C::BK - 1 <= qw0 - W)) continue;
        const int stage = it % C::STAGES;
        const uint32_t k_s = sK + stage * STAGE_B + k_lane;
        const uint32_t v_s = sV + stage * STAGE_B + v_lane;

        // ---- S = Q K^T (16*MT x BK per warp), raw scores ----
        float s[C::MT][C::NT_S][4];
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
            for (int i = 0; i < C::NT_S; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
            uint32_t a[C::MT][4];
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt) {
                if (C::QREG) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[mt][i] = qf[C::QREG ? mt : 0][C::QREG ? ks : 0][i];
                } else {
                    ldsm_x4_s(a[mt], q_lane + (mt * 16 * C::LD + ks * 16) * 2);
                }
            }
#pragma unroll
            for (int n = 0; n < C::NT_S; n += 2) {
                uint32_t kb[4];
                ldsm_x4_s(kb, k_s + (n * 8 * C::LD + ks * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < C::MT; ++mt) {
                    Mma<T>::run(s[mt][n], a[mt], kb[0], kb[1]);
                    Mma<T>::run(s[mt][n + 1], a[mt], kb[2], kb[3]);
                }
            }
        }

        // ---- mask (tiles crossing one of this warp's edges only) ----
        const bool edge = kbase + C::BK - 1 > qw0                // crosses the causal edge
                          || (W > 0 && kbase <= qw1 - W)         // crosses the window edge
                          || kbase + C::BK > Lk;                 // runs past the keys
        if (edge) {
            const int dkq = kbase - qp0;  // key - qpos = dkq + kt - row offset
            const int kend = Lk - kbase < C::BK ? Lk - kbase : C::BK;
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
                for (int n = 0; n < C::NT_S; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int kt = n * 8 + 2 * tq + (e & 1);
                        const int rel = dkq + kt - mt * 16 - (e >> 1) * 8;
                        if (rel > 0 || kt >= kend || (W > 0 && rel <= -W))
                            s[mt][n][e] = -INFINITY;
                    }
        }

        // ---- online softmax, base 2, scale folded into the exponent ----
        // O is rescaled only when some row of the warp has a new maximum (after the first
        // tiles, rarely); corr is exactly 1 for the other rows, so the result is the same.
        float corr[C::MT][2];
        bool grew = false;
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < C::NT_S; ++n)
                    mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mold = m[mt][r];
                const float mnew = fmaxf(mold, mx);
                const float mref = mnew == -INFINITY ? 0.0f : mnew * sl;  // no -inf - -inf
                corr[mt][r] = mnew == mold ? 1.0f : fast_exp2(fmaf(mold, sl, -mref));
                grew |= mnew != mold;
                m[mt][r] = mnew;
                float rs = 0.0f;
#pragma unroll
                for (int n = 0; n < C::NT_S; ++n) {
                    s[mt][n][2 * r] = fast_exp2(fmaf(s[mt][n][2 * r], sl, -mref));
                    s[mt][n][2 * r + 1] = fast_exp2(fmaf(s[mt][n][2 * r + 1], sl, -mref));
                    rs += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
                }
                l[mt][r] = l[mt][r] * corr[mt][r] + rs;  // this lane's part; quad summed at the end
            }
        }
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
                for (int i = 0; i < C::NT_O; ++i) {
                    o[mt][i][0] *= corr[mt][0];
                    o[mt][i][1] *= corr[mt][0];
                    o[mt][i][2] *= corr[mt][1];
                    o[mt][i][3] *= corr[mt][1];
                }
        }

        // ---- O += P V (P rounded to T, in registers) ----
#pragma unroll
        for (int kk = 0; kk < C::BK / 16; ++kk) {
            uint32_t a[C::MT][4];
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt) pack_p<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
            for (int i = 0; i < C::NT_O; i += 2) {
                uint32_t vb[4];
                ldsm_x4_trans_s(vb, v_s + (kk * 16 * C::LD + i * 8) * 2);
#pragma unroll
                for (int mt = 0; mt < C::MT; ++mt) {
                    Mma<T>::run(o[mt][i], a[mt], vb[0], vb[1]);
                    Mma<T>::run(o[mt][i + 1], a[mt], vb[2], vb[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    // ---- normalise and store (out is contiguous (B, Lq, H, hd)) ----
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float inv = row_inv(quad_sum(l[mt][r]));
            const int q = q0 + wrow + mt * 16 + g + r * 8;
            if (q >= Lq) continue;
            store_o_row<T, C::NT_O>((T *)p.out.ptr + ((b * Lq + q) * p.nheads + h) * hd, o[mt], r,
                                    inv, hd, tq);
        }
    }
}

template <typename T, class C>
samba_status launch2(const samba_cu_attn_args *a, cudaStream_t st) {
    return launch_prefill(attn_mma2_kernel<T, C>, C::BQ, C::THREADS, C::SMEM, "swa_attention (v2)",
                          a, st);
}

template <typename T>
samba_status dispatch2(const samba_cu_attn_args *a, int variant, cudaStream_t st) {
    const int64_t hd = a->headdim;
    if (variant == 3) {
        if (hd <= 64) return launch2<T, P3_64>(a, st);
        if (hd <= 96) return launch2<T, P3_96>(a, st);
        if (hd <= 128) return launch2<T, P3_128>(a, st);
        return launch2<T, P3_256>(a, st);
    }
    if (hd <= 64) return launch2<T, P2_64>(a, st);
    if (hd <= 96) return launch2<T, P2_96>(a, st);
    if (hd <= 128) return launch2<T, P2_128>(a, st);
    return launch2<T, P2_256>(a, st);
}

size_t mma2_smem(int64_t hd, int variant) {
    if (variant == 3) {
        if (hd <= 64) return P3_64::SMEM;
        if (hd <= 96) return P3_96::SMEM;
        if (hd <= 128) return P3_128::SMEM;
        return P3_256::SMEM;
    }
    if (hd <= 64) return P2_64::SMEM;
    if (hd <= 96) return P2_96::SMEM;
    if (hd <= 128) return P2_128::SMEM;
    return P2_256::SMEM;
}

}  // namespace

int attn_mma_v2_applicable(const samba_cu_attn_args *a, int variant) {
    const float sl = a->softmax_scale * 1.4426950408889634f;
    if (!(sl > 0.0f) || isinf(sl)) return 0;  // the folded exponent needs a positive scale
    if (a->seqlen_k >= ((int64_t)1 << 30)) return 0;  // positions are int32 in the kernel
    return attn_mma_applicable(a) && mma2_smem(a->headdim, variant) <= attn_smem_optin();
}

samba_status attn_mma_v2_fwd(const samba_cu_attn_args *a, int variant, cudaStream_t st) {
    if (a->q.dtype == SAMBA_CU_BF16) return dispatch2<__nv_bfloat16>(a, variant, st);
    return dispatch2<__half>(a, variant, st);
}
