"""Gradients of RMSNorm (+ residual), SwiGLU and rotary (samba_ext.grad, C kernels
norm_bwd.c, swiglu_bwd.c, rotary_bwd.c).

Finite differences of the float64 forwards (ref_small.py) on tiny shapes against the C
gradients and the analytic references (ref_grad.py), then the C gradients against the
references on more shapes.

Tolerances (relative norm; inputs float32-rounded first): SwiGLU and rotary are
elementwise with a few float32 roundings plus the kernels' exp/cos/sin (~1e-7 relative):
rtol 2e-6. RMSNorm: row sums of n float32 products and dweight sums over all rows
(~sqrt(rows) x 6e-8 relative), measured <= 2e-7: rtol 1e-5. Each is >= 10x the measured
error and far below a wrong term (>= 1e-3). NaN/Inf never pass.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from ref_grad import num_grad, r32, rms_norm_bwd_ref, rotary_bwd_ref, swiglu_bwd_ref
from ref_small import rms_norm, rotary, swiglu
from samba_ext import grad


@pytest.mark.parametrize("with_res", [False, True])
def test_rms_norm_finite_differences(rng, with_res):
    x = r32(rng.standard_normal((3, 6)))
    inp = dict(x=x, weight=r32(rng.standard_normal(6)))
    if with_res:
        inp["residual"] = r32(rng.standard_normal((3, 6)))
    dy = r32(rng.standard_normal((3, 6)))
    dro = r32(rng.standard_normal((3, 6))) if with_res else None
    eps = 1e-3
    got = grad.rms_norm_bwd(**inp, eps=eps, dy=dy, dresidual_out=dro)
    ref = rms_norm_bwd_ref(**inp, eps=eps, dy=dy, dresidual_out=dro)

    def f(i):
        y, s = rms_norm(i["x"], i["weight"], eps, i.get("residual"))
        return [y, s] if with_res else [y]
    douts = [dy, dro] if with_res else [dy]
    work = {k: v.copy() for k, v in inp.items()}
    for k in inp:
        fd = num_grad(f, work, k, douts)
        assert_close(ref["d" + k], fd, 1e-6, f"reference d{k}")
        assert_close(getattr(got, "d" + k), fd, 1e-5, f"kernel d{k}")
    if not with_res:
        assert got.dresidual is None


# n = 1 with a small eps is ill-conditioned in any float32 implementation: dx is
# w dy r eps / (x^2 + eps), the difference of two terms eps / x^2 times larger; it is tested
# with eps = 1, where it is not.
@pytest.mark.parametrize("shape,eps", [((1,), 1.0), ((5, 7), 1e-5), ((2, 3, 64), 1e-5),
                                       ((4, 300), 1e-6), ((65, 1024), 1e-5)])
def test_rms_norm_reference(rng, shape, eps):
    x = r32(rng.standard_normal(shape) * 3)
    w = r32(rng.standard_normal(shape[-1]))
    res = r32(rng.standard_normal(shape))
    dy = r32(rng.standard_normal(shape))
    dro = r32(rng.standard_normal(shape))
    got = grad.rms_norm_bwd(x, w, eps, res, dy=dy, dresidual_out=dro)
    ref = rms_norm_bwd_ref(x, w, eps, res, dy, dro)
    for k in ("dx", "dweight", "dresidual"):
        assert_close(getattr(got, k), ref[k], 1e-5, k)
    assert got.dresidual is got.dx  # one gradient for both addends of x + residual
    got = grad.rms_norm_bwd(x, w, eps, dy=dy)
    ref = rms_norm_bwd_ref(x, w, eps, None, dy)
    assert_close(got.dx, ref["dx"], 1e-5, "dx (no residual)")
    assert_close(got.dweight, ref["dweight"], 1e-5, "dweight (no residual)")


def test_swiglu_finite_differences(rng):
    inp = dict(gate=r32(rng.standard_normal((3, 5)) * 3), up=r32(rng.standard_normal((3, 5))))
    dy = r32(rng.standard_normal((3, 5)))
    dg, du = grad.swiglu_bwd(**inp, dy=dy)
    ref = swiglu_bwd_ref(**inp, dy=dy)
    work = {k: v.copy() for k, v in inp.items()}
    for k, got in (("gate", dg), ("up", du)):
        fd = num_grad(lambda i: [swiglu(i["gate"], i["up"])], work, k, [dy])
        assert_close(ref["d" + k], fd, 1e-6, f"reference d{k}")
        assert_close(got, fd, 2e-6, f"kernel d{k}")


@pytest.mark.parametrize("shape", [(1,), (7, 33), (3, 100, 129), (1 << 17,)])
def test_swiglu_reference(rng, shape):
    g = r32(rng.standard_normal(shape) * 4)
    u = r32(rng.standard_normal(shape))
    dy = r32(rng.standard_normal(shape))
    dg, du = grad.swiglu_bwd(g, u, dy=dy)
    ref = swiglu_bwd_ref(g, u, dy)
    assert_close(dg, ref["dgate"], 2e-6, "dgate")
    assert_close(du, ref["dup"], 2e-6, "dup")


def test_rotary_finite_differences(rng):
    x = r32(rng.standard_normal((2, 3, 2, 6)))
    pos = rng.integers(0, 50, (2, 3))
    dy = r32(rng.standard_normal(x.shape))
    got = grad.apply_rotary_bwd(x, pos, 500.0, dy=dy)
    fd = num_grad(lambda i: [rotary(i["x"], pos, 500.0)], {"x": x.copy()}, "x", [dy])
    assert_close(rotary_bwd_ref(dy, pos, 500.0), fd, 1e-6, "reference dx")
    assert_close(got, fd, 2e-6, "kernel dx")


@pytest.mark.parametrize("B,L,H,hd,positions", [
    (1, 1, 1, 2, 0), (2, 7, 3, 64, 5), (1, 130, 2, 128, "array"), (3, 9, 4, 96, "batch"),
    (1, 4, 1, 256, 10**6)])
def test_rotary_reference(rng, B, L, H, hd, positions):
    dy = r32(rng.standard_normal((B, L, H, hd)))
    if positions == "array":
        pos_arg = rng.integers(0, 4096, L)
        pos = np.broadcast_to(pos_arg, (B, L))
    elif positions == "batch":
        pos_arg = pos = rng.integers(0, 4096, (B, L))
    else:
        pos_arg = positions
        pos = np.broadcast_to(np.arange(L) + positions, (B, L))
    got = grad.apply_rotary_bwd(None, pos_arg, dy=dy)
    assert_close(got, rotary_bwd_ref(dy, pos), 2e-6, "dx")
