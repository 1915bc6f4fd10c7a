"""The public API with NumPy inputs on both backends (``backend`` fixture: "cpu" and
"cuda"; the CUDA case skips cleanly without a GPU): device="cuda" copies in, computes on
the GPU and returns float32 NumPy arrays, writes in-place NumPy states back, and honours a
NumPy out=. Tolerance 1e-5: float32 arithmetic on float32-representable inputs.
"""
from __future__ import annotations

import numpy as np
from conftest import assert_close
from ref_attention import ref_swa_attention
from ref_scan import selective_scan_ref, selective_state_update_ref
from ref_small import causal_conv1d as conv_ref
from ref_small import rms_norm as rms_ref
from ref_small import rotary as rotary_ref
from ref_small import swiglu as swiglu_ref

import samba_ext

def test_numpy_inputs_device_cuda_match_cpu(rng, backend):
    """device='cuda' with NumPy inputs returns NumPy float32 like the CPU path."""
    batch, dim, L, N = 2, 6, 11, 16
    r = dict(u=rng.standard_normal((batch, dim, L)), delta=rng.uniform(-3, 1, (batch, dim, L)),
             A=-np.exp(rng.uniform(-1, 1, (dim, N))), B=rng.standard_normal((batch, N, L)),
             C=rng.standard_normal((batch, N, L)), D=rng.standard_normal(dim),
             z=rng.standard_normal((batch, dim, L)), delta_bias=rng.uniform(-0.5, 0.5, dim),
             initial_state=rng.standard_normal((batch, dim, N)))
    r = {k: v.astype(np.float32).astype(np.float64) for k, v in r.items()}
    f32 = {k: v.astype(np.float32) for k, v in r.items()}
    y, h = samba_ext.selective_scan(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"],
                                    f32["D"], f32["z"], f32["delta_bias"], True,
                                    f32["initial_state"], True, device=backend)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    y_ref, h_ref = selective_scan_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"],
                                      r["z"], r["delta_bias"], True, r["initial_state"], True)
    assert_close(y, y_ref, 1e-5)
    assert_close(h, h_ref, 1e-5)
    # in-place NumPy states are written back
    state = f32["initial_state"].copy()
    y1 = samba_ext.selective_state_update(state, f32["u"][:, :, 0], f32["delta"][:, :, 0],
                                          f32["A"], f32["B"][..., 0], f32["C"][..., 0],
                                          f32["D"], None, f32["delta_bias"], True,
                                          device=backend)
    y1_ref, s1_ref = selective_state_update_ref(f32["initial_state"], f32["u"][:, :, 0],
                                                f32["delta"][:, :, 0], f32["A"],
                                                f32["B"][..., 0], f32["C"][..., 0], f32["D"],
                                                None, f32["delta_bias"], True)
    assert_close(y1, y1_ref, 1e-5)
    assert_close(state, s1_ref, 1e-5)
    cs = rng.standard_normal((batch, dim, 3)).astype(np.float32)
    w = rng.standard_normal((dim, 4)).astype(np.float32)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    yc_ref, cs_ref = conv_ref(x[:, :, None], w, None, None, cs)
    yc = samba_ext.causal_conv1d_update(x, cs, w, device=backend)
    assert_close(yc, yc_ref[:, :, 0], 1e-5)
    assert_close(cs, cs_ref, 1e-6)
    q = rng.standard_normal((1, 20, 2, 32)).astype(np.float32)
    out = np.full((1, 20, 2, 32), np.nan, np.float32)
    res = samba_ext.swa_attention(q, q, q, 5, out=out, device=backend)
    assert res is out
    assert_close(out, ref_swa_attention(q, q, q, 5), 1e-5)
    g = rng.standard_normal((4, 8))
    assert_close(samba_ext.swiglu(g, g, device=backend), swiglu_ref(g, g), 1e-5)
    xn = rng.standard_normal((3, 16))
    yn, sn = samba_ext.rms_norm(xn, np.ones(16), 1e-5, residual=xn, device=backend)
    assert_close(yn, rms_ref(xn, np.ones(16), 1e-5, xn)[0], 1e-5)
    assert_close(sn, 2 * xn, 1e-6)
    xr = rng.standard_normal((1, 4, 2, 8))
    assert_close(samba_ext.apply_rotary(xr, 7, device=backend),
                 rotary_ref(xr, np.arange(7, 11)[None], 10000.0), 1e-5)
