"""The CUDA selective scan's fast paths against the float64 reference (tests/ref_scan.py).

For d_state 16 with u / delta / z / B / C of one dtype and aligned rows, csrc/cuda/scan.cu
runs one of two kernels (``SAMBA_EXT_SCAN_VARIANT``): ``split``, 4 or 8 threads per channel,
optionally in chunks over the sequence (two passes, the state passed between chunks), and
``tile`` (csrc/cuda/scan_tile.cuh), blocks of 32 or 16 channels (4 or 8 threads each) walking
the sequence in tiles of 32 steps with B / C and softplus(delta) staged in shared memory,
``tile2`` (csrc/cuda/scan_tile2.cuh, the same with the 4 threads' partial outputs summed by
shuffles and swizzled staging; in chunks over the sequence when asked, and by default where the
channels give few warps), and
``warp`` / ``warp8`` (csrc/cuda/scan_warp.cuh), one warp per channel scanning chunks of 32 x 16
or 32 x 8 steps in parallel over the sequence (a warp scan of the lanes' partial states).
``SAMBA_EXT_SCAN_LANES`` (1 | 4 | 8) and ``SAMBA_EXT_SCAN_CHUNKS`` (N) force a variant, read at
each call; every variant must give the reference's result on fresh random inputs, including
sequence lengths that leave a partial last group of 8 steps or a partial last tile (odd L, L
shorter than one tile), channel counts that leave the lanes of one warp in different chunks
or that the tiled kernel cannot cut into whole blocks (it then falls back to the split
kernel), batch > 1, grouped B/C, an initial state with the last state returned, and no z / D /
delta_bias. Tolerances: tests/cuda_util RTOL (float32 arithmetic; the output rounded to its
dtype); the chunked passes recombine the state as exp(A * sum(dt)) * h + h_local, and the
tiled kernel sums y over its threads' states in another order, and the warp kernel combines
the lanes' partial states with the decay exp(A * sum(dt)) of each lane's steps: float32 rounding
differences well inside float32's 1e-5 over these lengths.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import RTOL, dev, host, needs_cuda, round_to
from ref_scan import selective_scan_ref

import samba_ext

pytestmark = needs_cuda


@pytest.fixture
def variant(monkeypatch):
    def set_(lanes: int, chunks: int, kind: str = "split") -> None:
        monkeypatch.setenv("SAMBA_EXT_SCAN_VARIANT", kind)
        monkeypatch.setenv("SAMBA_EXT_SCAN_LANES", str(lanes))
        monkeypatch.setenv("SAMBA_EXT_SCAN_CHUNKS", str(chunks))
    return set_


# (kind, lanes, chunks); tile with chunks > 1 or a channel count that is not a multiple of its
# block falls back to the split kernel; tile2 runs chunks itself (at most one per tile), and
# warp with chunks > 1 runs them
VARIANTS = [("split", 4, 1), ("split", 8, 1), ("split", 4, 3), ("split", 8, 7),
            ("split", 4, 16), ("split", 1, 1), ("tile", 4, 1), ("tile", 8, 1), ("tile2", 4, 1),
            ("tile2", 4, 3), ("tile2", 4, 16), ("warp", 4, 1), ("warp8", 4, 1), ("warp", 4, 2)]
# (batch, dim, L, G): the first four from the split kernel's tests; then whole tiled blocks
# (dim / G a multiple of 32): batch 3 with a partial last tile, grouped B/C with an odd L over
# many tiles, L shorter than one tile and than one group of 8, and L a multiple of the tile
SHAPES = [(2, 24, 296, 0), (1, 40, 1003, 2), (3, 5, 64, 0), (1, 7, 4096, 0),
          (3, 64, 296, 0), (1, 64, 1003, 2), (2, 32, 20, 0), (1, 96, 5, 0), (2, 32, 256, 4),
          (1, 6, 1048, 3)]


def _inputs(rng, batch, dim, L, G, dtype):
    N = 16
    bc = (batch, N, L) if G == 0 else (batch, G, N, L)
    r = {"u": rng.standard_normal((batch, dim, L)),
         "delta": rng.uniform(-3.0, 1.0, (batch, dim, L)),
         "B": rng.standard_normal(bc), "C": rng.standard_normal(bc),
         "z": rng.standard_normal((batch, dim, L))}
    r = {k: round_to(v, dtype) for k, v in r.items()}
    r.update(A=round_to(-np.exp(rng.uniform(-1.0, 1.0, (dim, N))), "float32"),
             D=round_to(rng.standard_normal(dim), "float32"),
             delta_bias=round_to(rng.uniform(-0.5, 0.5, dim), "float32"),
             initial_state=round_to(rng.standard_normal((batch, dim, N)), "float32"))
    return r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("kind,lanes,chunks", VARIANTS)
@pytest.mark.parametrize("batch,dim,L,G", SHAPES)
def test_scan_variants_match_reference(rng, variant, dtype, kind, lanes, chunks, batch, dim, L,
                                       G):
    variant(lanes, chunks, kind)
    r = _inputs(rng, batch, dim, L, G, dtype)
    y_ref, h_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"],
                                      r["z"], r["delta_bias"], True, r["initial_state"], True)
    d = {k: (dev(v, dtype) if k in ("u", "delta", "B", "C", "z") else dev(v))
         for k, v in r.items()}
    y, h = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                    d["delta_bias"], True, d["initial_state"], True)
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(h), h_ref, RTOL["float32"], "last state")


@pytest.mark.parametrize("kind,lanes,chunks", [("split", 4, 1), ("split", 8, 5), ("tile", 4, 1),
                                                ("tile", 8, 1), ("tile2", 4, 1), ("warp", 4, 1),
                                                ("warp8", 4, 1)])
def test_scan_variants_without_options(rng, variant, kind, lanes, chunks):
    """No z / D / delta_bias / softplus / states; then an initial state without the last."""
    variant(lanes, chunks, kind)
    batch, dim, L = 2, 32, 808
    r = _inputs(rng, batch, dim, L, 0, "float32")
    r["delta"] = round_to(rng.uniform(0.01, 0.3, (batch, dim, L)), "float32")
    y_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"])
    d = {k: dev(v) for k, v in r.items()}
    y = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"])
    assert_close(host(y), y_ref, RTOL["float32"], "y (no options)")
    y_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"], r["z"],
                               r["delta_bias"], True, r["initial_state"])
    y = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                 d["delta_bias"], True, d["initial_state"])
    assert_close(host(y), y_ref, RTOL["float32"], "y (initial state)")


def _launches(kind: str) -> int:
    from samba_ext.cuda import runtime

    return runtime.require().scan_launches()[("channel", "split", "tile", "warp").index(kind)]


def _check_kernel_on_views(rng, dtype, counter, shape, runs):
    """For each (L, pad) of ``runs``: inputs of rows L + pad long, the scan of their first L steps
    (a view when pad > 0) with a carried and a returned state; the kernel counted by ``counter``
    ran once, and y and the last state match the reference."""
    batch, dim, G = shape
    for L, pad in runs:
        r = _inputs(rng, batch, dim, L + pad, G, dtype)
        full = {k: (dev(v, dtype) if k in ("u", "delta", "B", "C", "z") else dev(v))
                for k, v in r.items()}
        d = {k: (v[..., :L] if k in ("u", "delta", "B", "C", "z") else v) for k, v in full.items()}
        h = {k: (v[..., :L] if k in ("u", "delta", "B", "C", "z") else v) for k, v in r.items()}
        y_ref, h_ref = selective_scan_ref(h["u"], h["delta"], h["A"], h["B"], h["C"], h["D"],
                                          h["z"], h["delta_bias"], True, h["initial_state"], True)
        before = _launches(counter)
        y, last = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"],
                                           d["z"], d["delta_bias"], True, d["initial_state"],
                                           True)
        assert _launches(counter) == before + 1, f"L {L}: the {counter} kernel did not run"
        assert_close(host(y), y_ref, RTOL[dtype], f"y (L {L})")
        assert_close(host(last), h_ref, RTOL["float32"], f"last state (L {L})")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["warp", "warp8"])
def test_warp_kernel_runs_and_matches(rng, variant, dtype, kind):
    """The warp kernel itself (its launch counter moves): 2 channels per group, so a block of 4
    warps spans groups; L 1048 = 2 chunks of 512 + a partial third (warp) or 4 of 256 + a
    partial fifth (warp8), a carried state and the last state; then a padded view (rows 1048
    long, L 1043), so lanes end inside a vector of 8 and take the element loads."""
    variant(4, 1, kind)
    _check_kernel_on_views(rng, dtype, "warp", (1, 6, 3), ((1048, 0), (1043, 5)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind,lanes", [("tile", 4), ("tile", 8), ("tile2", 4)])
def test_tile_kernels_run_and_match(rng, variant, dtype, kind, lanes):
    """The tiled kernels themselves (the tile launch counter moves): 2 groups of 64 channels,
    batch 2; L 1024 (whole tiles, aligned output rows: tile2's vector stores), then L 1003 as a
    view of rows 1008 long (16-byte aligned input rows, which the fast paths need; 31 whole tiles
    and a partial one whose last 8-step piece is partial too; unaligned output rows)."""
    variant(lanes, 1, kind)
    _check_kernel_on_views(rng, dtype, "tile", (2, 128, 2), ((1024, 0), (1003, 5)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("chunks", [2, 3, 5, 40])
def test_tile2_chunks_run_and_match(rng, variant, dtype, chunks):
    """tile2 in chunks over the sequence (two passes, the state composed between chunks):
    L 1024 in chunks of whole tiles (3: 352 + 352 + 320 steps), then L 1003 as a view whose
    last chunk ends in a partial tile; 40 asks for more chunks than the 32 tiles (one per
    tile). The initial state reaches only chunk 0, the last state comes from the last chunk."""
    variant(4, chunks, "tile2")
    _check_kernel_on_views(rng, dtype, "tile", (2, 128, 2), ((1024, 0), (1003, 5)))


def test_tile2_default_chunks_at_batch_1(rng, monkeypatch):
    """The library's own choice for few channels and a long sequence (batch 1, 32 channels:
    chunks of at least 1024 steps): 3 chunks at L 3104, then at L 3100 as a view of rows 3104
    long (16-byte aligned rows, which the tiled kernels need), whose last tile is partial."""
    for var in ("SAMBA_EXT_SCAN_VARIANT", "SAMBA_EXT_SCAN_LANES", "SAMBA_EXT_SCAN_CHUNKS"):
        monkeypatch.delenv(var, raising=False)
    _check_kernel_on_views(rng, "bfloat16", "tile", (1, 32, 0), ((3104, 0), (3100, 4)))
