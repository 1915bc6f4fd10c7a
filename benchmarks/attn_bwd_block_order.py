"""The attention backward's grid order in a list-scheduling count (no GPU needed).

A block of the tensor-core backward owns one key block (128 keys) of one head part and walks the
query tiles (64 rows) that see one of its keys, for the query heads of its part; its cost is
taken as that tile count times the part's query heads, plus one tile (its K / V loads and dK / dV
stores). Blocks start in launch order on the first free slot of
`--slots` (132 SMs x 1 resident block for the two-warpgroup wgmma kernel). The makespan of two
orders is compared with the even share (total work / slots):
  keys-fastest: the grid (key block, head part, batch) with the key blocks fastest;
  heaviest-first: one linear index with the key blocks slowest, the heaviest first.
The launch makes this count per shape (ab_pick_order, csrc/cuda/attention_bwd_order.cu) and
takes heaviest-first only where it ends more than 3% sooner ("picked" below): the count leaves
out memory, and at 16K keys, where it finds the orders alike, heaviest-first measured 5% slower
on an H100 (its running blocks span every head part, so they share fewer query tiles in L2);
benchmarks/results/gpu_backward_attention.md.
The cases are benchmarks/gpu_backward_attention.py's (the GQA split as the default picks it).

Usage: python3 benchmarks/attn_bwd_block_order.py [--slots N]
"""

from __future__ import annotations

import argparse
import heapq

BN, BM = 128, 64


def tiles_of(kb: int, bn: int, bm: int, Lq: int, Lk: int, left: int, right: int) -> int:
    """Query tiles of bm rows that see a key of key block kb (bn keys); window sides left /
    right, -1 unbounded, bottom-right aligned (the kernels' qlo / qhi)."""
    off, k0 = Lk - Lq, kb * bn
    kend = min(k0 + bn, Lk)
    qlo = max(0, 0 if right < 0 else k0 - off - right)
    qhi = min(Lq - 1, Lq - 1 if left < 0 else kend - 1 - off + left)
    return (qhi - qlo + bm) // bm if qhi >= qlo else 0


def makespan(work: list[int], slots: int) -> int:
    """When the last block ends, blocks starting in list order on the first free slot."""
    free = [0] * slots
    end = 0
    for w in work:
        t = heapq.heappop(free) + w
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def orders(Lq: int, Lk: int, left: int, right: int, batch: int, ny: int, hpb: int,
           bn: int = BN, bm: int = BM) -> tuple[list[int], list[int]]:
    """The blocks' work in launch order: (keys fastest, heaviest first); a block's work is its
    query tiles x hpb query heads + 1 (its K / V loads and dK / dV stores)."""
    nkb = -(-Lk // bn)
    work = [tiles_of(kb, bn, bm, Lq, Lk, left, right) * hpb + 1 for kb in range(nkb)]
    heavy = work[::-1] if right < 0 <= left else work  # from the last key blocks: left only
    reps = ny * batch
    return work * reps, [w for w in heavy for _ in range(reps)]


def pick_order(Lq: int, Lk: int, left: int, right: int, batch: int, ny: int, hpb: int,
               slots: int, bn: int = BN, bm: int = BM, bound: bool = True) -> str:
    """The launch's choice (ab_pick_order, csrc/cuda/attention_bwd_order.cu): "heavy" where
    heaviest-first ends more than 3% sooner in the count, else "keys" (also for grids of one
    wave or more than 2^16 blocks). bound: skip the count where Graham's bound rules out a 3%
    gain, as the launch does (False: always count; the answer is the same)."""
    keys, heavy = orders(Lq, Lk, left, right, batch, ny, hpb, bn, bm)
    if not slots < len(keys) <= 1 << 16:
        return "keys"
    if bound and 0.97 * max(keys) * slots <= 0.03 * sum(keys):
        return "keys"  # Graham's bound: heaviest-first cannot end 3% sooner (no count needed)
    return "heavy" if makespan(heavy, slots) < 0.97 * makespan(keys, slots) else "keys"


def split_of(L: int, hkv: int, group: int, slots: int) -> int:
    """The default group split: the smallest divisor giving ~3 blocks per SM (attention_bwd_mma.cu)."""
    base = -(-L // BN) * hkv
    for s in range(1, group):
        if group % s == 0 and base * s >= 3 * slots:
            return s
    return group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slots", type=int, default=132, help="resident blocks on the device")
    args = ap.parse_args()
    cases = [("swa L=4K W=2048 (32,4,d64)", 4096, 2048, 32, 4),
             ("swa L=16K W=2048 (32,4,d64)", 16384, 2048, 32, 4),
             ("causal L=4K (32,4,d64)", 4096, None, 32, 4),
             ("swa L=4K W=2048 (12,12,d128)", 4096, 2048, 12, 12)]
    print(f"slots {args.slots}; block work = query tiles x query heads per block\n")
    print("| case | blocks | even share | keys fastest | heaviest first | picked |")
    print("|---|---|---|---|---|---|")
    for name, L, W, H, hkv in cases:
        group = H // hkv
        split = split_of(L, hkv, group, args.slots)
        ny, per = hkv * split, group // split
        left = -1 if W is None else W - 1
        fast, slow = orders(L, L, left, 0, 1, ny, per)
        even = sum(fast) / args.slots
        a, b = makespan(fast, args.slots), makespan(slow, args.slots)
        picked = pick_order(L, L, left, 0, 1, ny, per, args.slots)
        picked = "heaviest first" if picked == "heavy" else "keys fastest"
        print(f"| {name} | {len(fast)} | {even:.1f} | {a} ({a / even:.2f}x) | "
              f"{b} ({b / even:.2f}x) | {picked} |")


if __name__ == "__main__":
    main()
