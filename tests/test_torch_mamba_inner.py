"""samba_ext.torch.mamba_inner_fn (skipped without torch): against mamba_inner_ref (plain
torch, written separately) in float64, forward and the gradients of every input, for
variable and fixed B/C, projection biases, RMS-normed B/C/delta and delta_softplus off;
checkpoint_lvl 0 and 1 agreeing; torch.autograd.gradcheck on a tiny case; the refused
arguments.

Tolerances. mamba_inner_fn runs the convolution and the scan in float32 (the C kernels)
between float64 projections; the reference is float64 throughout. The outputs and gradients
then carry float32 rounding of the scan's sums (<= L * d_state = 40 terms of O(1)) passed
through O(1)-conditioned projections: measured <= 3e-6 relative (the largest with
delta_softplus off, where negative deltas let the states grow), so rtol 3e-5 (relative
norm) leaves a ~10x margin and still fails on a wrong slice, bias or norm (O(1e-1) errors). gradcheck:
with float32 kernels the finite differences (step eps) see ~1e-7 |y| / eps of rounding
besides O(eps^2) truncation: eps 1e-3 gives ~1e-4, so atol = rtol = 3e-3 (as in
test_grad_torch.py), a ~30x margin that a wrong gradient term (O(1e-1)) does not pass.
checkpoint_lvl 1 recomputes the same deterministic float32 kernels on the same inputs, so
its gradients equal level 0's exactly.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
import samba_ext.torch as st  # noqa: E402

RTOL = 3e-5
GC = dict(eps=1e-3, atol=3e-3, rtol=3e-3)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny calls: a second OpenMP thread per call costs more than the work."""
    import samba_ext
    old = samba_ext.get_num_threads()
    samba_ext.set_num_threads(1)
    yield
    samba_ext.set_num_threads(old)


def t64(rng, *shape, scale=1.0):
    return torch.tensor(rng.standard_normal(shape) * scale, dtype=torch.float64,
                        requires_grad=True)


def inputs(rng, nb=2, d=6, L=10, n=4, rank=2, width=4, e=5, opts=()):
    """Mamba-1 mixer weights and xz; opts picks the optional arguments."""
    rows = rank + n * (("fixed_B" not in opts) + ("fixed_C" not in opts))
    a = dict(xz=t64(rng, nb, 2 * d, L), conv1d_weight=t64(rng, d, 1, width, scale=0.5),
             conv1d_bias=t64(rng, d, scale=0.3), x_proj_weight=t64(rng, rows, d, scale=0.4),
             delta_proj_weight=t64(rng, d, rank, scale=0.5),
             out_proj_weight=t64(rng, e, d, scale=0.4),
             out_proj_bias=t64(rng, e) if "out_bias" in opts else None,
             A=(-torch.exp(torch.tensor(rng.standard_normal((d, n)) * 0.5))).requires_grad_(),
             D=t64(rng, d) if "D" in opts else None,
             delta_bias=t64(rng, d, scale=0.3) if "delta_bias" in opts else None)
    if "fixed_B" in opts:
        a["B"] = t64(rng, d, n)
    if "fixed_C" in opts:
        a["C"] = t64(rng, nb, n, L)
    if "proj_bias" in opts:
        a["B_proj_bias"], a["C_proj_bias"] = t64(rng, n), t64(rng, n)
    if "rms" in opts:
        a["b_rms_weight"], a["c_rms_weight"] = t64(rng, n), t64(rng, n)
        a["dt_rms_weight"] = t64(rng, d)
    return a


def leaves(a):
    return {k: v for k, v in a.items() if isinstance(v, torch.Tensor)}


def grads(fn, a, dout, **kw):
    """Output and the gradients of every tensor input (fresh leaves per call)."""
    a = {k: v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v
         for k, v in a.items()}
    out = fn(**a, **kw)
    out.backward(dout)
    return out.detach(), {k: v.grad for k, v in leaves(a).items()}


@pytest.mark.parametrize("opts,softplus", [
    (("D", "delta_bias", "out_bias", "proj_bias"), True),
    (("D", "fixed_B"), True),
    (("fixed_C", "delta_bias", "out_bias"), True),
    (("D", "rms", "out_bias"), True),
    (("D", "delta_bias"), False),
])
def test_matches_reference(rng, opts, softplus):
    a = inputs(rng, opts=opts)
    dout = torch.tensor(rng.standard_normal((2, 10, 5)))
    out, g = grads(st.mamba_inner_fn, a, dout, delta_softplus=softplus)
    ref, gr = grads(st.mamba_inner_ref, a, dout, delta_softplus=softplus)
    assert out.dtype == torch.float64 and out.shape == (2, 10, 5)
    assert_close(out.numpy(), ref.numpy(), RTOL, "out")
    for k in g:
        assert g[k] is not None, k
        assert_close(g[k].numpy(), gr[k].numpy(), RTOL, "d" + k)


def test_checkpoint_levels_agree(rng):
    a = inputs(rng, opts=("D", "delta_bias", "out_bias", "rms"))
    dout = torch.tensor(rng.standard_normal((2, 10, 5)))
    out0, g0 = grads(st.mamba_inner_fn, a, dout, checkpoint_lvl=0)
    out1, g1 = grads(st.mamba_inner_fn, a, dout, checkpoint_lvl=1)
    assert torch.equal(out0, out1)
    for k in g0:
        assert torch.equal(g0[k], g1[k]), k
    with torch.no_grad():               # no autograd: the plain forward, same values
        assert torch.equal(st.mamba_inner_fn(**a), out1)


def test_gradcheck(rng):
    a = inputs(rng, nb=1, d=2, L=4, n=2, rank=1, width=3, e=2,
               opts=("D", "delta_bias", "out_bias", "proj_bias"))
    names = list(leaves(a))

    def f(*ts):
        return st.mamba_inner_fn(**dict(a, **dict(zip(names, ts))))
    assert torch.autograd.gradcheck(f, tuple(a[k] for k in names), **GC)


def test_dtype(rng):
    a = {k: v.detach().float() if isinstance(v, torch.Tensor) else v
         for k, v in inputs(rng, opts=("D",)).items()}
    out = st.mamba_inner_fn(**a)
    assert out.dtype == torch.float32 and out.shape == (2, 10, 5)


def test_refused_arguments(rng):
    a = {k: v.detach() if isinstance(v, torch.Tensor) else v
         for k, v in inputs(rng, opts=("D",)).items()}
    n, d = a["A"].shape[1], a["A"].shape[0]
    for fn in (st.mamba_inner_fn, st.mamba_inner_ref):
        with pytest.raises(NotImplementedError, match="A"):
            fn(**dict(a, A=a["A"].to(torch.complex128)))
        with pytest.raises(NotImplementedError, match="B_proj_bias"):
            fn(**dict(a, B=torch.ones(d, n), B_proj_bias=torch.ones(n)))
        with pytest.raises(NotImplementedError, match="c_rms_weight"):
            fn(**dict(a, C=torch.ones(d, n), c_rms_weight=torch.ones(n)))
        with pytest.raises(ValueError, match="conv1d_weight"):
            fn(**dict(a, conv1d_weight=a["conv1d_weight"][:, 0]))
        with pytest.raises(ValueError, match="x_proj_weight"):
            fn(**dict(a, x_proj_weight=a["x_proj_weight"][:3]))
        with pytest.raises(ValueError, match="dt_rms_weight"):
            fn(**dict(a, dt_rms_weight=torch.ones(d + 1)))
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        st.mamba_inner_fn(**a, checkpoint_lvl=2)
