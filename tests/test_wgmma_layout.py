"""Index math of the Hopper prefill (csrc/cuda/attention_wgmma.cu, variant v4) checked on the
host, without a GPU: the shared-memory addresses the kernel writes (load_tile_sw) against the
addresses wgmma reads through the kernel's matrix descriptors, and the register positions the
kernel assumes (mask, softmax rows, P packing, output store) against the wgmma fragment layouts,
and (the TMA opt-in) where a tensor-memory copy with the 128-byte swizzle puts each K / V box.

The kernel's formulas are mirrored here line by line (keep them in step with the .cu file).
The hardware side is written independently from the documented forms (PTX ISA, "Asynchronous
Warpgroup Level Matrix Shared Memory Layout" / "Matrix Descriptor Format"; the same forms as
CUTLASS's GmmaDescriptor, make_gmma_desc and CLayout_64xN / ALayout_64x16):
  * descriptor: bits 0-13 start >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 49-51 base offset,
    62-63 layout (1: 128-byte swizzle);
  * K-major, 128-byte swizzle, in 16-byte units: ((8, m), 2) : ((8, SBO), 1);
    MN-major, 128-byte swizzle: ((8, n), (8, k)) : ((1, LBO), (8, SBO)); the swizzle XORs
    byte-address bits 4-6 with bits 7-9 of the final address;
  * accumulator (and 16-bit A from registers): thread t of the warpgroup, value v:
    index (4,8,4):(128,1,16) of t plus (2,2,N/8):(64,8,512) of v, column-major in 64 x N.
Every check is exact (addresses and indices), so there is no tolerance.
"""
from __future__ import annotations

import itertools

import pytest

BQ = 128


