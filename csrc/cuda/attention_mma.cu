// attention_mma.cu - causal sliding-window attention (prefill) for bfloat16 / float16 on the
// tensor cores, FlashAttention-2 style.
//
// One block of 4 warps computes BQ = 64 * MT query rows of one head, each warp 16 * MT rows
// (MT = 2 at head dims 96 and 128: every K/V fragment read from shared memory feeds two mma,
// fewer shared-memory bytes per FLOP; MT = 1 at 64 and 256, see dispatch()). For each
// tile of BK keys that the block's window touches:
//   S = Q K^T             mma.sync m16n8k16, Q and K fragments read with ldmatrix
//   online softmax        float32, base 2: each row keeps its running max m and sum l
//   O = O * corr + P V    P (rounded to the input dtype) stays in registers as the A operand,
//                         V fragments come from ldmatrix.trans
// K and V tiles are double-buffered in shared memory with cp.async: tile t+1 is in flight
// while tile t is computed. Only the key tiles in [q0 + off - window + 1, q_last + off] are
// visited, so the cost grows as L x W, and the mask is evaluated only on tiles that cross the
// causal edge, the window edge or the end of the keys. GQA: the block reads the K/V rows of
// head h / (H / Hkv) in place (no copy); the H / Hkv heads sharing them are adjacent in
// blockIdx.x, so their blocks run together and hit the same K/V in L2.
//
// Shared-memory rows are padded by 16 bytes (stride D + 8 elements): the 8 row addresses of
// each ldmatrix land in 8 different 4-bank groups, so the loads are conflict-free.
// Head dims: templates for D = 64, 96, 128 and 256; a head dim that is a multiple of 8 runs in
// the next larger template with the columns past hd zero-filled (cp.async src-size 0).
//
// GEN = true instantiates the general masking of samba_cu_attn_fwd_lse (attention_fwd_lse.cu):
// a two-sided window (left, right, either unbounded), any Lq / Lk, softcap, ALiBi and the
// log-sum-exp stored per row. GEN = false is the causal sliding-window kernel above, compiled
// without any of it.
#include "prefill_common.cuh"

namespace {
using namespace samba_ptx;
using namespace samba_prefill;

// ------------------------------------------------------------ tile configuration -------
template <int D_, int BK_, int MT_, bool QREG_> struct Cfg {
    static constexpr int D = D_;               // head dim of the template (>= the real hd)
    static constexpr int BK = BK_;             // keys per tile
    static constexpr int MT = MT_;             // 16-row m-tiles per warp (each K/V fragment
                                               // read from shared memory feeds MT mma)
    static constexpr int NW = 4;               // warps
    static constexpr int BQ = 16 * MT * NW;    // query rows per block
    static constexpr int THREADS = 32 * NW;
    static constexpr int LD = D + 8;           // padded shared-memory row (elements)
    static constexpr int KSTEPS = D / 16;      // k-steps of S = Q K^T
    static constexpr int NT_S = BK / 8;        // 8-key column tiles of S
    static constexpr int NT_O = D / 8;         // 8-dim column tiles of O
    static constexpr bool Q_IN_REGS = QREG_;   // else Q fragments are re-read from smem
    static constexpr size_t SMEM = (size_t)(BQ + 4 * BK) * LD * 2;  // Q + 2 x (K, V)
    static_assert(NT_S % 2 == 0 && NT_O % 2 == 0 && BK % 16 == 0, "tile shape");
};

// rows [r0, r0 + ROWS) of a (rows, hd) global matrix with row stride `rs` (elements) into a
// padded shared tile; rows >= rlimit and columns >= hd are zero-filled.
template <class C, int ROWS, typename T>
__device__ __forceinline__ void load_tile(T *s, const T *g, int64_t rs, int64_t r0,
                                          int64_t rlimit, int hd) {
    constexpr int CH = C::D / 8;  // 16-byte chunks per row
    constexpr int ITERS = (ROWS * CH + C::THREADS - 1) / C::THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int i = it * C::THREADS + threadIdx.x;
        if (i >= ROWS * CH) break;
        const int r = i / CH, c = i % CH;
        const bool ok = r0 + r < rlimit && c * 8 < hd;
        cp_async16(s + r * C::LD + c * 8, ok ? g + (r0 + r) * rs + c * 8 : g, ok);
    }
}

