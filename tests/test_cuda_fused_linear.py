"""The products of csrc/cuda/fused_gemm.cu: samba_ext.cuda.blas.rms_norm_linear, y =
rms_norm(x [+ residual]) @ W^T, and swiglu_linear, y = (silu(gate) * up) @ W^T. One row with
the GEMV on runs one kernel (gemv.cu's gemv_row_kernel with the elementwise step as its
prologue, computed by every block); every other call runs the elementwise kernel and then the
product.

The fused kernels compute the elementwise step with norm.cu's / swiglu.cu's arithmetic (and,
for the norm, its summation order) and then run the one-row product of the unfused path, so
against ``ops.rms_norm`` / ``ops.swiglu`` (into W's dtype) followed by ``blas.linear`` on the
same inputs they must agree bit for bit: y and x + residual. The unfused pairs are themselves
checked against float64 (tests/test_cuda_gemv.py and the kernel tests), and here y is also
compared with a float64 product of the rounded rows (tolerance of test_cuda_gemv.py: float32
accumulation and one rounding of the output).
"""
from __future__ import annotations

import numpy as np
import pytest
from cuda_util import host, needs_cuda, round_to

pytestmark = needs_cuda

TOL = {"float32": 3e-5, "float16": 2e-3 + 3e-5, "bfloat16": 1e-2 + 3e-5}


@pytest.fixture
def cu(gemv_on):
    """conftest's gemv_on under a short name: the extension, the GEMV on, modes restored."""
    return gemv_on


def _inputs(rng, M, K, N, dt, xdt, res):
    from samba_ext.cuda import to_device

    x = rng.standard_normal((M, K)) * 2.0
    r = rng.standard_normal((M, K)) if res else None
    nw = 1.0 + 0.1 * rng.standard_normal(K)
    w = round_to(rng.standard_normal((N, K)), dt)
    d = {"x": to_device(x.astype(np.float32), xdt),
         "r": None if r is None else to_device(r.astype(np.float32), "float32"),
         "nw": to_device(nw.astype(np.float32), dt),
         "w": to_device(w.astype(np.float32), dt)}
    return d, w


def _both(cu, d, dt, od, eps=1e-5):
    """(fused y, fused x + residual), (unfused y, unfused sum), fused kernel launches."""
    from samba_ext.cuda import ops
    from samba_ext.cuda.array import DeviceArray
    from samba_ext.cuda.blas import linear, rms_norm_linear

    before = cu.gemv_launches(1)
    got = rms_norm_linear(d["x"], d["nw"], d["w"], d["r"], eps=eps, out_dtype=od)
    cu.device_sync()
    fused = cu.gemv_launches(1) - before
    xn = DeviceArray.empty(d["x"].shape, dt)
    if d["r"] is None:
        ops.rms_norm(d["x"], d["nw"], eps, out=xn)
        ref = linear(xn, d["w"], out_dtype=od)
        return (got, None), (ref, None), xn, fused
    _, s = ops.rms_norm(d["x"], d["nw"], eps, d["r"], out=xn)
    ref = linear(xn, d["w"], out_dtype=od)
    return got, (ref, s), xn, fused


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("K,N", [(64, 7), (96, 160), (2048, 2048), (2056, 33), (4096, 160),
                                 (8192, 2048), (8200, 5)])
