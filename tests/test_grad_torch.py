"""samba_ext.torch (skipped without torch): autograd of the peers' functions.

torch.autograd.gradcheck in float64 on small CPU shapes, the gradients against the float64
references (ref_grad.py) through torch autograd, the op registrations with
torch.library.opcheck (schema, fake tensors, autograd), and the arguments that are
not supported raising NotImplementedError.

Tolerances. The kernels compute in float32 even for float64 tensors, so gradcheck's finite
differences (step eps) see float32 rounding of the outputs, ~1e-7 |y| / eps, besides the
O(eps^2) truncation: with eps = 1e-3 that is ~1e-4 for O(1) values; atol = rtol = 3e-3
leaves a margin of ~30x and still fails on a wrong gradient term (errors of O(1e-1..1)).
Against the float64 references the gradients carry only float32 rounding (measured
<= 5e-7 relative norm in test_grad_*.py): rtol 1e-5, as there.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
from ref_grad import attention_bwd_ref, causal_conv1d_bwd_ref, selective_scan_bwd_ref  # noqa: E402
import samba_ext.torch as st  # noqa: E402

GC = dict(eps=1e-3, atol=3e-3, rtol=3e-3)


@pytest.fixture(autouse=True)
def one_thread():
    """gradcheck makes hundreds of tiny calls; on a loaded 2-core machine waking a second
    OpenMP thread per call costs more than the work."""
    import samba_ext
    old = samba_ext.get_num_threads()
    samba_ext.set_num_threads(1)
    yield
    samba_ext.set_num_threads(old)


def t64(rng, *shape, scale=1.0, shift=0.0):
    return torch.tensor(rng.standard_normal(shape) * scale + shift, dtype=torch.float64,
                        requires_grad=True)


def scan_inputs(rng, b=2, d=4, L=7, N=3, G=2):
    return dict(u=t64(rng, b, d, L), delta=t64(rng, b, d, L, scale=0.5),
                A=(-torch.exp(torch.tensor(rng.standard_normal((d, N)) * 0.5))).requires_grad_(),
                B=t64(rng, b, G, N, L), C=t64(rng, b, G, N, L), D=t64(rng, d),
                z=t64(rng, b, d, L), delta_bias=t64(rng, d, scale=0.3))


def test_selective_scan_gradcheck(rng):
    inp = scan_inputs(rng, b=1, d=2, L=5, N=2, G=2)
    names = list(inp)

    def f(*args):
        y, last = st.selective_scan_fn(*args, delta_softplus=True, return_last_state=True)
        return y, last.double()
    assert torch.autograd.gradcheck(f, tuple(inp[n] for n in names), **GC)


def test_selective_scan_matches_reference(rng):
    inp = scan_inputs(rng, b=2, d=6, L=70, N=4, G=3)
    y, last = st.selective_scan_fn(**inp, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float64 and last.dtype == torch.float32
    dy = torch.tensor(rng.standard_normal(y.shape))
    dl = torch.tensor(rng.standard_normal(last.shape), dtype=torch.float32)
    torch.autograd.backward([y, last], [dy, dl])
    ref = selective_scan_bwd_ref(**{k: v.detach().float().double().numpy()
                                    for k, v in inp.items()}, delta_softplus=True,
                                 dout=dy.float().double().numpy(), dlast_state=dl.numpy())
    for k, v in inp.items():
        assert_close(v.grad.numpy(), ref["d" + k], 1e-5, "d" + k)
    yr = st.selective_scan_ref(**{k: v.detach() for k, v in inp.items()}, delta_softplus=True)
    assert_close(y.detach().numpy(), yr.numpy(), 1e-5, "selective_scan_fn vs _ref")


def _scan_time_invariant_ref(u, delta, A, B, C):
    """Plain float64 recurrence with mamba_ssm's non-variable B/C: a 2-D B or C is
    (dim, dstate), channel d using B[d] at every step; else (batch, [G,] dstate, L)."""
    b, d, L = u.shape

    def at(m, t):                                  # -> (batch, dim, dstate) at step t
        if m.dim() == 2:
            return m[None].expand(b, d, m.shape[1])
        if m.dim() == 3:                           # (batch, dstate, L): one group
            m = m[:, None]
        return m[..., t].repeat_interleave(d // m.shape[1], dim=1)
    x = u.new_zeros((b, d, A.shape[1]))
    ys = []
    for t in range(L):
        x = torch.exp(delta[:, :, t, None] * A) * x + \
            (delta[:, :, t] * u[:, :, t])[:, :, None] * at(B, t)
        ys.append((x * at(C, t)).sum(-1))
    return torch.stack(ys, dim=2)


@pytest.mark.parametrize("which", ["B", "C", "BC"])
def test_selective_scan_time_invariant_B_C(rng, which):
    """B and/or C of shape (dim, dstate) (run as ngroups = dim): output and the gradients
    (summed back to (dim, dstate)) against autograd of the float64 recurrence; rtol 1e-5
    (float32 kernels, as above)."""
    b, d, L, N = 2, 6, 9, 4
    u, delta = t64(rng, b, d, L), t64(rng, b, d, L, scale=0.3, shift=0.5)
    A = (-torch.exp(torch.tensor(rng.standard_normal((d, N)) * 0.5))).requires_grad_()
    B = t64(rng, d, N) if "B" in which else t64(rng, b, 3, N, L)
    C = t64(rng, d, N) if "C" in which else t64(rng, b, N, L)
    ins = (u, delta, A, B, C)
    y = st.selective_scan_fn(*ins)
    yr = _scan_time_invariant_ref(*ins)
    assert y.shape == (b, d, L)
    assert_close(y.detach().numpy(), yr.detach().numpy(), 1e-5, "y")
    dy = torch.tensor(rng.standard_normal(y.shape))
    g = torch.autograd.grad(y, ins, dy)
    gr = torch.autograd.grad(yr, ins, dy)
    for name, a, r, x in zip("u delta A B C".split(), g, gr, ins):
        assert a.shape == x.shape, name
        assert_close(a.numpy(), r.numpy(), 1e-5, "d" + name)
    ys = st.selective_scan_ref(*(t.detach() for t in ins))
    assert_close(ys.numpy(), yr.detach().numpy(), 1e-12, "selective_scan_ref")


def test_selective_scan_time_invariant_B_gradcheck(rng):
    inp = (t64(rng, 1, 3, 4), t64(rng, 1, 3, 4, scale=0.3, shift=0.5),
           (-torch.exp(torch.tensor(rng.standard_normal((3, 2)) * 0.5))).requires_grad_(),
           t64(rng, 3, 2), t64(rng, 3, 2))
    assert torch.autograd.gradcheck(lambda *a: st.selective_scan_fn(*a), inp, **GC)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_gradcheck(rng, activation):
    x, w, b, init = t64(rng, 2, 3, 6), t64(rng, 3, 4), t64(rng, 3), t64(rng, 2, 3, 3)

    def f(x, w, b, init):
        y, fin = st.causal_conv1d_fn(x, w, b, None, init, True, None, activation)
        return y, fin
    assert torch.autograd.gradcheck(f, (x, w, b, init), **GC)
    y = st.causal_conv1d_fn(x, w, b, activation=activation, initial_states=init)
    dy = torch.tensor(rng.standard_normal(y.shape))
    y.backward(dy)
    ref = causal_conv1d_bwd_ref(x.detach().float().double().numpy(),
                                w.detach().float().double().numpy(),
                                b.detach().float().double().numpy(), activation,
                                init.detach().float().double().numpy(),
                                dy.float().double().numpy())
    for name, t in (("dx", x), ("dweight", w), ("dbias", b), ("dinitial_states", init)):
        assert_close(t.grad.numpy(), ref[name], 1e-5, name)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_seq_idx_gradcheck(rng, activation):
    """Packed sequences (seq_idx, as causal-conv1d): gradcheck in float64, and against the
    same call on each sequence cut out and run alone."""
    x, w, b = t64(rng, 2, 3, 9), t64(rng, 3, 4), t64(rng, 3)
    seq = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1, 1]],
                       dtype=torch.int32)

    def f(x, w, b):
        return st.causal_conv1d_fn(x, w, b, seq, activation=activation)
    assert torch.autograd.gradcheck(f, (x, w, b), **GC)
    y = f(x, w, b)
    for r in range(2):
        for s in seq[r].unique():
            cols = (seq[r] == s).nonzero()[:, 0]
            alone = st.causal_conv1d_fn(x[r:r + 1, :, cols], w, b, activation=activation)
            assert torch.allclose(y[r:r + 1, :, cols], alone, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="seq_idx: packed sequences"):
        st.causal_conv1d_fn(x, w, b, seq, return_final_states=True)
    with pytest.raises(ValueError, match="seq_idx: packed sequences"):
        st.causal_conv1d_fn(x, w, b, seq, initial_states=t64(rng, 2, 3, 3))


def check_flash_attn_grads(rng, q, k, v, causal, window_size, softcap, alibi=None):
    """flash_attn_func's gradients of q, k, v (float64 tensors) by gradcheck and against the
    float64 reference (ALiBi slopes: the same bias there; the slopes get no gradient)."""
    def f(q, k, v):
        return st.flash_attn_func(q, k, v, causal=causal, window_size=window_size,
                                  softcap=softcap, alibi_slopes=alibi)
    assert torch.autograd.gradcheck(f, (q, k, v), **GC)
    out = f(q, k, v)
    do = torch.tensor(rng.standard_normal(out.shape))
    out.backward(do)
    left, right = window_size[0], 0 if causal else window_size[1]
    ref = attention_bwd_ref(*(t.detach().float().double().numpy() for t in (q, k, v)),
                            do.float().double().numpy(), 0.5, left, right, softcap,
                            None if alibi is None else alibi.numpy())
    for name, t in (("dq", q), ("dk", k), ("dv", v)):
        assert_close(t.grad.numpy(), ref[name], 1e-5, name)


@pytest.mark.parametrize("causal,window_size,softcap,hkv", [
    (True, (-1, -1), 0.0, 1), (False, (-1, -1), 0.0, 2), (True, (2, 0), 2.0, 1),
    (False, (1, 2), 0.0, 2)])
def test_flash_attn_gradcheck(rng, causal, window_size, softcap, hkv):
    q, k, v = t64(rng, 1, 5, 2, 4), t64(rng, 1, 6, hkv, 4), t64(rng, 1, 6, hkv, 4)
    check_flash_attn_grads(rng, q, k, v, causal, window_size, softcap)


@pytest.mark.parametrize("causal,window_size,softcap,per_batch", [
    (True, (-1, -1), 0.0, False), (False, (-1, -1), 0.0, True), (False, (1, 2), 2.0, True)])
def test_flash_attn_alibi_gradcheck(rng, causal, window_size, softcap, per_batch):
    """ALiBi slopes (nheads,) or (batch, nheads) as flash-attn."""
    q, k, v = t64(rng, 2, 5, 2, 4), t64(rng, 2, 6, 1, 4), t64(rng, 2, 6, 1, 4)
    al = torch.tensor([[0.5, 0.125], [0.25, 1.0]] if per_batch else [0.5, 0.125])
    check_flash_attn_grads(rng, q, k, v, causal, window_size, softcap, al)
    with pytest.raises(ValueError, match="alibi_slopes: expected shape"):
        st.flash_attn_func(q, k, v, alibi_slopes=torch.ones(3))
    with pytest.raises(TypeError, match="alibi_slopes"):
        st.flash_attn_func(q, k, v, alibi_slopes=[0.5, 0.5])


def test_dtypes_and_final_states_out(rng):
    x = torch.randn(1, 4, 9, dtype=torch.bfloat16)
    w = torch.randn(4, 3, dtype=torch.bfloat16)
    buf = torch.empty(1, 4, 2, dtype=torch.bfloat16)
    y, fin = st.causal_conv1d_fn(x, w, return_final_states=True, final_states_out=buf)
    assert y.dtype == torch.bfloat16 and fin is buf
    torch.testing.assert_close(buf, x[:, :, -2:])
    q = torch.randn(1, 3, 2, 8, dtype=torch.float16)
    assert st.flash_attn_func(q, q, q, causal=True).dtype == torch.float16


@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)),
                                           (False, (1, 0))])
def test_flash_attn_return_attn_probs(rng, causal, window):
    """return_attn_probs=True without dropout -> (out, softmax_lse, None) as flash-attn:
    out equal to the plain call's, lse (batch, nheads, Lq) float32 against the float64
    log-sum-exp of the masked scaled scores (float32 kernels: rtol 1e-5, as above), +inf for
    a query that sees no key (Lq > Lk, causal: bottom-right aligned), detached; gradients of
    out unchanged by it."""
    b, lq, lk, h, hkv, hd = 2, 6, 4, 4, 2, 8
    q, k, v = t64(rng, b, lq, h, hd), t64(rng, b, lk, hkv, hd), t64(rng, b, lk, hkv, hd)
    out, lse, s = st.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                     return_attn_probs=True)
    assert s is None and lse.dtype == torch.float32 and lse.shape == (b, h, lq)
    assert not lse.requires_grad
    plain = st.flash_attn_func(q, k, v, causal=causal, window_size=window)
    assert torch.equal(out, plain)
    kk = k.detach().repeat_interleave(h // hkv, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q.detach(), kk) / hd ** 0.5
    i = torch.arange(lq)[:, None] + lk - lq                # query i sits at key position i
    j = torch.arange(lk)[None, :]
    left, right = window[0], 0 if causal else window[1]
    seen = torch.ones(lq, lk, dtype=torch.bool)
    if left >= 0:
        seen &= j >= i - left
    if right >= 0:
        seen &= j <= i + right
    ref = torch.logsumexp(scores.masked_fill(~seen, float("-inf")), dim=-1)
    ref = torch.where(torch.isneginf(ref), float("inf"), ref)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isinf(lse), ~fin) and bool((lse[~fin] > 0).all())
    assert (~fin).any() == (causal or window != (-1, -1))  # the masked cases do mask a query
    assert_close(lse[fin].double().numpy(), ref[fin].numpy(), 1e-5, "softmax_lse")
    dy = torch.tensor(rng.standard_normal(out.shape))
    g = torch.autograd.grad(out, (q, k, v), dy)
    gp = torch.autograd.grad(plain, (q, k, v), dy)
    for a, r in zip(g, gp):
        assert torch.equal(a, r)


def test_flash_attn_deterministic_flag(rng):
    """deterministic=True goes through the op (and torch.compile's schema) to the backward:
    on the CPU both settings are the same deterministic kernel, so the gradients are equal
    bit for bit to the default call's and to a repeated call's."""
    b, lq, lk, h, hkv, hd = 2, 5, 9, 4, 2, 8
    q, k, v = t64(rng, b, lq, h, hd), t64(rng, b, lk, hkv, hd), t64(rng, b, lk, hkv, hd)
    dy = torch.tensor(rng.standard_normal((b, lq, h, hd)))
    grads = []
    for det in (True, True, False):
        out = st.flash_attn_func(q, k, v, causal=True, window_size=(3, 0), deterministic=det)
        grads.append(torch.autograd.grad(out, (q, k, v), dy))
    for g in grads[1:]:
        for a, r in zip(g, grads[0]):
            assert torch.equal(a, r)


def test_unsupported_arguments_raise():
    q = torch.randn(1, 3, 2, 8)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        st.flash_attn_func(q, q, q, dropout_p=0.1)
    x = torch.randn(1, 2, 5)
    with pytest.raises(NotImplementedError, match="complex"):
        st.selective_scan_fn(x, x, torch.ones(2, 3, dtype=torch.complex64), x, x)
    with pytest.raises(NotImplementedError, match="B: complex"):
        st.selective_scan_fn(x, x, -torch.ones(2, 3), torch.ones(2, 3, dtype=torch.complex64),
                             torch.ones(2, 3))
    with pytest.raises(ValueError, match="B: a time-invariant"):
        st.selective_scan_fn(x, x, -torch.ones(2, 3), torch.ones(4, 3), torch.ones(2, 3))


def test_bad_arguments_name_the_argument():
    """Arguments the peers check and samba_ext.torch let through or reported with another
    name: selective_scan_ref's shapes (it broadcast a wrong A) and complex A, its last state's
    dtype, causal_conv1d_fn's final_states_out, flash_attn_func's scalars and shapes."""
    u = torch.randn(1, 2, 4)
    A, Bm = -torch.rand(2, 3), torch.randn(1, 3, 4)
    for kw, exc, what in (({"A": A[:1]}, ValueError, "A: "), ({"D": torch.randn(3)}, ValueError,
                                                               "D: "),
                          ({"B": Bm[..., :3]}, ValueError, "B: "),
                          ({"A": A.to(torch.complex64)}, NotImplementedError, "A: complex")):
        args = {"A": A, "B": Bm, **kw}
        with pytest.raises(exc, match=what):
            st.selective_scan_ref(u, u, args.pop("A"), args.pop("B"), Bm, **args)
    _, last = st.selective_scan_ref(u.double(), u.double(), A.double(), Bm.double(), Bm.double(),
                                    return_last_state=True)
    assert last.dtype == torch.float64                   # as mamba_ssm's reference
    x, w = torch.randn(1, 3, 5), torch.randn(3, 4)
    for out, what in ((torch.zeros(4, 3, 3), "shape"),
                      (torch.zeros(1, 3, 3, dtype=torch.float16), "dtype")):
        with pytest.raises(ValueError, match=f"final_states_out: expected .*{what}"):
            st.causal_conv1d_fn(x, w, return_final_states=True, final_states_out=out)
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)
    for kw, what in (({"window_size": (1.9, 0)}, r"window_size\[0\]"),
                     ({"window_size": (1, 1, 1)}, "window_size"),
                     ({"softmax_scale": "a"}, "softmax_scale")):
        with pytest.raises(TypeError, match=what):
            st.flash_attn_func(q, k, k, **kw)
    with pytest.raises(ValueError, match="q: headdim"):
        st.flash_attn_func(q[..., :0], k[..., :0], k[..., :0])
    with pytest.raises(ValueError, match="k: expected shape\\[3\\] == 8"):  # not "v"
        st.flash_attn_func(q, k[..., :4], k)


def test_opcheck(rng):
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    from samba_ext.torch import _ops
    # schema, fake (meta) implementation and autograd registration; the AOT-dispatch checks
    # (a torch.compile trace per op, ~seconds each on 2 cores) are left to torch.compile users
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    inp = {k: v.detach().float().requires_grad_() for k, v in scan_inputs(rng).items()}
    opcheck(_ops.selective_scan_op, (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"],
                                     inp["D"], inp["z"], inp["delta_bias"], True), test_utils=utils)
    x = torch.randn(2, 3, 6, requires_grad=True)
    opcheck(_ops.causal_conv1d_op, (x, torch.randn(3, 4, requires_grad=True), None, None, True),
            test_utils=utils)
    opcheck(_ops.causal_conv1d_op, (x, torch.randn(3, 4, requires_grad=True), None, None, True,
                                    torch.tensor([[0, 0, 1, 1, 1, 2]] * 2)), test_utils=utils)
    q = torch.randn(1, 5, 2, 8, requires_grad=True)
    opcheck(_ops.attention_op, (q, torch.randn(1, 5, 1, 8, requires_grad=True),
                                torch.randn(1, 5, 1, 8, requires_grad=True), 0.3, 2, 0, 0.0),
            test_utils=utils)
    opcheck(_ops.attention_op, (q, torch.randn(1, 5, 1, 8, requires_grad=True),
                                torch.randn(1, 5, 1, 8, requires_grad=True), 0.3, 2, 0, 0.0,
                                False, torch.tensor([0.5, 0.25])),
            test_utils=utils)


def test_flash_attn_padded_head_dim(rng, monkeypatch):
    """The head-dim padding of flash_attn_func (which on CUDA pads float16 / bfloat16 head dims
    that are not a multiple of 8), forced on the CPU: q, k, v padded with zero columns give
    the unpadded call's out, lse and gradients (float32 kernels; the zero columns add exact
    zeros, only the summation order differs: rtol 1e-5, as above), out has the original head
    dim and the padded op saw a multiple of 8. The rule itself (which calls pad) is checked
    on CUDA tensors in test_torch_cuda.py."""
    import torch.nn.functional as F

    seen = []
    real = st.attention_op

    def pad_all(q, k, v):
        p = (0, -q.shape[-1] % 8)
        return F.pad(q, p), F.pad(k, p), F.pad(v, p)

    def spy(q, *args):
        seen.append(q.shape[-1])
        return real(q, *args)

    b, lq, lk, h, hkv, hd = 2, 7, 9, 4, 2, 5
    q, k, v = t64(rng, b, lq, h, hd), t64(rng, b, lk, hkv, hd), t64(rng, b, lk, hkv, hd)
    dy = torch.tensor(rng.standard_normal((b, lq, h, hd)))
    ref, ref_lse, _ = st.flash_attn_func(q, k, v, causal=True, window_size=(4, 0),
                                         return_attn_probs=True)
    gref = torch.autograd.grad(ref, (q, k, v), dy)
    monkeypatch.setattr(st, "_pad_head_dim", pad_all)
    monkeypatch.setattr(st, "attention_op", spy)
    out, lse, _ = st.flash_attn_func(q, k, v, causal=True, window_size=(4, 0),
                                     return_attn_probs=True)
    assert seen == [8] and out.shape == (b, lq, h, hd)
    assert_close(out.detach().numpy(), ref.detach().numpy(), 1e-5, "out")
    assert_close(lse.numpy(), ref_lse.numpy(), 1e-5, "softmax_lse")
    for name, a, r in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dy), gref):
        assert a.shape == r.shape
        assert_close(a.numpy(), r.numpy(), 1e-5, name)
