"""Programmatic dependent launch of the decode-path kernels (csrc/cuda/pdl.cuh, switched
in-process through the extension's ``pdl_mode``). A kernel launched this way may start while the
one before it still runs, so each must wait before it touches global memory. These tests run
long chains of dependent kernels that read what the previous one wrote and overwrite what it
read (a missing wait shows as a race: results that differ from plain stream order), and the
CUDA model's decode, eager and replayed from CUDA graphs, with PDL on against off: the results
must be equal bit for bit, since PDL changes when a kernel starts, never what it computes. On
devices before compute capability 9.0 both modes launch in stream order, and the tests still
hold."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cuda_util import dev, needs_cuda

from samba_ext.config import SambaConfig
from samba_ext.model import Samba

pytestmark = needs_cuda


def test_pdl_mode_switches_and_rejects_other_values(cu_modes):
    cu = cu_modes
    assert cu.pdl_mode(0) == 0 and cu.pdl_mode() == 0
    assert cu.pdl_mode(1) == 1 and cu.pdl_mode() == 1
    with pytest.raises(ValueError, match="pdl"):
        cu.pdl_mode(2)
    assert cu.pdl_mode() == 1


def _chain(cu, on: int, x0: np.ndarray, w: np.ndarray, dt: str, rounds: int) -> np.ndarray:
    """rounds x (b = swiglu(a, a); a = rms_norm(b + r) -> r'), in place in three buffers: every
    kernel reads the previous kernel's output and overwrites a buffer the previous one read."""
    from samba_ext.cuda import ops

    cu.pdl_mode(on)
    a, b, r = dev(x0, dt), dev(np.zeros_like(x0), dt), dev(np.zeros_like(x0), dt)
    wd = dev(w, dt)
    for _ in range(rounds):
        ops.swiglu(a, a, out=b)
        y, s = ops.rms_norm(b, wd, residual=r, out=a)
        r = s
    return np.stack([a.to_numpy().astype(np.float64), r.to_numpy().astype(np.float64)])


@pytest.mark.parametrize("dt", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows,n", [(1, 2048), (64, 4096), (333, 1000)])
def test_dependent_chain_same_as_stream_order(rng, cu_modes, dt, rows, n):
    cu = cu_modes
    x0 = rng.standard_normal((rows, n)).astype(np.float32)
    w = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    ref = _chain(cu, 0, x0, w, dt, 60)
    got = _chain(cu, 1, x0, w, dt, 60)
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(got, ref)


def _gemv_chain(cu, on: int, x0: np.ndarray, ws: list, rounds: int) -> np.ndarray:
    """rounds x (for each W: x = rms_norm(x @ W^T)), one row of bf16: a GEMV followed by a norm
    that reads its output, each product reading the norm before it."""
    from samba_ext.cuda import ops
    from samba_ext.cuda.blas import matmul

    cu.pdl_mode(on)
    before = cu.gemv_launches()
    x = dev(x0, "bfloat16")
    wd = [dev(w, "bfloat16") for w in ws]
    one = {n: dev(np.ones(n, np.float32), "bfloat16") for n in {w.shape[0] for w in ws}}
    for _ in range(rounds):
        for w in wd:
            y = matmul(x, w, trans_b=True, out_dtype="bfloat16")
            x = ops.rms_norm(y, one[y.shape[-1]])
    assert cu.gemv_launches() - before == rounds * len(ws)
    return x.to_numpy().astype(np.float64)


@pytest.mark.parametrize("rows", ["1", "0"])
def test_gemv_chain_same_as_stream_order(rng, monkeypatch, cu_modes, rows):
    """2048 x 2048 products and a 2048 -> 160 -> 2048 pair: every product of the chain runs
    the GEMV, on its one-row kernel (rows "1", the default: 1-8 warps per row of W) or on its
    split-K kernel with the reduce kernel after it (SAMBA_EXT_GEMV_ROWS=0: 2048 x 2048 split
    over K, the small N split several ways, then K = 160)."""
    monkeypatch.setenv("SAMBA_EXT_GEMV_ROWS", rows)
    cu = cu_modes
    ws = [rng.standard_normal((2048, 2048)) / 45.0, rng.standard_normal((160, 2048)) / 45.0,
          rng.standard_normal((2048, 160)) / 12.6]
    x0 = rng.standard_normal((1, 2048))
    cu.gemv_mode(1)
    ref = _gemv_chain(cu, 0, x0, ws, 20)
    got = _gemv_chain(cu, 1, x0, ws, 20)
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("gemv", [0, 1])
@pytest.mark.parametrize("wd,ad", [("float32", "float32"), ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("batch", [1, 3])
def test_decode_with_pdl_matches_without_bitwise(rng, cu_modes, gemv, wd, ad, batch):
    """One model, its graphs dropped between the modes (so each mode captures its own)."""
    from samba_ext.backend_cuda import CUDABackend

    cu = cu_modes
    cfg = dataclasses.replace(SambaConfig.preset("samba-test"),
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (batch, 24))
    out = {}
    cu.gemv_mode(gemv)
    m = Samba(cfg, seed=21, device=CUDABackend(weight_dtype=wd, act_dtype=ad))
    for on in (0, 1):
        cu.pdl_mode(on)
        m.backend._free_graphs()
        captures = m.backend.stats["captures"]
        st = m.new_state(batch)
        logits = [m.prefill(toks[:, :5], st)]
        logits += [m.step(toks[:, t], st) for t in range(5, 24)]
        assert m.backend.stats["captures"] > captures and m.backend.stats["replays"] >= 10
        out[on] = np.stack(logits)
        assert np.all(np.isfinite(out[on]))
    np.testing.assert_array_equal(out[1], out[0])


@pytest.mark.parametrize("env,want", [("0", 0), ("1", 1), (None, 1)])
def test_pdl_mode_starts_from_the_environment(env, want):
    """SAMBA_EXT_PDL=0 turns dependent launch off from the start (read once, in a fresh
    process); without it, or with 1, it is on."""
    import os
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if k != "SAMBA_EXT_PDL"}
    if env is not None:
        e["SAMBA_EXT_PDL"] = env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", "import samba_ext._cuda as c; "
                          "print(c.pdl_mode())"], env=e, capture_output=True, text=True,
                         check=True).stdout
    assert int(out.strip()) == want