def test_rms_norm_linear_matches_the_unfused_pair(cu, rng, dt, M, K, N):
    """K 64 / 96: fewer chunks than threads; 2048: one chunk of 8 per thread (samba-1.7b);
    2056 / 4096 / 8192: 2 and 4 chunks per thread; 8200: more than 4, not fused. Half of the
    cases without a residual, x in float32 (the first block's input) or W's dtype."""
    fuses = M == 1 and K <= 8192
    for xdt, res, od in ((dt, True, dt), ("float32", False, dt), ("float32", True, "float32")):
        d, w = _inputs(rng, M, K, N, dt, xdt, res)
        (y, s), (yr, sr), xn, fused = _both(cu, d, dt, od)
        what = (dt, M, K, N, xdt, res, od)
        assert fused == int(fuses), what
        yh, yrh = host(y), host(yr)
        assert np.isfinite(yh).all(), what
        np.testing.assert_array_equal(yh, yrh, err_msg=str(what))
        if res:
            np.testing.assert_array_equal(host(s), host(sr), err_msg=str(what))
        a = host(xn).astype(np.float64)
        ref = a @ w.T
        den = max(np.linalg.norm(ref), np.linalg.norm(np.abs(a) @ np.abs(w).T) / np.sqrt(K))
        assert np.linalg.norm(yh - ref) / den <= TOL[od], what


def test_rms_norm_linear_unaligned_and_off_run_apart(cu, rng):
    """x one element into its buffer (not 16-byte aligned): norm.cu's kernel (a narrower
    vector width, so another summation order for the mean square) and the product; with the
    GEMV off, cuBLAS. Neither fuses; both match float64 (twice the bf16 tolerance: the
    normalised rows may round differently than the reference's in a few elements)."""
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import rms_norm_linear

    K, N, dt = 256, 64, "bfloat16"
    d, w = _inputs(rng, 1, K, N, dt, dt, True)
    buf = to_device(np.concatenate([[0.0], host(d["x"]).ravel()]).astype(np.float32), dt)
    d_un = dict(d, x=buf[1:].reshape(1, K))
    before = cu.gemv_launches(1)
    y1, s1 = rms_norm_linear(d_un["x"], d["nw"], d["w"], d["r"])
    y2, s2 = rms_norm_linear(d["x"], d["nw"], d["w"], d["r"])
    cu.device_sync()
    assert cu.gemv_launches(1) - before == 1   # only the aligned call fused
    np.testing.assert_array_equal(host(s1), host(s2))
    cu.gemv_mode(0)
    before = cu.gemv_launches(1)
    y3, _ = rms_norm_linear(d["x"], d["nw"], d["w"], d["r"])
    cu.device_sync()
    assert cu.gemv_launches(1) == before
    a = round_to(host(s2), "float32")
    ms = np.mean(a.astype(np.float64) ** 2, axis=-1, keepdims=True)
    n = round_to(a / np.sqrt(ms + 1e-5) * host(d["nw"]), dt)
    ref = n @ w.T
    den = max(np.linalg.norm(ref), np.linalg.norm(np.abs(n) @ np.abs(w).T) / np.sqrt(K))
    for y in (y1, y2, y3):
        assert np.linalg.norm(host(y) - ref) / den <= 2 * TOL[dt]


@pytest.mark.parametrize("bad,match", [
    (dict(weight=np.zeros((4, 8), np.float32)), "weight: expected float16 or bfloat16"),
    (dict(norm_weight=np.ones(7, np.float32)), "norm_weight"),
    (dict(residual=np.zeros((1, 9), np.float32)), "residual"),
    (dict(x=np.zeros((1, 9), np.float32)), "x: last dimension")])
def test_rms_norm_linear_rejects_bad_arguments(cu, bad, match):
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import rms_norm_linear

    args = dict(x=to_device(np.zeros((1, 8), np.float32), "bfloat16"),
                norm_weight=np.ones(8, np.float32), residual=None,
                weight=to_device(np.zeros((4, 8), np.float32), "bfloat16"))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        rms_norm_linear(args["x"], args["norm_weight"], args["weight"], args["residual"])


