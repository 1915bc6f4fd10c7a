"""The block order of the tensor-core attention backward grids, checked on the host (no GPU).

csrc/cuda/attention_bwd_impl.cuh maps a block's linear index to (key block, head part, batch) in
one of two orders (ab_block_of), and csrc/cuda/attention_bwd_order.cu picks the order per launch
from a list-scheduling count (ab_pick_order), mirrored in benchmarks/attn_bwd_block_order.py
(pick_order). Here: both orders visit every (key block, head part, batch) exactly once;
heaviest-first starts from the key blocks that see the most query tiles; the picks of the
benchmark's cases; and the mirrored expressions as they stand in the sources (a change there must
come with the same change here). Every check is exact integer arithmetic, so no tolerance.
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from attn_bwd_block_order import orders, pick_order, tiles_of  # noqa: E402

# ab_pick_order compiled for the host: reads "Lq Lk left right batch ny hpb slots bn bm" lines,
# prints the order of each
HARNESS = r"""
#include <cstdio>
#include "attention_bwd_impl.cuh"
int main() {
    samba_cu_attn_ext_args a{};
    long long Lq, Lk, l, r, b, ny, hpb, slots;
    int bn, bm;
    while (scanf("%lld %lld %lld %lld %lld %lld %lld %lld %d %d", &Lq, &Lk, &l, &r, &b, &ny, &hpb,
                 &slots, &bn, &bm) == 10) {
        a.seqlen_q = Lq; a.seqlen_k = Lk; a.window_left = l; a.window_right = r; a.batch = b;
        printf("%d\n", ab_pick_order(&a, bn, bm, ny, hpb, slots));
    }
}
"""

KEYS, HEAVY = 0, 1


def block_of(i: int, order: int, ny: int, batch: int, nkb: int, left: int,
             right: int) -> tuple[int, int, int]:
    """ab_block_of: (key block, batch, head part) of block i."""
    if order == KEYS:
        kb = i % nkb
        i //= nkb
        return kb, i // ny, i % ny
    y = i % ny
    i //= ny
    b = i % batch
    i //= batch
    return (nkb - 1 - i if right < 0 <= left else i), b, y


WINDOWS = [(-1, 0), (40, 0), (40, -1), (20, 35), (-1, -1)]


@pytest.mark.parametrize("order", [KEYS, HEAVY])
@pytest.mark.parametrize("left,right", WINDOWS)
def test_each_block_once(order, left, right):
    for nkb, ny, batch in itertools.product((1, 3, 8), (1, 4, 6), (1, 2, 5)):
        seen = {block_of(i, order, ny, batch, nkb, left, right) for i in range(nkb * ny * batch)}
        assert seen == set(itertools.product(range(nkb), range(batch), range(ny)))


@pytest.mark.parametrize("left,right", [(-1, 0), (40, 0), (40, -1), (-1, -1)])
def test_heaviest_first_never_gets_heavier(left, right):
    # as many queries as keys, a causal window or only one side bounded: the work of the blocks
    # in launch order does not increase (causal: the first key blocks see the most queries;
    # only the left side bounded: the last ones). Elsewhere (two-sided windows, Lq < Lk with a
    # window: key blocks that no query sees come first) it need not, and the count decides.
    L, bn, bm, ny, batch = 900, 128, 64, 3, 2
    nkb = -(-L // bn)
    work = [tiles_of(block_of(i, HEAVY, ny, batch, nkb, left, right)[0], bn, bm, L, L, left,
                     right) for i in range(nkb * ny * batch)]
    assert work == sorted(work, reverse=True)


@pytest.mark.parametrize("left,right", WINDOWS)
def test_counted_orders_are_the_kernels(left, right):
    # the count's two lists follow the kernel's launch order, for any window and Lq != Lk
    Lq, Lk, bn, bm, ny, batch, hpb = 700, 900, 128, 64, 3, 2, 4
    nkb = -(-Lk // bn)
    keys, heavy = orders(Lq, Lk, left, right, batch, ny, hpb, bn, bm)
    for order, counted in ((KEYS, keys), (HEAVY, heavy)):
        kbs = [block_of(i, order, ny, batch, nkb, left, right)[0] for i in range(nkb * ny * batch)]
        assert counted == [tiles_of(kb, bn, bm, Lq, Lk, left, right) * hpb + 1 for kb in kbs]


def test_tiles_counts_the_queries_that_see_a_key():
    # against a direct count of the (query, key) pairs inside the window, for every key block
    Lq, Lk, bn, bm = 150, 200, 32, 16
    for left, right in WINDOWS:
        for kb in range(-(-Lk // bn)):
            rows = [q for q in range(Lq) for k in range(kb * bn, min(Lk, kb * bn + bn))
                    if (left < 0 or k >= q + Lk - Lq - left)
                    and (right < 0 or k <= q + Lk - Lq + right)]
            # the kernels' tiles start at the block's first query, not at a multiple of bm
            want = -(-(max(rows) - min(rows) + 1) // bm) if rows else 0
            assert tiles_of(kb, bn, bm, Lq, Lk, left, right) == want, (left, right, kb)


def test_picks_of_the_benchmark_cases():
    # benchmarks/gpu_backward_attention.py's cases on 132 one-block slots (the two-warpgroup
    # wgmma kernel on an H100): heaviest-first where the tail is long (4K keys), keys fastest
    # at 16K keys with a 2048 window, where the count finds both alike
    assert pick_order(4096, 4096, 2047, 0, 1, 16, 2, 132) == "heavy"
    assert pick_order(16384, 16384, 2047, 0, 1, 4, 8, 132) == "keys"
    assert pick_order(4096, 4096, -1, 0, 1, 16, 2, 132) == "heavy"
    assert pick_order(4096, 4096, 2047, 0, 1, 12, 1, 132) == "heavy"
    # one wave, and more than 2^16 blocks: keys fastest without a count
    assert pick_order(4096, 4096, -1, 0, 1, 2, 1, 132) == "keys"
    assert pick_order(1 << 20, 1 << 20, -1, 0, 1, 8, 1, 132) == "keys"


def test_bound_skips_only_counts_that_give_keys():
    # the launch answers without the count where Graham's bound rules out a 3% gain; on a grid
    # of shapes the answer is the full count's, and the bound does skip some counts
    skipped = 0
    for L, left, right, batch, ny, hpb, slots in itertools.product(
            (300, 2048, 4096, 16384), (-1, 511, 2047), (0, -1), (1, 3, 8), (4, 16), (1, 8),
            (132, 264)):
        full = pick_order(L, L, left, right, batch, ny, hpb, slots, bound=False)
        assert pick_order(L, L, left, right, batch, ny, hpb, slots) == full
        keys, _ = orders(L, L, left, right, batch, ny, hpb)
        skipped += slots < len(keys) and 0.97 * max(keys) * slots <= 0.03 * sum(keys)
    assert skipped > 0


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return found or (os.path.join(cuda, "bin", "nvcc")
                     if os.path.exists(os.path.join(cuda, "bin", "nvcc")) else None)


def test_c_picker_is_the_mirror(tmp_path):
    # csrc/cuda/attention_bwd_order.cu compiled for the host (no GPU needed, but nvcc and the
    # CUDA headers are) against pick_order on random shapes: any window, Lq != Lk, batches,
    # block shapes and slot counts
    nvcc = _nvcc()
    if nvcc is None or not (ROOT / "csrc").exists():
        pytest.skip("needs nvcc and csrc/ (a source checkout)")
    (tmp_path / "main.cu").write_text(HARNESS)
    exe = tmp_path / "pick"
    built = subprocess.run([nvcc, "-O2", "-std=c++17", f"-I{ROOT / 'csrc'}",
                            f"-I{ROOT / 'csrc' / 'cuda'}", "-o", str(exe), str(tmp_path / "main.cu"),
                            str(ROOT / "csrc" / "cuda" / "attention_bwd_order.cu")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        # a toolchain that cannot build a trivial program is this machine's, not the source's
        (tmp_path / "probe.cu").write_text("int main() { return 0; }\n")
        probe = subprocess.run([nvcc, "-o", str(tmp_path / "probe"), str(tmp_path / "probe.cu")],
                               capture_output=True)
        if probe.returncode != 0:
            pytest.skip("nvcc cannot build host programs here")
        pytest.fail(f"attention_bwd_order.cu does not build for the host:\n{built.stderr[-2000:]}")
    rng = random.Random(0)
    shapes, want = [], []
    for _ in range(1000):
        Lk = rng.choice([1, 37, 128, 300, 1000, 2048, 4096, 5000, 8192, 16384])
        shape = (rng.choice([Lk, Lk, max(1, Lk // 2), Lk + 77]), Lk,
                 rng.choice([-1, 0, 30, 511, 2047, 5000]), rng.choice([-1, 0, 0, 35]),
                 rng.choice([1, 1, 2, 3, 8]), rng.choice([1, 4, 8, 12, 16, 32]),
                 rng.choice([1, 2, 4, 8]), rng.choice([132, 264, 100]),
                 *rng.choice([(128, 64), (64, 64), (128, 128)]))
        shapes.append(" ".join(map(str, shape)))
        want.append(1 if pick_order(*shape) == "heavy" else 0)
    out = subprocess.run([str(exe)], input="\n".join(shapes), capture_output=True, text=True,
                         check=True).stdout.split()
    assert [int(x) for x in out] == want
    assert 0 < sum(want) < len(want)  # both answers occur


def test_mirrored_expressions_are_the_sources():
    impl = " ".join((ROOT / "csrc" / "cuda" / "attention_bwd_impl.cuh").read_text().split())
    pick = " ".join((ROOT / "csrc" / "cuda" / "attention_bwd_order.cu").read_text().split())
    for expr in (
        "r.kb = id % nkb; id /= nkb; r.y = (int)(id % ny); r.b = id / ny;",
        "r.y = (int)(id % ny); id /= ny; r.b = id % batch; const int64_t i = id / batch;",
        "return right < 0 && left >= 0;",
        "r.kb = ab_from_last(left, right) ? nkb - 1 - i : i;",
    ):
        assert expr in impl, expr
    for expr in (
        "int64_t qlo = right < 0 ? 0 : k0 - off - right;",
        "int64_t qhi = left < 0 ? Lq - 1 : kend - 1 - off + left;",
        "return qhi >= qlo ? (qhi - qlo + bm) / bm : 0;",
        "tiles_of(kb, bn, bm, a->seqlen_q, a->seqlen_k, left, right) * hpb + 1;",
        "if (blocks <= slots || blocks > ((int64_t)1 << 16)) return AB_KEYS_FASTEST;",
        "if (ab_from_last(left, right))",
        "if (0.97 * (double)most * (double)slots <= 0.03 * (double)sum * (double)reps) "
        "return AB_KEYS_FASTEST;",
        "return (double)first < 0.97 * (double)keys ? AB_HEAVY_FIRST : AB_KEYS_FASTEST;",
    ):
        assert expr in pick, expr
    # the kernels' own query range is the one counted
    for name in ("attention_bwd_wgmma.cu", "attention_bwd_mma.cu"):
        src = " ".join((ROOT / "csrc" / "cuda" / name).read_text().split())
        assert "right < 0 ? 0 :" in src and "k0 - off - right" in src, name
        assert "kend - 1 - off + left" in src, name