template <typename T, class C, bool GEN>
__global__ void __launch_bounds__(C::THREADS)
attn_mma_kernel(samba_cu_attn_args p, int n_qtiles, attn_gen gx) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *sQ = reinterpret_cast<T *>(smem_raw);  // [BQ][LD]
    T *sK = sQ + C::BQ * C::LD;               // [2][BK][LD]
    T *sV = sK + 2 * C::BK * C::LD;           // [2][BK][LD]

    const int h = blockIdx.x;
    const int64_t qtile = n_qtiles - 1 - (int64_t)blockIdx.y;  // longest rows first (causal)
    const int64_t b = blockIdx.z;
    const int64_t hkv = h / (p.nheads / p.nheads_kv);
    const int hd = (int)p.headdim;
    const int64_t Lq = p.seqlen_q, Lk = p.seqlen_k, off = Lk - Lq, W = p.window;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;

    const T *qg = (const T *)p.q.ptr + b * p.q_stride[0] + h * p.q_stride[2];
    const T *kg = (const T *)p.k.ptr + b * p.k_stride[0] + hkv * p.k_stride[2];
    const T *vg = (const T *)p.v.ptr + b * p.v_stride[0] + hkv * p.v_stride[2];

    // keys seen by the block: [kmin, kmax] (absolute positions; query q sits at q + off)
    const int64_t q0 = qtile * C::BQ;
    const int64_t q_last = (q0 + C::BQ < Lq ? q0 + C::BQ : Lq) - 1;
    int64_t t_first, t_last;
    if constexpr (GEN) {
        const int64_t kmax =
            gx.right < 0 ? Lk - 1 : (q_last + off + gx.right < Lk ? q_last + off + gx.right : Lk - 1);
        const int64_t kmin = gx.left < 0 ? 0 : (q0 + off - gx.left > 0 ? q0 + off - gx.left : 0);
        const bool none = kmax < kmin;  // no key seen by any row of the block
        t_first = none ? 0 : kmin / C::BK;
        t_last = none ? -1 : kmax / C::BK;
    } else {
        const int64_t kmax = q_last + off;
        const int64_t kmin = (W > 0 && q0 + off - W + 1 > 0) ? q0 + off - W + 1 : 0;
        t_first = kmin / C::BK;
        t_last = kmax / C::BK;
    }

    load_tile<C, C::BQ>(sQ, qg, p.q_stride[1], q0, Lq, hd);
    load_tile<C, C::BK>(sK, kg, p.k_stride[1], t_first * C::BK, Lk, hd);
    load_tile<C, C::BK>(sV, vg, p.v_stride[1], t_first * C::BK, Lk, hd);
    cp_async_commit();

    // this thread's rows: wrow + mt*16 + g and + 8, at absolute positions qp0 + mt*16 (+ 8)
    const int wrow = warp * 16 * C::MT;
    const int64_t qp0 = q0 + wrow + g + off;
    const float sl = p.softmax_scale * 1.4426950408889634f;  // scores in base-2 units
    // window as int32: a window longer than every distance is the same as none
    const int Wi = (W <= 0 || W > Lk + C::BQ) ? 0 : (int)W;
    // GEN: window sides as int32 (-1 = unbounded; longer than every distance = unbounded)
    const int64_t far = Lk + Lq + C::BQ + C::BK;
    const int Li = (!GEN || gx.left < 0 || gx.left > far) ? -1 : (int)gx.left;
    const int Ri = (!GEN || gx.right < 0 || gx.right > far) ? -1 : (int)gx.right;
    const bool capped = GEN && gx.softcap > 0.0f;
    const float cap_in = capped ? p.softmax_scale / gx.softcap : 0.0f;  // tanh argument
    const float cap_out = gx.softcap * 1.4426950408889634f;              // base-2 units
    // GEN with ALiBi: the slope of this (batch, head) in base-2 units (0 without ALiBi)
    const bool alibi = GEN && gx.alibi != nullptr;
    const float slope2 = alibi ? gx.alibi[b * gx.alibi_bstride + h] * 1.4426950408889634f : 0.0f;

    float o[C::MT][C::NT_O][4];
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int i = 0; i < C::NT_O; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    float m[C::MT][2], l[C::MT][2];
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    uint32_t qf[C::Q_IN_REGS ? C::MT : 1][C::Q_IN_REGS ? C::KSTEPS : 1][4];

    for (int64_t t = t_first; t <= t_last; ++t) {
        const int buf = (int)((t - t_first) & 1);
        if (t < t_last) {  // prefetch the next tile into the other buffer
            const int nb = buf ^ 1;
            load_tile<C, C::BK>(sK + nb * C::BK * C::LD, kg, p.k_stride[1], (t + 1) * C::BK, Lk,
                                hd);
            load_tile<C, C::BK>(sV + nb * C::BK * C::LD, vg, p.v_stride[1], (t + 1) * C::BK, Lk,
                                hd);
        }
        cp_async_commit();
        cp_async_wait<1>();  // everything but the prefetch just issued has landed
        __syncthreads();
        const T *k_s = sK + buf * C::BK * C::LD;
        const T *v_s = sV + buf * C::BK * C::LD;

        // Q fragment (m-tile mt, k-step ks): rows wrow + mt*16 + (lane % 16),
        // cols ks*16 + (lane / 16) * 8
        const T *q_lane = sQ + (wrow + (lane & 15)) * C::LD + (lane >> 4) * 8;
        if (C::Q_IN_REGS && t == t_first) {
#pragma unroll
            for (int mt = 0; mt < (C::Q_IN_REGS ? C::MT : 0); ++mt)
#pragma unroll
                for (int ks = 0; ks < C::KSTEPS; ++ks)
                    ldsm_x4(qf[C::Q_IN_REGS ? mt : 0][C::Q_IN_REGS ? ks : 0],
                            q_lane + mt * 16 * C::LD + ks * 16);
        }

        // ---- S = Q K^T (16*MT x BK per warp) ----
        float s[C::MT][C::NT_S][4];
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
            for (int i = 0; i < C::NT_S; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
        // K fragments for key tiles n, n+1: keys n*8 + (lane % 8) + (lane / 16) * 8,
        // dims ks*16 + ((lane / 8) % 2) * 8
        const T *k_lane = k_s + ((lane & 7) + ((lane >> 4) << 3)) * C::LD + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
            uint32_t a[C::MT][4];
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt) {
                if (C::Q_IN_REGS) {
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        a[mt][i] = qf[C::Q_IN_REGS ? mt : 0][C::Q_IN_REGS ? ks : 0][i];
                } else {
                    ldsm_x4(a[mt], q_lane + mt * 16 * C::LD + ks * 16);
                }
            }
#pragma unroll
            for (int n = 0; n < C::NT_S; n += 2) {
                uint32_t kb[4];
                ldsm_x4(kb, k_lane + n * 8 * C::LD + ks * 16);
#pragma unroll
                for (int mt = 0; mt < C::MT; ++mt) {
                    Mma<T>::run(s[mt][n], a[mt], kb[0], kb[1]);
                    Mma<T>::run(s[mt][n + 1], a[mt], kb[2], kb[3]);
                }
            }
        }

        // ---- scale, mask (edge tiles only), online softmax ----
        const int64_t kbase = t * C::BK;
        bool edge;
        if constexpr (GEN)
            edge = (Ri >= 0 && kbase + C::BK - 1 > q0 + off + Ri)  // past the first row's right
                   || (Li >= 0 && kbase < q_last + off - Li)       // before the last row's left
                   || kbase + C::BK > Lk;
        else
            edge = kbase + C::BK - 1 > q0 + off            // crosses the causal edge
                   || (W > 0 && kbase <= q_last + off - W)  // crosses the window edge
                   || kbase + C::BK > Lk;                   // runs past the keys
        // in int32, relative to this thread's first row: key - qpos = rel_key - rel_q
        const int dkq = (int)(kbase - qp0);
        const int kend = (int)(Lk - kbase < C::BK ? Lk - kbase : C::BK);  // keys left in the tile
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
            for (int n = 0; n < C::NT_S; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[mt][n][e] * sl;
                    if constexpr (GEN) {
                        if (capped) x = cap_out * tanhf(s[mt][n][e] * cap_in);
                        if (alibi) {  // key - qpos as in the mask below
                            const int rel = dkq + n * 8 + 2 * tq + (e & 1) - mt * 16 - (e >> 1) * 8;
                            x -= slope2 * fabsf((float)rel);
                        }
                    }
                    if (edge) {
                        const int kt = n * 8 + 2 * tq + (e & 1);             // key in the tile
                        const int rel = dkq + kt - mt * 16 - (e >> 1) * 8;   // key - qpos
                        if (GEN ? (kt >= kend || (Ri >= 0 && rel > Ri) || (Li >= 0 && rel < -Li))
                                : (rel > 0 || kt >= kend || (Wi > 0 && rel <= -Wi)))
                            x = -INFINITY;
                    }
                    s[mt][n][e] = x;
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < C::NT_S; ++n)
                    mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[mt][r], mx);
                const float mref = mnew == -INFINITY ? 0.0f : mnew;  // no -inf - -inf = NaN
                const float corr = fast_exp2(m[mt][r] - mref);
                m[mt][r] = mnew;
                float rs = 0.0f;
