"""samba_ext.torch decode updates (skipped without torch): selective_state_update and
causal_conv1d_update against plainly written float64 references (below), both state
layouts, wider conv states, multi-token x, circular buffers and state index selection;
step-by-step updates against the full forwards; the arguments that are refused.

Tolerances. The kernels compute in float32: each output carries float32 rounding of a short
sum of O(1) terms, ~1e-7 relative; rtol 1e-5 (relative norm) leaves a ~100x margin and
still fails on any wrong term (O(1e-1) errors). A state stored in bfloat16 is rounded to
8 significant bits (relative error <= 2^-9 per element): rtol 1e-2 on the state. Repeated
float32 steps against the float32 full forward (different summation order, a rounding per
step over <= 12 steps): rtol 1e-5 as well. Moving tokens through a state is copying: exact.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
import samba_ext.torch as st  # noqa: E402

RTOL = 1e-5


def softplus(v: np.ndarray) -> np.ndarray:
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def ssu_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """float64 loops, multi-head layout: state (b, h, p, n); x, dt, z (b, h, p); A (h, p, n);
    B, C (b, g, n); D, dt_bias (h, p). -> (new state, out (b, h, p))."""
    state = np.array(state, dtype=np.float64)
    nb, nh, hp, nn = state.shape
    ng = B.shape[1]
    out = np.zeros((nb, nh, hp))
    for b in range(nb):
        for h in range(nh):
            g = h // (nh // ng)
            for p in range(hp):
                d = dt[b, h, p] + (0.0 if dt_bias is None else dt_bias[h, p])
                if dt_softplus:
                    d = softplus(np.float64(d))
                acc = 0.0
                for n in range(nn):
                    state[b, h, p, n] = (np.exp(d * A[h, p, n]) * state[b, h, p, n]
                                         + d * B[b, g, n] * x[b, h, p])
                    acc += state[b, h, p, n] * C[b, g, n]
                if D is not None:
                    acc += D[h, p] * x[b, h, p]
                if z is not None:
                    acc *= silu(z[b, h, p])
                out[b, h, p] = acc
    return state, out


def conv_update_ref(x, state, w, bias, silu_on, cache_seqlens=None):
    """float64 loops: x (b, d, L); state (b, d, S); w (d, W). Token t sees the W-1 inputs
    before it; with cache_seqlens the state is a circular buffer (tokens written one by one
    at slots (c + t) % S). -> (new state, out (b, d, L))."""
    state = np.array(state, dtype=np.float64)
    nb, nd, L = x.shape
    S, W = state.shape[2], w.shape[1]
    out = np.zeros((nb, nd, L))
    for b in range(nb):
        c = 0 if cache_seqlens is None else int(cache_seqlens[b])
        for d in range(nd):
            if cache_seqlens is None:
                prev = list(state[b, d, S - (W - 1):])
            else:
                prev = [state[b, d, (c - (W - 1) + j) % S] for j in range(W - 1)]
            seq = prev + list(x[b, d])
            for t in range(L):
                acc = (0.0 if bias is None else bias[d]) + sum(w[d, k] * seq[t + k]
                                                               for k in range(W))
                out[b, d, t] = silu(acc) if silu_on else acc
            if cache_seqlens is None:
                state[b, d] = np.concatenate([state[b, d], x[b, d]])[-S:]
            else:
                for t in range(L):
                    state[b, d, (c + t) % S] = x[b, d, t]
    return state, out


def tt(a, dtype=torch.float32):
    return torch.tensor(np.asarray(a), dtype=dtype)


def npf(t):
    return t.detach().double().numpy()


# ------------------------------------------------------------ selective_state_update ---
def ssu_inputs(rng, nb, nh, hp, nn, ng, opts):
    return dict(
        x=rng.standard_normal((nb, nh, hp)), dt=rng.standard_normal((nb, nh, hp)) * 0.5,
        A=-np.exp(rng.standard_normal((nh, hp, nn)) * 0.5),
        B=rng.standard_normal((nb, ng, nn)), C=rng.standard_normal((nb, ng, nn)),
        D=rng.standard_normal((nh, hp)) if "D" in opts else None,
        z=rng.standard_normal((nb, nh, hp)) if "z" in opts else None,
        dt_bias=rng.standard_normal((nh, hp)) * 0.3 if "dt_bias" in opts else None)


@pytest.mark.parametrize("heads,nb,nh,hp,nn,ng,opts", [
    (False, 2, 1, 5, 4, 1, ()), (False, 3, 1, 7, 16, 1, ("D", "z", "dt_bias", "softplus")),
    (True, 2, 4, 3, 5, 2, ("D", "softplus")), (True, 1, 6, 8, 3, 3, ("D", "z", "dt_bias")),
    (True, 3, 2, 4, 6, 1, ("z", "dt_bias", "softplus"))])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float64])
def test_selective_state_update_reference(rng, heads, nb, nh, hp, nn, ng, opts, state_dtype):
    inp = ssu_inputs(rng, nb, nh, hp, nn, ng, opts)
    s0 = rng.standard_normal((nb, nh, hp, nn))
    s_ref, y_ref = ssu_ref(s0, **inp, dt_softplus="softplus" in opts)
    targs = {k: None if v is None else tt(v) for k, v in inp.items()}
    state = tt(s0, state_dtype)
    if not heads:      # the 3-D layout: drop the single head (and the group axis of B, C)
        state = state[:, 0].contiguous()
        targs = {k: None if v is None else (v[0] if k in ("A", "D", "dt_bias") else
                                            v[:, 0]) for k, v in targs.items()}
        s_ref, y_ref = s_ref[:, 0], y_ref[:, 0]
    y = st.selective_state_update(state, **targs, dt_softplus="softplus" in opts)
    assert y.dtype == torch.float32 and state.dtype == state_dtype
    assert_close(npf(y), y_ref, RTOL, "out")
    assert_close(npf(state), s_ref, RTOL, "state")


def test_selective_state_update_bf16_indices_and_broadcast_A(rng):
    """state in bfloat16 with more rows than the batch; A tied per head (a stride-0 view);
    out comes from the float32 state before rounding, the other state rows stay untouched."""
    nb, nh, hp, nn, ng = 3, 4, 2, 5, 2
    inp = ssu_inputs(rng, nb, nh, hp, nn, ng, ("D", "z", "dt_bias"))
    a_head = -np.exp(rng.standard_normal(nh))
    inp["A"] = np.broadcast_to(a_head[:, None, None], (nh, hp, nn)).copy()
    state = tt(rng.standard_normal((5, nh, hp, nn)), torch.bfloat16)
    before = state.clone()
    idx = torch.tensor([4, 0, 2], dtype=torch.int32)
    targs = {k: None if v is None else tt(v, torch.bfloat16) for k, v in inp.items()}
    # the exact bf16 inputs are what the reference must see
    s_ref, y_ref = ssu_ref(npf(state)[idx.long()],
                           **{k: None if v is None else npf(v) for k, v in targs.items()},
                           dt_softplus=True)
    targs["A"] = tt(a_head, torch.bfloat16)[:, None, None].expand(nh, hp, nn)
    y = st.selective_state_update(state, **targs, dt_softplus=True, state_batch_indices=idx)
    assert y.dtype == torch.bfloat16
    # out is rounded to bfloat16 (its dtype, x's): 2^-9 relative per element
    assert_close(npf(y), y_ref, 1e-2, "out")
    assert_close(npf(state)[idx.long()], s_ref, 1e-2, "state rows")
    for r in (1, 3):
        assert torch.equal(state[r], before[r]), f"state row {r} changed"


@pytest.mark.parametrize("ngroups", [1, 2])
def test_selective_state_update_steps_equal_selective_scan(rng, ngroups):
    nb, dim, nn, L = 2, 6, 4, 12
    u = tt(rng.standard_normal((nb, dim, L)))
    delta = tt(rng.standard_normal((nb, dim, L)) * 0.5)
    A = tt(-np.exp(rng.standard_normal((dim, nn)) * 0.5))
    B = tt(rng.standard_normal((nb, ngroups, nn, L)))
    C = tt(rng.standard_normal((nb, ngroups, nn, L)))
    D, db = tt(rng.standard_normal(dim)), tt(rng.standard_normal(dim) * 0.3)
    z = tt(rng.standard_normal((nb, dim, L)))
    y_full, last = st.selective_scan_fn(u, delta, A, B, C, D, z, db, True, True)
    # the scan groups channels (dim/ngroups per group); the 4-D update groups heads: one
    # head per channel (headdim 1) gives the same grouping
    state = torch.zeros(nb, dim, 1, nn)
    ys = [st.selective_state_update(state, u[:, :, t, None], delta[:, :, t, None],
                                    A[:, None], B[..., t], C[..., t], D[:, None],
                                    z[:, :, t, None], db[:, None], True)[..., 0]
          for t in range(L)]
    assert_close(npf(torch.stack(ys, 2)), npf(y_full), RTOL, "steps vs scan")
    assert_close(npf(state[:, :, 0]), npf(last), RTOL, "state vs last_state")
    if ngroups == 1:   # and the 3-D layout
        state3 = torch.zeros(nb, dim, nn)
        ys = [st.selective_state_update(state3, u[:, :, t], delta[:, :, t], A, B[:, 0, :, t],
                                        C[:, 0, :, t], D, z[:, :, t], db, True)
              for t in range(L)]
        assert_close(npf(torch.stack(ys, 2)), npf(y_full), RTOL, "3-D steps vs scan")
        assert_close(npf(state3), npf(last), RTOL, "3-D state vs last_state")


# -------------------------------------------------------------- causal_conv1d_update ---
@pytest.mark.parametrize("nb,dim,width,extra,L", [
    (2, 3, 4, 0, 1), (1, 5, 2, 3, 1), (3, 4, 3, 2, 5), (2, 6, 4, 5, 3), (2, 3, 4, 1, 9)])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("circular", [False, True])
def test_causal_conv1d_update_reference(rng, nb, dim, width, extra, L, activation, circular):
    S = width - 1 + extra
    x = rng.standard_normal((nb, dim, L))
    w, bias = rng.standard_normal((dim, width)), rng.standard_normal(dim)
    s0 = rng.standard_normal((nb, dim, S))
    seqlens = rng.integers(0, 3 * S + 1, nb) if circular else None
    s_ref, y_ref = conv_update_ref(x, s0, w, bias, activation is not None, seqlens)
    state = tt(s0, torch.float64)
    xt = tt(x[:, :, 0]) if L == 1 else tt(x)
    cs = None if seqlens is None else tt(seqlens, torch.int32)
    y = st.causal_conv1d_update(xt, state, tt(w), tt(bias), activation, cs)
    assert y.shape == xt.shape and y.dtype == torch.float32 and state.dtype == torch.float64
    assert_close(npf(y).reshape(nb, dim, L), y_ref, RTOL, "out")
    # tokens are copied: the float32 x values land exactly in the float64 state
    np.testing.assert_array_equal(npf(state), conv_update_ref(
        npf(xt).reshape(nb, dim, L), s0, w, bias, False, seqlens)[0])


@pytest.mark.parametrize("circular", [False, True])
def test_causal_conv1d_update_multi_token_equals_steps(rng, circular):
    nb, dim, width, S, L = 3, 5, 4, 6, 7
    x = tt(rng.standard_normal((nb, dim, L)))
    w, bias = tt(rng.standard_normal((dim, width))), tt(rng.standard_normal(dim))
    s0 = tt(rng.standard_normal((nb, dim, S)))
    c0 = torch.tensor([0, 4, 13], dtype=torch.int32) if circular else None
    s_multi, s_step = s0.clone(), s0.clone()
    y_multi = st.causal_conv1d_update(x, s_multi, w, bias, "silu", c0)
    ys = [st.causal_conv1d_update(x[:, :, t], s_step, w, bias, "silu",
                                  None if c0 is None else c0 + t) for t in range(L)]
    assert_close(npf(torch.stack(ys, 2)), npf(y_multi), RTOL, "steps vs multi-token")
    assert torch.equal(s_multi, s_step)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_causal_conv1d_update_steps_equal_forward(rng, width):
    nb, dim, L = 2, 4, 9
    x = tt(rng.standard_normal((nb, dim, L)), torch.bfloat16)
    w, bias = tt(rng.standard_normal((dim, width))), tt(rng.standard_normal(dim))
    y_full, fin = st.causal_conv1d_fn(x, w, bias, return_final_states=True, activation="silu")
    state = torch.zeros(nb, dim, width - 1, dtype=torch.bfloat16)
    ys = [st.causal_conv1d_update(x[:, :, t], state, w, bias, "swish") for t in range(L)]
    assert ys[0].dtype == torch.bfloat16
    # both outputs are float32 results rounded to bfloat16: within 2^-8 of each other
    assert_close(npf(torch.stack(ys, 2)), npf(y_full), 1e-2, "steps vs causal_conv1d_fn")
    assert torch.equal(state, fin)


def test_causal_conv1d_update_state_indices(rng):
    nb, dim, width, S = 2, 3, 3, 4
    x = tt(rng.standard_normal((nb, dim)))
    w = tt(rng.standard_normal((dim, width)))
    state = tt(rng.standard_normal((5, dim, S)))
    before = state.clone()
    idx = torch.tensor([3, 1])
    s_ref, y_ref = conv_update_ref(npf(x)[:, :, None], npf(state)[[3, 1]], npf(w), None, False)
    y = st.causal_conv1d_update(x, state, w, conv_state_indices=idx)
    assert_close(npf(y), y_ref[:, :, 0], RTOL, "out")
    np.testing.assert_array_equal(npf(state)[[3, 1]], s_ref)
    for r in (0, 2, 4):
        assert torch.equal(state[r], before[r])


@pytest.mark.parametrize("seqlen", [None, 3])
def test_causal_conv1d_update_padding(rng, seqlen):
    """conv_state_indices entries of -1 are padding (causal-conv1d's pad slot): their out
    rows are exactly 0 and conv_state is untouched for them; the valid rows match the float64
    reference on their own state rows; all-padding updates nothing."""
    nb, dim, width, S = 5, 3, 4, 6
    x = tt(rng.standard_normal((nb, dim) if seqlen is None else (nb, dim, seqlen)))
    x3 = npf(x) if seqlen else npf(x)[:, :, None]
    w, bias = tt(rng.standard_normal((dim, width))), tt(rng.standard_normal(dim))
    state = tt(rng.standard_normal((8, dim, S)))
    before = state.clone()
    idx = torch.tensor([4, -1, 0, -1, 6], dtype=torch.int32)
    ok = [0, 2, 4]
    s_ref, y_ref = conv_update_ref(x3[ok], npf(state)[[4, 0, 6]], npf(w), npf(bias), True)
    y = st.causal_conv1d_update(x, state, w, bias, activation="silu", conv_state_indices=idx)
    assert y.shape == x.shape
    y3 = npf(y) if seqlen else npf(y)[:, :, None]
    assert not y3[[1, 3]].any()
    assert_close(y3[ok], y_ref, RTOL, "out")
    np.testing.assert_array_equal(npf(state)[[4, 0, 6]], s_ref)
    for r in (1, 2, 3, 5, 7):
        assert torch.equal(state[r], before[r])
    y = st.causal_conv1d_update(x, state, w, conv_state_indices=torch.full((nb,), -1))
    assert not y.any() and torch.equal(state[[1, 2, 3, 5, 7]], before[[1, 2, 3, 5, 7]])


@pytest.mark.parametrize("heads", [False, True])
def test_selective_state_update_padding(rng, heads):
    """state_batch_indices entries < 0 are padding (the Triton kernel skips them): out rows
    exactly 0, no state row read or written; valid rows as the float64 reference."""
    nb, nh, hp, nn, ng = 4, (2 if heads else 1), 3, 5, 1
    state = tt(rng.standard_normal((6, nh, hp, nn)))
    x, dt, z = (tt(rng.standard_normal((nb, nh, hp))) for _ in range(3))
    A = tt(-np.exp(rng.standard_normal((nh, hp, nn)) * 0.5))
    B, C = (tt(rng.standard_normal((nb, ng, nn))) for _ in range(2))
    D, db = (tt(rng.standard_normal((nh, hp))) for _ in range(2))
    idx = torch.tensor([-1, 5, -1, 2])
    ok, rows = [1, 3], [5, 2]
    before = state.clone()
    s_ref, y_ref = ssu_ref(npf(state)[rows], *(npf(t)[ok] for t in (x, dt)), npf(A),
                           npf(B)[ok], npf(C)[ok], npf(D), npf(z)[ok], npf(db), True)
    if heads:
        y = st.selective_state_update(state, x, dt, A, B, C, D, z, db, True, idx)
    else:
        s3 = state[:, 0]
        y = st.selective_state_update(s3, x[:, 0], dt[:, 0], A[0], B[:, 0], C[:, 0], D[0],
                                      z[:, 0], db[0], True, idx)[:, None]
    assert not npf(y)[[0, 2]].any()
    assert_close(npf(y)[ok], y_ref, RTOL, "out")
    assert_close(npf(state)[rows], s_ref, RTOL, "state")
    for r in (0, 1, 3, 4):
        assert torch.equal(state[r], before[r])


# ---------------------------------------------------------------------- bad input ---
def test_bad_arguments_raise():
    s, x, A, B = torch.zeros(2, 3, 4), torch.randn(2, 3), -torch.rand(3, 4), torch.randn(2, 4)
    with pytest.raises(NotImplementedError, match="device"):
        st.selective_state_update(s.to("meta"), x, x, A, B, B)
    with pytest.raises(NotImplementedError, match="A: complex"):
        st.selective_state_update(s, x, x, A.to(torch.complex64), B, B)
    with pytest.raises(ValueError, match="dt:"):
        st.selective_state_update(s, x, x[:, :2], A, B, B)
    with pytest.raises(ValueError, match="ngroups"):
        st.selective_state_update(s, x, x, A, torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="state: batch"):
        st.selective_state_update(torch.zeros(3, 3, 4), x, x, A, B, B)
    with pytest.raises(ValueError, match="state_batch_indices"):
        st.selective_state_update(s, x, x, A, B, B, state_batch_indices=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="distinct"):
        st.selective_state_update(s, x, x, A, B, B, state_batch_indices=torch.tensor([1, 1]))
    with pytest.raises(TypeError, match="state_batch_indices"):
        st.selective_state_update(s, x, x, A, B, B, state_batch_indices=torch.tensor([0., 1.]))
    cs, w = torch.zeros(2, 3, 3), torch.randn(3, 4)
    with pytest.raises(NotImplementedError, match="device"):
        st.causal_conv1d_update(x.to("meta"), cs, w)
    with pytest.raises(NotImplementedError, match="activation"):
        st.causal_conv1d_update(x, cs, w, activation="relu")
    with pytest.raises(ValueError, match="conv_state"):
        st.causal_conv1d_update(x, torch.zeros(2, 3, 2), w)
    with pytest.raises(ValueError, match="weight"):
        st.causal_conv1d_update(x, cs, torch.randn(3, 5))
    with pytest.raises(ValueError, match="cache_seqlens"):
        st.causal_conv1d_update(x, cs, w, cache_seqlens=torch.tensor([1, -1]))
    with pytest.raises(TypeError, match="cache_seqlens"):
        st.causal_conv1d_update(x, cs, w, cache_seqlens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="conv_state_indices"):
        st.causal_conv1d_update(x, cs, w, conv_state_indices=torch.tensor([0, 5]))
    # nothing was written by the refused calls
    assert not s.any() and not cs.any()


def test_opcheck():
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    from samba_ext.torch import _inference as inf
    utils = ("test_schema", "test_faketensor")
    x = torch.randn(2, 3, 4)
    opcheck(inf.selective_state_update_op,
            (torch.zeros(3, 3, 4, 5), x, x, -torch.rand(3, 4, 5), torch.randn(2, 1, 5),
             torch.randn(2, 1, 5), None, None, None, True, torch.tensor([2, 0])),
            test_utils=utils)
    opcheck(inf.causal_conv1d_update_op,
            (x, torch.zeros(2, 3, 5), torch.randn(3, 4), None, True, torch.tensor([1, 7]), None),
            test_utils=utils)


def test_selective_state_update_errors_use_the_callers_layout():
    """With a 3-D state the arguments are checked in the multi-head layout (one head
    inserted); a wrong shape was reported with that inserted axis, e.g. z (2, 1, 4)."""
    s, x = torch.zeros(2, 4, 3), torch.randn(2, 4)
    A, B = -torch.rand(4, 3), torch.randn(2, 3)
    for kw, msg in (({"z": torch.randn(2, 3)}, r"z: expected shape \(2, 4\), got \(2, 3\)"),
                    ({"D": torch.randn(5)}, r"D: expected shape \(4,\), got \(5,\)")):
        with pytest.raises(ValueError, match=msg):
            st.selective_state_update(s, x, x, A, B, B, **kw)
    with pytest.raises(ValueError, match=r"A: expected shape \(4, 3\), got \(4, 2\)"):
        st.selective_state_update(s, x, x, A[:, :2], B, B)
