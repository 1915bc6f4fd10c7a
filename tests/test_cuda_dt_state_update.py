"""samba_ext.cuda.decode.dt_state_update (csrc/cuda/fused_gemm.cu): Mamba's decode step with its
low-rank dt projection, dt = dt_in @ dt_proj^T feeding selective_state_update.

At batch 1, where gemv.cu would compute the product with its one-row kernel at one warp per row,
the state update computes each channel's dt itself (scan.cu's step_dt_proj) with the GEMV's sums
and rounding; elsewhere the product runs first. Either way the result must equal the
composition it replaces (Backend.dt_state_update on the CUDA backend: matmul, then
selective_state_update) bit for bit, which is what these tests check first; whether the fused
path ran is read from the GEMV's launch counter (no product launch when fused).

Against a float64 NumPy step: dt rounded to bfloat16 / float16 as the product's store rounds it
(a float32 sum can round to the neighbouring 16-bit value where the float64 sum sits near a
tie: one 2^-8 step of dt), then float64 arithmetic, y rounded to x's dtype (2^-9). Through the
decay exp(dt A) and the input dt B x, one step of dt moves y by at most about 2^-8 of its
terms, so 3e-2 of max |y| (a few times that) is the tolerance; a wrong row, channel or rank
element moves y by O(max |y|).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cuda_util import host, needs_cuda, round_to

pytestmark = needs_cuda


def _backend(dt: str = "bfloat16"):
    """A backend whose matmul (the composition's product) writes the fused call's dt_dtype:
    its activation dtype, bfloat16 for bfloat16 inputs and float32 for float16 ones (a
    product writes its inputs' dtype or float32; activations are never float16)."""
    from samba_ext.backend_cuda import CUDABackend

    return CUDABackend(graphs=False, act_dtype="bfloat16" if dt == "bfloat16" else "float32",
                       weight_dtype=dt)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _inputs(rng, dt: str, B: int, E: int, N: int, R: int) -> dict:
    return dict(
        state=rng.standard_normal((B, E, N)).astype(np.float32),
        x=round_to(rng.standard_normal((B, E)), dt),
        dt_in=round_to(rng.standard_normal((B, R)) * 0.5, dt),
        dt_proj=round_to(rng.standard_normal((E, R)) / np.sqrt(R), dt),
        A=-np.exp(rng.standard_normal((E, N)) * 0.5).astype(np.float32),
        B=round_to(rng.standard_normal((B, N)), dt),
        C=round_to(rng.standard_normal((B, N)), dt),
        D=rng.standard_normal(E).astype(np.float32),
        z=round_to(rng.standard_normal((B, E)), dt),
        dt_bias=(rng.standard_normal(E) * 0.5 - 1.0).astype(np.float32))


def _run(be, v: dict, dt: str, fused: bool):
    from samba_ext.backend_api import Backend
    from samba_ext.cuda import to_device

    d = {k: to_device(a.astype(np.float32), dt if k in ("x", "dt_in", "dt_proj", "B", "C", "z")
                      else "float32", stream=be.stream) for k, a in v.items()}
    args = (d["state"], d["x"], d["dt_in"], d["dt_proj"], d["A"], d["B"], d["C"], d["D"], d["z"],
            d["dt_bias"])
    before = be.cu.gemv_launches(0)
    y = be.dt_state_update(*args) if fused else Backend.dt_state_update(be, *args)
    launched = be.cu.gemv_launches(0) - before
    return host(y), host(d["state"]), launched


def _reference(v: dict, dt: str) -> tuple[np.ndarray, np.ndarray]:
    dts = round_to(v["dt_in"] @ v["dt_proj"].T, dt)
    delta = _softplus(dts + v["dt_bias"][None, :])                  # (B, E)
    dA = np.exp(delta[:, :, None] * v["A"][None])                    # (B, E, N)
    h = dA * v["state"] + (delta * v["x"])[:, :, None] * v["B"][:, None, :]
    y = (h * v["C"][:, None, :]).sum(-1) + v["D"][None] * v["x"]
    y = y * v["z"] / (1.0 + np.exp(-v["z"]))
    return round_to(y, dt), h


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("N,R", [(16, 128), (16, 8), (16, 40), (8, 64), (32, 256), (16, 136),
                                 (16, 12), (4, 32)])
def test_dt_state_update_matches_the_composition(rng, gemv_on, dt, B, N, R):
    E = 200
    be = _backend(dt)
    v = _inputs(rng, dt, B, E, N, R)
    yf, sf, nf = _run(be, v, dt, True)
    yc, sc, nc = _run(be, v, dt, False)
    assert np.isfinite(yf).all() and np.isfinite(sf).all()
    np.testing.assert_array_equal(yf, yc, err_msg=f"y {(dt, B, N, R)}")
    np.testing.assert_array_equal(sf, sc, err_msg=f"state {(dt, B, N, R)}")
    lanes = min(32, 1 << max(0, (N - 1).bit_length()))
    fused = B == 1 and R % 8 == 0 and R // 8 <= lanes
    if B == 1:
        assert nc == 1                   # the composition's product ran on the GEMV
    assert nf == (0 if fused else nc), (B, N, R)
    y64, h64 = _reference(v, dt)
    np.testing.assert_allclose(yf, y64, rtol=0, atol=3e-2 * np.abs(y64).max())
    np.testing.assert_allclose(sf, h64, rtol=0, atol=3e-2 * np.abs(h64).max())


def test_dt_state_update_without_the_gemv_is_the_composition(rng, cu_modes):
    """GEMV off: the product runs on cuBLAS, and so must the fused call (its sums differ)."""
    cu_modes.gemv_mode(0)
    be = _backend()
    v = _inputs(rng, "bfloat16", 1, 96, 16, 32)
    yf, sf, _ = _run(be, v, "bfloat16", True)
    yc, sc, _ = _run(be, v, "bfloat16", False)
    np.testing.assert_array_equal(yf, yc)
    np.testing.assert_array_equal(sf, sc)


@pytest.mark.parametrize("bad,match", [("rank", "dt_in has shape"), ("dtype", "dt_in: expected"),
                                       ("proj", "dt_proj has shape"),
                                       ("dt_dtype", "dt_dtype: expected")])
def test_dt_state_update_rejects_bad_arguments(rng, bad, match):
    from samba_ext.cuda import to_device
    from samba_ext.cuda.decode import dt_state_update

    B, E, N, R = 1, 16, 4, 8
    v = _inputs(rng, "bfloat16", B, E, N, R)
    st = to_device(v["state"])
    x = to_device(v["x"].astype(np.float32), "bfloat16")
    dti = to_device(v["dt_in"][:, : R - (1 if bad == "rank" else 0)].astype(np.float32),
                    "float16" if bad == "dtype" else "bfloat16")
    w_host = np.zeros((E + 1, R), np.float32) if bad == "proj" else v["dt_proj"]
    w = to_device(w_host.astype(np.float32), "bfloat16")
    with pytest.raises((ValueError, TypeError), match=match):
        dt_state_update(st, x, dti, w, v["A"], v["B"].astype(np.float32),
                        v["C"].astype(np.float32), dt_dtype="float16" if bad == "dt_dtype"
                        else None)


@pytest.mark.parametrize("B", [1, 2])
def test_model_decode_fused_equals_the_composition(rng, gemv_on, B):
    """A tiny bf16 CUDA model decoding with graphs: the state update computing its own dt
    against the composition, the same logits bit for bit. dt_rank 32: the backend keeps a
    weight with a dimension under 32 in float32, and the fold needs dt_proj 16-bit."""
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.model import Samba

    cfg = dataclasses.replace(SambaConfig.preset("samba-test"), dt_rank=32)
    toks = rng.integers(0, cfg.vocab_size, (B, 24))
    outs, launches = [], []
    for fused in (True, False):
        be = CUDABackend(act_dtype="bfloat16", weight_dtype="bfloat16", graphs=True)
        be.fuse_dt_proj = fused
        m = Samba(cfg, seed=8, device=be)
        st = m.new_state(B)
        m.prefill(toks[:, :4], st)
        before = be.cu.gemv_launches(0)
        m.step(toks[:, 4], st)               # recorded (captured) step: counts its launches
        launches.append(be.cu.gemv_launches(0) - before)
        outs.append(np.stack([np.asarray(m.step(toks[:, t], st)) for t in range(5, 24)]))
        assert m.backend.stats["replays"] > 0
    assert np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[0], outs[1])
    n_mamba = sum(t == "mamba" for t in cfg.layer_types)
    assert launches[1] - launches[0] == (n_mamba if B == 1 else 0)