#pragma unroll
                for (int n = 0; n < C::NT_S; ++n) {
                    s[mt][n][2 * r] = fast_exp2(s[mt][n][2 * r] - mref);
                    s[mt][n][2 * r + 1] = fast_exp2(s[mt][n][2 * r + 1] - mref);
                    rs += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
                }
                l[mt][r] = l[mt][r] * corr + rs;  // this lane's part; the quad is summed at the end
#pragma unroll
                for (int i = 0; i < C::NT_O; ++i) {
                    o[mt][i][2 * r] *= corr;
                    o[mt][i][2 * r + 1] *= corr;
                }
            }
        }

        // ---- O += P V ----
        // V fragments (.trans) for dim tiles i, i+1: keys kk*16 + (lane % 8) + ((lane/8) % 2)*8,
        // dims i*8 + (lane / 16) * 8
        const T *v_lane = v_s + ((lane & 7) + (((lane >> 3) & 1) << 3)) * C::LD + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < C::BK / 16; ++kk) {
            uint32_t a[C::MT][4];
#pragma unroll
            for (int mt = 0; mt < C::MT; ++mt) pack_p<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
            for (int i = 0; i < C::NT_O; i += 2) {
                uint32_t vb[4];
                ldsm_x4_trans(vb, v_lane + kk * 16 * C::LD + i * 8);
#pragma unroll
                for (int mt = 0; mt < C::MT; ++mt) {
                    Mma<T>::run(o[mt][i], a[mt], vb[0], vb[1]);
                    Mma<T>::run(o[mt][i + 1], a[mt], vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();

    // ---- normalise and store (out is contiguous (B, Lq, H, hd)) ----
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float lr = quad_sum(l[mt][r]);
            const float inv = row_inv(lr);
            const int64_t q = q0 + wrow + mt * 16 + g + r * 8;
            if (q >= Lq) continue;
            if constexpr (GEN) {
                if (gx.lse && tq == 0)  // natural log: ln 2 (m + log2 l)
                    gx.lse[(b * p.nheads + h) * Lq + q] =
                        lr > 0.0f ? 0.6931471805599453f * (m[mt][r] + log2f(lr))
                                  : (lr == 0.0f ? -INFINITY : lr);
            }
            store_o_row<T, C::NT_O>((T *)p.out.ptr + ((b * Lq + q) * p.nheads + h) * hd, o[mt], r,
                                    inv, hd, tq);
        }
    }
}

template <typename T, class C, bool GEN>
samba_status launch(const samba_cu_attn_args *a, const attn_gen *gx, cudaStream_t st) {
    const attn_gen none = {0, 0, 0.0f, nullptr, nullptr, 0};
    return launch_prefill(attn_mma_kernel<T, C, GEN>, C::BQ, C::THREADS, C::SMEM,
                          GEN ? "attention_fwd" : "swa_attention", a, st, gx ? *gx : none);
}

// Rows per warp: 16 (one m-tile) at head dim 64, 32 (two m-tiles sharing every K/V fragment)
// at 96 and 128, 16 at 256 - the faster layout of each in benchmarks/results/gpu_attention.md
// (on the H200, 32 rows lost at d64: more registers, 8 instead of 12 warps per SM).
// SAMBA_EXT_ATTN_ROWS=16 or 32 (read once) forces one layout for d <= 128: a tuning knob for
// benchmarks/gpu_attention.py; results do not depend on it beyond rounding order.
int attn_rows_override() {
    static int r = -1;
    if (r < 0) {
        const char *s = getenv("SAMBA_EXT_ATTN_ROWS");
        r = !s ? 0 : (s[0] == '1' && s[1] == '6') ? 16 : (s[0] == '3' && s[1] == '2') ? 32 : 0;
    }
    return r;
}

template <typename T, bool GEN>
samba_status dispatch(const samba_cu_attn_args *a, const attn_gen *gx, cudaStream_t st) {
    const int64_t hd = a->headdim;
    const int force = attn_rows_override();
    const bool two = force ? force == 32 : hd > 64;
    if (hd <= 64)
        return two ? launch<T, Cfg<64, 64, 2, false>, GEN>(a, gx, st)
                   : launch<T, Cfg<64, 64, 1, true>, GEN>(a, gx, st);
    if (hd <= 96)
        return two ? launch<T, Cfg<96, 32, 2, false>, GEN>(a, gx, st)
                   : launch<T, Cfg<96, 64, 1, true>, GEN>(a, gx, st);
    if (hd <= 128)
        return two ? launch<T, Cfg<128, 32, 2, false>, GEN>(a, gx, st)
                   : launch<T, Cfg<128, 64, 1, true>, GEN>(a, gx, st);
    return launch<T, Cfg<256, 32, 1, false>, GEN>(a, gx, st);
}

}  // namespace