# ---------------------------------------------------------------- the kernel, mirrored -------
def desc_sw128(addr: int, lbo: int, sbo: int) -> int:
    """wgmma_ptx.cuh desc_sw128."""
    return ((addr & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16) | \
        (((sbo >> 4) & 0x3FFF) << 32) | (1 << 62)


def write_addr(s: int, rows: int, r: int, col: int) -> int:
    """load_tile_sw: byte address of element (r, col) of a rows x D tile at s."""
    c = col // 8
    return s + (c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4) + (col % 8) * 2


def q_desc(sq: int, wg: int, ks: int) -> int:
    return desc_sw128(sq + wg * 64 * 128 + (ks >> 2) * BQ * 128 + (ks & 3) * 32, 16, 1024)


def k_desc(ks_base: int, bk: int, ks: int) -> int:
    return desc_sw128(ks_base + (ks >> 2) * bk * 128 + (ks & 3) * 32, 16, 1024)


def v_desc(vs_base: int, bk: int, kk: int) -> int:
    return desc_sw128(vs_base + kk * 16 * 128, bk * 128, 1024)


def kernel_s_pos(lane: int, warp: int, e: int, n: int) -> tuple[int, int]:
    """(row in the warpgroup's 64, key in the tile) the mask / softmax give s[4 n + e]."""
    g, tq = lane >> 2, lane & 3
    return warp * 16 + g + (e >> 1) * 8, n * 8 + 2 * tq + (e & 1)


def kernel_pa(kk: int, j: int, half: int) -> int:
    """index into s of the value packed as half `half` (0 low) of pa[kk][j]."""
    return 8 * kk + 2 * j + half


def kernel_o_pos(lane: int, warp: int, i: int, r: int, c: int) -> tuple[int, int]:
    """(row, head dim) the store gives o[4 i + 2 r + c]."""
    g, tq = lane >> 2, lane & 3
    return warp * 16 + g + r * 8, i * 8 + 2 * tq + c


# ---------------------------------------------------------------- the hardware, documented ---
def decode(desc: int) -> tuple[int, int, int]:
    assert (desc >> 62) & 3 == 1 and (desc >> 49) & 7 == 0
    return (desc & 0x3FFF) << 4, ((desc >> 16) & 0x3FFF) << 4, ((desc >> 32) & 0x3FFF) << 4


def swizzle128(addr: int) -> int:
    return addr ^ (((addr >> 7) & 7) << 4)


def read_kmajor(desc: int, mn: int, k: int) -> int:
    """address wgmma reads for element (mn, k), k < 16, of a K-major operand."""
    start, _, sbo = decode(desc)
    return swizzle128(start + (mn % 8) * 128 + (mn // 8) * sbo + (k // 8) * 16 + (k % 8) * 2)


def read_mnmajor(desc: int, k: int, n: int) -> int:
    """address wgmma reads for element (k, n), k < 16, of an MN-major operand."""
    start, lbo, sbo = decode(desc)
    return swizzle128(start + (n % 8) * 2 + ((n // 8) % 8) * 16 + (n // 64) * lbo +
                      (k % 8) * 128 + (k // 8) * sbo)


def frag(t: int, v: int) -> tuple[int, int]:
    """(row, col) of value v of thread t in a 64 x N accumulator / 64 x 16 A fragment."""
    idx = 128 * (t % 4) + (t // 4) % 8 + 16 * (t // 32) + 64 * (v % 2) + 8 * ((v // 2) % 2) + \
        512 * (v // 4)
    return idx % 64, idx // 64


# ---------------------------------------------------------------- checks ---------------------
CONFIGS = [(64, 64), (64, 128), (128, 64), (128, 128)]  # (D, BK): W64_64 .. W128_128
BASE = 1024 * 7  # any 1024-aligned shared address (the kernel rounds sQ up to 1024)


@pytest.mark.parametrize("D,BK", CONFIGS)
def test_q_and_k_descriptors_read_what_load_tile_sw_wrote(D, BK):
    sq = BASE
    sk = sq + BQ * D * 2 + BK * D * 2  # stage 1 of K
    for ks in range(D // 16):
        for wg, m, k in itertools.product(range(2), range(64), range(16)):
            assert read_kmajor(q_desc(sq, wg, ks), m, k) == \
                write_addr(sq, BQ, wg * 64 + m, ks * 16 + k), (ks, wg, m, k)
        for n, k in itertools.product(range(BK), range(16)):
            assert read_kmajor(k_desc(sk, BK, ks), n, k) == \
                write_addr(sk, BK, n, ks * 16 + k), (ks, n, k)


@pytest.mark.parametrize("D,BK", CONFIGS)
def test_v_descriptor_reads_what_load_tile_sw_wrote(D, BK):
    sv = BASE + BQ * D * 2 + 2 * BK * D * 2 + BK * D * 2  # stage 1 of V
    for kk in range(BK // 16):
        for k, n in itertools.product(range(16), range(D)):
            assert read_mnmajor(v_desc(sv, BK, kk), k, n) == \
                write_addr(sv, BK, kk * 16 + k, n), (kk, k, n)


def test_swizzled_writes_are_a_permutation_of_the_tile():
    for D, rows in ((64, 64), (128, 128)):
        addrs = {write_addr(BASE, rows, r, c) for r in range(rows) for c in range(D)}
        assert addrs == set(range(BASE, BASE + rows * D * 2, 2))


@pytest.mark.parametrize("N", [64, 128])
def test_register_positions_match_the_fragment_layouts(N):
    for t in range(128):
        lane, warp = t % 32, t // 32
        # S accumulator (mask, row max / sum over the quad of lanes 4g .. 4g+3)
        for n, e in itertools.product(range(N // 8), range(4)):
            assert kernel_s_pos(lane, warp, e, n) == frag(t, 4 * n + e)
        # O accumulator (rescale by corr[r], store)
        for i, r, c in itertools.product(range(N // 8), range(2), range(2)):
            assert kernel_o_pos(lane, warp, i, r, c) == frag(t, 4 * i + 2 * r + c)
        # P as the A operand of k-step kk: value 2 j + half of the A fragment is the
        # probability of (row, key 16 kk + col) that s holds at kernel_pa(kk, j, half)
        for kk, j, half in itertools.product(range(N // 16), range(4), range(2)):
            row, col = frag(t, 2 * j + half)
            assert kernel_s_pos(lane, warp, *divmod(kernel_pa(kk, j, half), 4)[::-1]) == \
                (row, 16 * kk + col)


def test_descriptor_fields():
    d = desc_sw128(0x1F3A0 + 32, 128 * 128, 1024)
    assert decode(d) == (0x1F3A0 + 32, 128 * 128, 1024)
    assert d >> 62 == 1 and (d >> 14) & 3 == 0 and (d >> 30) & 3 == 0 and (d >> 46) & 0xFFFF == 0


# ---------------------------------------------------------------- the TMA opt-in -------------
def tma_write_addr(dst: int, r: int, col: int) -> int:
    """Byte address where a tensor-memory copy with CU_TENSOR_MAP_SWIZZLE_128B puts element
    (row r, column col < 64) of a box of 64 columns (128 bytes per row) at the 1024-byte aligned
    shared address dst (CUDA programming guide, "Tensor Memory Access": the 16-byte chunks of each
    128-byte row are permuted by XOR with bits 7-9 of the address, i.e. the row within 8)."""
    return swizzle128(dst + r * 128 + col * 2)


@pytest.mark.parametrize("D,BK", CONFIGS)
def test_tma_boxes_land_where_the_descriptors_read(D, BK):
    # produce(): box cb (head dims 64 cb ..) of tile t goes to stage + cb * BK * 128; the K and V
    # descriptors of that stage must read every element from there
    stages = 3
    sk = BASE + BQ * D * 2
    sv = sk + stages * BK * D * 2
    for st in range(stages):
        ks_base, vs_base = sk + st * BK * D * 2, sv + st * BK * D * 2
        for cb, r, c in itertools.product(range(D // 64), range(BK), range(64)):
            col = 64 * cb + c
            assert tma_write_addr(ks_base + cb * BK * 128, r, c) == write_addr(ks_base, BK, r, col)
            assert read_kmajor(k_desc(ks_base, BK, col // 16), r, col % 16) == \
                tma_write_addr(ks_base + cb * BK * 128, r, c)
            assert read_mnmajor(v_desc(vs_base, BK, r // 16), r % 16, col) == \
                tma_write_addr(vs_base + cb * BK * 128, r, c)


def test_mirrored_formulas_are_the_kernels():
    # the expressions mirrored at the top of this file, as they stand in the sources (whitespace
    # aside): a change there must come with the same change here
    import pathlib
    cuda = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"

    def text(name: str) -> str:
        return " ".join((cuda / name).read_text().split())

    expected = {
        "wgmma_ptx.cuh": (
            "return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16)"
            " | ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32) | ((uint64_t)1 << 62);",
            "return (d & 0xFFFFFFFF00000000ull) | (uint32_t)((uint32_t)d + (bytes >> 4));"),
        "wgmma_tile.cuh": (
            "s + (uint32_t)((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));",
            "desc_add(desc_sw128(s, 16, 1024), (uint32_t)((ks >> 2) * ROWS * 128 + (ks & 3) * 32));",
            "desc_add(desc_sw128(s, ROWS * 128, 1024), (uint32_t)(kk * 16 * 128));"),
        "attention_wgmma.cu": (
            "constexpr uint32_t SBO = 1024, LBO_K = 16, LBO_V = C::BK * 128;",
            "const uint64_t dq0 = desc_sw128(sQ + wg * 64 * 128, LBO_K, SBO);",
            "const uint64_t dk0 = desc_sw128(sK, LBO_K, SBO), dv0 = desc_sw128(sV, LBO_V, SBO);",
            "const uint32_t col = (ks & 3) * 32;",
            "desc_add(dq0, (ks >> 2) * C::BQ * 128 + col);",
            "desc_add(dk0, k_s - sK + (ks >> 2) * C::BK * 128 + col);",
            "desc_add(dv0, v_s - sV + kk * 16 * 128)",
            "const int kt = n * 8 + 2 * tq + (e & 1);",                   # kernel_s_pos
            "reinterpret_cast<const float(&)[4]>(s[8 * kk]),",            # kernel_pa
            "const int q = q0 + wg * 64 + warp * 16 + g + r * 8;"),       # kernel_o_pos
        "prefill_common.cuh": (
            "a[0] = Mma<T>::pack(s0[0], s0[1]); a[1] = Mma<T>::pack(s0[2], s0[3]); "
            "a[2] = Mma<T>::pack(s1[0], s1[1]); a[3] = Mma<T>::pack(s1[2], s1[3]);",),
    }
    for name, exprs in expected.items():
        src = text(name)
        for expr in exprs:
            assert expr in src, (name, expr)