@pytest.mark.parametrize("B", [1, 2])
def test_model_decode_fused_equals_apart(cu, rng, monkeypatch, B):
    """A tiny bf16 CUDA model decoding with graphs, GEMV on: the pre-norms and SwiGLUs fused
    into the products (default) against SAMBA_EXT_GEMV_FUSE=0 (apart): the same logits bit
    for bit, and at batch 1 both fused kernels ran."""
    import dataclasses

    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.model import Samba

    cfg = dataclasses.replace(SambaConfig.preset("samba-test"),
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (B, 12))
    outs, fused, fused_mlp = [], [], []
    for env in ("1", "0"):
        monkeypatch.setenv("SAMBA_EXT_GEMV_FUSE", env)
        before, before_mlp = cu.gemv_launches(1), cu.gemv_launches(2)
        m = Samba(cfg, seed=6, device=CUDABackend(act_dtype="bfloat16",
                                                  weight_dtype="bfloat16", graphs=True))
        st = m.new_state(B)
        m.prefill(toks[:, :4], st)
        outs.append(np.stack([np.asarray(m.step(toks[:, t], st)) for t in range(4, 12)]))
        fused.append(cu.gemv_launches(1) - before)
        fused_mlp.append(cu.gemv_launches(2) - before_mlp)
        assert m.backend.stats["replays"] > 0
    # graphs replay without calling the dispatch again: count the eager / captured steps only
    assert (fused[0] > 0) == (B == 1) and fused[1] == 0, fused
    assert (fused_mlp[0] > 0) == (B == 1) and fused_mlp[1] == 0, fused_mlp
    assert np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("K,N", [(64, 7), (2056, 160), (8192, 2048), (8200, 33)])
def test_swiglu_linear_matches_the_unfused_pair(cu, rng, dt, M, K, N):
    """gate and up as the two halves of one (M, 2K) array (the decode step's layout); K 8192:
    the largest row the fused kernel holds (samba-1.7b's MLP); 8200: apart. Inputs scaled so
    that silu sees both signs and large values."""
    from samba_ext.cuda import ops, to_device
    from samba_ext.cuda.array import DeviceArray
    from samba_ext.cuda.blas import linear, swiglu_linear

    fuses = M == 1 and K <= 8192
    gu = to_device((3.0 * rng.standard_normal((M, 2 * K))).astype(np.float32), dt)
    w = round_to(rng.standard_normal((N, K)), dt)
    wd = to_device(w.astype(np.float32), dt)
    g, u = gu[:, :K], gu[:, K:]
    for od in (dt, "float32"):
        before = cu.gemv_launches(2)
        y = swiglu_linear(g, u, wd, out_dtype=od)
        cu.device_sync()
        assert cu.gemv_launches(2) - before == int(fuses), (dt, M, K, N, od)
        h = DeviceArray.empty((M, K), dt)
        ops.swiglu(g, u, out=h)
        yr = linear(h, wd, out_dtype=od)
        yh = host(y)
        assert np.isfinite(yh).all()
        np.testing.assert_array_equal(yh, host(yr), err_msg=str((dt, M, K, N, od)))
        a = host(h).astype(np.float64)
        ref = a @ w.T
        den = max(np.linalg.norm(ref), np.linalg.norm(np.abs(a) @ np.abs(w).T) / np.sqrt(K))
        assert np.linalg.norm(yh - ref) / den <= TOL[od]


def test_swiglu_linear_rejects_bad_arguments(cu):
    from samba_ext.cuda import to_device
    from samba_ext.cuda.blas import swiglu_linear

    g = to_device(np.zeros((1, 8), np.float32), "bfloat16")
    w = to_device(np.zeros((4, 8), np.float32), "bfloat16")
    with pytest.raises(ValueError, match="up"):
        swiglu_linear(g, to_device(np.zeros((1, 9), np.float32), "bfloat16"), w)
    with pytest.raises(ValueError, match="gate: last dimension"):
        swiglu_linear(to_device(np.zeros((1, 9), np.float32), "bfloat16"), g, w)
    with pytest.raises(TypeError, match="weight: expected float16 or bfloat16"):
        swiglu_linear(g, g, to_device(np.zeros((4, 8), np.float32)))