int attn_tensor_cores_ok(void) {
    static int cached[64];  // 0 unknown, 1 yes, 2 no
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        cudaGetLastError();
        return 0;
    }
    if (cached[dev] == 0) {
        cudaFuncAttributes fa;
        const cudaError_t e =
            cudaFuncGetAttributes(&fa, attn_mma_kernel<__nv_bfloat16, Cfg<64, 64, 1, true>, false>);
        if (e != cudaSuccess) cudaGetLastError();
        cached[dev] = (e == cudaSuccess && fa.binaryVersion >= 80) ? 1 : 2;
    }
    return cached[dev] == 1;
}

size_t attn_smem_optin(void) {
    static size_t cached[64];
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        cudaGetLastError();
        return 0;
    }
    if (cached[dev] == 0) {
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
            cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        cached[dev] = (size_t)v;
    }
    return cached[dev];
}

// Shared memory of the configuration dispatch() picks for head dim hd (keep the two in step).
static size_t mma_smem(int64_t hd) {
    const int force = attn_rows_override();
    const bool two = force ? force == 32 : hd > 64;
    if (hd <= 64) return two ? Cfg<64, 64, 2, false>::SMEM : Cfg<64, 64, 1, true>::SMEM;
    if (hd <= 96) return two ? Cfg<96, 32, 2, false>::SMEM : Cfg<96, 64, 1, true>::SMEM;
    if (hd <= 128) return two ? Cfg<128, 32, 2, false>::SMEM : Cfg<128, 64, 1, true>::SMEM;
    return Cfg<256, 32, 1, false>::SMEM;
}

