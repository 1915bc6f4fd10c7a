"""The CUDA selective scan's fast paths against the float64 reference (tests/ref_scan.py).

For d_state 16 with u / delta / z / B / C of one dtype and aligned rows, csrc/cuda/scan.cu
runs a kernel with 4 or 8 threads per channel, optionally in chunks over the sequence (two
passes, the state passed between chunks). ``SAMBA_EXT_SCAN_LANES`` (1 | 4 | 8) and
``SAMBA_EXT_SCAN_CHUNKS`` (N) force a variant, read at each call; every variant must give
the reference's result on fresh random inputs, including sequence lengths that leave a
partial last group of 8 steps, channel counts that leave the lanes of one warp in different
chunks, grouped B/C, an initial state, and no z / D / delta_bias. Tolerances: tests/cuda_util
RTOL (float32 arithmetic; the output rounded to its dtype); the chunked passes recombine the
state as exp(A * sum(dt)) * h + h_local, a different float32 rounding order than the
step-by-step product, well inside float32's 1e-5 over these lengths.
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
    def set_(lanes: int, chunks: int) -> None:
        monkeypatch.setenv("SAMBA_EXT_SCAN_LANES", str(lanes))
        monkeypatch.setenv("SAMBA_EXT_SCAN_CHUNKS", str(chunks))
    return set_


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
@pytest.mark.parametrize("lanes,chunks", [(4, 1), (8, 1), (4, 3), (8, 7), (4, 16), (1, 1)])
@pytest.mark.parametrize("batch,dim,L,G", [(2, 24, 296, 0), (1, 40, 1003, 2), (3, 5, 64, 0),
                                           (1, 7, 4096, 0)])
def test_scan_variants_match_reference(rng, variant, dtype, lanes, chunks, batch, dim, L, G):
    variant(lanes, chunks)
    r = _inputs(rng, batch, dim, L, G, dtype)
    y_ref, h_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"],
                                      r["z"], r["delta_bias"], True, r["initial_state"], True)
    d = {k: (dev(v, dtype) if k in ("u", "delta", "B", "C", "z") else dev(v))
         for k, v in r.items()}
    y, h = samba_ext.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                    d["delta_bias"], True, d["initial_state"], True)
    assert_close(host(y), y_ref, RTOL[dtype], "y")
    assert_close(host(h), h_ref, RTOL["float32"], "last state")


@pytest.mark.parametrize("lanes,chunks", [(4, 1), (8, 5)])
def test_scan_variants_without_options(rng, variant, lanes, chunks):
    """No z / D / delta_bias / softplus / states; then an initial state without the last."""
    variant(lanes, chunks)
    batch, dim, L = 2, 16, 808
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
