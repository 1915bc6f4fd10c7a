// attention_bwd_order.cu - the block order of a tensor-core attention backward launch, picked
// on the host per call (attention_bwd_impl.cuh: AbBlock, ab_block_of, ab_pick_order).
//
// A list-scheduling count: blocks start in launch order on the first free of `slots` resident
// blocks, a block's time taken as its work (query tiles x query heads + 1 for its K / V loads
// and dK / dV stores). The count leaves memory out, so heaviest-first is taken only where it
// ends clearly (> 3%) sooner; keys-fastest keeps neighbouring blocks on the same query tiles.
// The answer depends only on the shape, so the last 8 shapes are remembered per thread; grids
// of many waves, where no order can gain 3%, are answered without the count.
#include <cstdlib>
#include <cstring>
#include <queue>
#include <vector>

#include "attention_bwd_impl.cuh"

namespace {

// Query tiles of bm rows that see a key of key block kb (the kernels' qlo / qhi).
int64_t tiles_of(int64_t kb, int64_t bn, int64_t bm, int64_t Lq, int64_t Lk, int64_t left,
                 int64_t right) {
    const int64_t off = Lk - Lq, k0 = kb * bn, kend = k0 + bn < Lk ? k0 + bn : Lk;
    int64_t qlo = right < 0 ? 0 : k0 - off - right;
    int64_t qhi = left < 0 ? Lq - 1 : kend - 1 - off + left;
    qlo = qlo < 0 ? 0 : qlo;
    qhi = qhi > Lq - 1 ? Lq - 1 : qhi;
    return qhi >= qlo ? (qhi - qlo + bm) / bm : 0;
}

// When the last of `work` (in start order, `reps` times each: repeated as a whole when
// `whole`, else each element reps times in turn) ends on `slots` slots.
int64_t makespan(const std::vector<int64_t> &work, int64_t reps, bool whole, int64_t slots) {
    std::priority_queue<int64_t, std::vector<int64_t>, std::greater<int64_t>> free_at;
    for (int64_t s = 0; s < slots; ++s) free_at.push(0);
    int64_t end = 0;
    const int64_t n = (int64_t)work.size();
    for (int64_t r = 0; r < n * reps; ++r) {
        const int64_t w = whole ? work[r % n] : work[r / reps];
        const int64_t t = free_at.top() + w;
        free_at.pop();
        free_at.push(t);
        end = t > end ? t : end;
    }
    return end;
}

int count_order(const samba_cu_attn_ext_args *a, int bn, int bm, int64_t ny, int64_t hpb,
                int64_t slots) {
    const int64_t nkb = cdiv(a->seqlen_k, bn), reps = ny * a->batch, blocks = nkb * reps;
    if (blocks <= slots || blocks > ((int64_t)1 << 16)) return AB_KEYS_FASTEST;
    const int64_t left = a->window_left, right = a->window_right;
    std::vector<int64_t> work((size_t)nkb);
    int64_t most = 0, sum = 0;
    for (int64_t kb = 0; kb < nkb; ++kb) {
        work[(size_t)kb] = tiles_of(kb, bn, bm, a->seqlen_q, a->seqlen_k, left, right) * hpb + 1;
        most = work[(size_t)kb] > most ? work[(size_t)kb] : most;
        sum += work[(size_t)kb];
    }
    // Graham's bound: list scheduling ends by total / slots + the largest block, and no order
    // ends before total / slots; so where 0.97 x the largest block is at most 3% of total /
    // slots, heaviest-first cannot end 3% sooner, and the count (whose cost grows with the grid)
    // would give keys-fastest anyway
    if (0.97 * (double)most * (double)slots <= 0.03 * (double)sum * (double)reps)
        return AB_KEYS_FASTEST;
    const int64_t keys = makespan(work, reps, true, slots);
    // heaviest-first visits the key blocks from the last where only the left side is bounded
    std::vector<int64_t> heavy(work);
    if (ab_from_last(left, right))
        for (int64_t i = 0; i < nkb; ++i) heavy[(size_t)i] = work[(size_t)(nkb - 1 - i)];
    const int64_t first = makespan(heavy, reps, false, slots);
    return (double)first < 0.97 * (double)keys ? AB_HEAVY_FIRST : AB_KEYS_FASTEST;
}

struct Remembered {
    int64_t key[9];
    int order;
};

}  // namespace

int ab_pick_order(const samba_cu_attn_ext_args *a, int bn, int bm, int64_t ny, int64_t hpb,
                  int64_t slots) {
    const char *v = getenv("SAMBA_EXT_ATTN_BWD_ORDER");  // values: samba_ext/cuda/runtime.py
    if (v && !strcmp(v, "keys")) return AB_KEYS_FASTEST;
    if (v && !strcmp(v, "heavy")) return AB_HEAVY_FIRST;
    constexpr int N = 8;
    thread_local Remembered seen[N];
    thread_local int used = 0, next = 0;
    const int64_t key[9] = {a->seqlen_q, a->seqlen_k, a->window_left, a->window_right,
                            a->batch,    ny,          hpb,            slots,
                            (int64_t)bn * 4096 + bm};
    for (int i = 0; i < used; ++i)
        if (!memcmp(seen[i].key, key, sizeof key)) return seen[i].order;
    const int order = count_order(a, bn, bm, ny, hpb, slots);
    memcpy(seen[next].key, key, sizeof key);
    seen[next].order = order;
    next = (next + 1) % N;
    used = used < N ? used + 1 : N;
    return order;
}