int attn_mma_applicable(const samba_cu_attn_args *a) {
    const int dt = a->q.dtype;
    if (dt != SAMBA_CU_BF16 && dt != SAMBA_CU_F16) return 0;
    if (a->k.dtype != dt || a->v.dtype != dt || a->out.dtype != dt) return 0;
    if (a->headdim % 8 != 0 || a->headdim > 256) return 0;
    if (!is_aligned16(a->q.ptr) || !is_aligned16(a->k.ptr) || !is_aligned16(a->v.ptr) ||
        !is_aligned16(a->out.ptr))
        return 0;
    for (int i = 0; i < 3; ++i)
        if (a->q_stride[i] % 8 || a->k_stride[i] % 8 || a->v_stride[i] % 8) return 0;
    return attn_tensor_cores_ok() && mma_smem(a->headdim) <= attn_smem_optin();
}

samba_status attn_mma_fwd(const samba_cu_attn_args *a, cudaStream_t st) {
    if (a->q.dtype == SAMBA_CU_BF16) return dispatch<__nv_bfloat16, false>(a, nullptr, st);
    return dispatch<__half, false>(a, nullptr, st);
}

samba_status attn_mma_fwd_gen(const samba_cu_attn_args *a, const attn_gen *gx, cudaStream_t st) {
    if (a->q.dtype == SAMBA_CU_BF16) return dispatch<__nv_bfloat16, true>(a, gx, st);
    return dispatch<__half, true>(a, gx, st);
}
