"""samba_ext.torch on CUDA tensors: selective_scan_fn, causal_conv1d_fn, flash_attn_func and
mamba_inner_fn, forward and backward (torch.autograd.grad) against the float64 references
of the same rounded inputs (tests/ref_scan.py, ref_small.py, ref_grad.py; mamba_inner_ref),
in float32, float16 and bfloat16; odd lengths, batch > 1, grouped B/C, GQA, head dims 64
and 128, windows shorter and longer than the sequence, softcap. Also: the outputs on the
input's device and dtype, NaN-free (new samba_ext outputs are poisoned with NaN first, the
``poison`` fixture, so an unwritten element fails); no host transfer or synchronization
inside the ops; ordering on a side torch stream; torch.compile(fullgraph=True);
torch.library.opcheck of every op on CUDA (the fakes against the real outputs); and,
without a GPU, the fake implementations on fake CUDA tensors. The decode ops are in
test_torch_cuda_decode.py.

Tolerances (relative Frobenius norm; NaN/Inf never pass), from the CUDA kernel tests that
measured them on the same kernels (tests/test_cuda_grad_scan.py, test_cuda_grad_attention.py):
* scan, float32 arithmetic: SCAN(L) = 2e-5 (1 + sqrt(L / 256)): twice the CPU backward's
  bound for the GPU's exp2 unit and float32 atomics (order-dependent sums over channels and
  batch); it also covers the forward (the same recurrence, one rounding per step).
* conv: CONV = 2e-5 (sums of <= W products; batch x L products for dweight / dbias).
* attention: ATTN(dtype, n) = BASE[dtype] + 4 * 2^-24 sqrt(n), n the longest sum behind one
  gradient element (visible keys for dq; heads per KV head times the queries for dk, dv);
  BASE float32 1e-5, float16 2e-3, bfloat16 1e-2 (the tensor-core backward rounds out, P, dS
  and the gradients to the input dtype: emulated 2.3e-3..2.6e-3 for bfloat16 and
  2.8e-4..3.3e-4 for float16 there). Forward out: cuda_util.RTOL[dtype].
* Any result returned in float16 / bfloat16 (y, and every gradient: torch casts each one to
  its input's dtype) adds the rounding to that dtype, HALF[dtype] = cuda_util.RTOL[dtype] -
  RTOL["float32"] (float16 2e-3: unit roundoff 4.9e-4, relative norm ~2.8e-4 for random
  data; bfloat16 1e-2: 3.9e-3, ~2.3e-3).
* mamba_inner_fn in float64 on CUDA (projections in float64, the conv and scan kernels in
  float32): the CPU test's bound 3e-5 (tests/test_torch_mamba_inner.py, measured <= 3e-6)
  doubled for the GPU scan as above: 6e-5. In bfloat16 every intermediate (conv output,
  projections, delta, B, C, y, out) is rounded to bfloat16, as torch's own bfloat16
  arithmetic does: the errors must stay within twice those of mamba_inner_ref computed by
  plain torch in bfloat16 on the same GPU tensors, plus 1e-2 (one bfloat16 rounding).
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
from cuda_util import RTOL  # noqa: E402
from ref_grad import attention_bwd_ref, attention_fwd_ref, causal_conv1d_bwd_ref  # noqa: E402
from ref_grad import selective_scan_bwd_ref  # noqa: E402
from ref_scan import selective_scan_ref  # noqa: E402
from ref_small import causal_conv1d as causal_conv1d_ref  # noqa: E402
from test_grad_attention_alibi import slopes  # noqa: E402
from torch_cuda_util import f64, gpu, gpu_tensor, on_gpu_as, rel_err  # noqa: E402

import samba_ext.torch as st  # noqa: E402

DTYPES = ["float32", "float16", "bfloat16"]
HALF = {"float32": 0.0, "float16": RTOL["float16"] - RTOL["float32"],
        "bfloat16": RTOL["bfloat16"] - RTOL["float32"]}
CONV = 2e-5
ATTN_BASE = {"float32": 1e-5, "float16": RTOL["float16"], "bfloat16": RTOL["bfloat16"]}


def scan_tol(L: int) -> float:
    return 2e-5 * (1.0 + math.sqrt(L / 256.0))


def attn_tol(dtype: str, n: int) -> float:
    return ATTN_BASE[dtype] + 4 * 2.0 ** -24 * math.sqrt(max(n, 1))


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


# -------------------------------------------------------------------- selective scan ---
# (batch, dim, L, dstate, ngroups (0: 3-D B/C), options)
SCAN_CASES = [
    (1, 8, 1, 4, 0, ("softplus",)),
    (2, 24, 67, 16, 3, ("D", "z", "delta_bias", "softplus")),
    (3, 40, 301, 8, 0, ("D", "z")),
    (2, 16, 129, 64, 2, ("delta_bias", "softplus", "last")),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_selective_scan(rng, poison, dtype, case):
    b, d, L, N, G, opts = case
    softplus = "softplus" in opts
    bc = (b, N, L) if G == 0 else (b, G, N, L)
    # activations in dtype, A / D / delta_bias float32 (mamba_ssm's parameters); without
    # softplus delta stays positive so that the states do not grow over 300 steps
    inp = dict(u=gpu_tensor(rng, (b, d, L), dtype, grad=True),
               delta=gpu_tensor(rng, (b, d, L), dtype, 0.5, positive=not softplus, grad=True),
               A=(-torch.exp(gpu_tensor(rng, (d, N), scale=0.5))).detach().requires_grad_(),
               B=gpu_tensor(rng, bc, dtype, grad=True), C=gpu_tensor(rng, bc, dtype, grad=True),
               D=gpu_tensor(rng, (d,), grad=True) if "D" in opts else None,
               z=gpu_tensor(rng, (b, d, L), dtype, grad=True) if "z" in opts else None,
               delta_bias=(gpu_tensor(rng, (d,), scale=0.3, grad=True)
                           if "delta_bias" in opts else None))
    y, last = st.selective_scan_fn(**inp, delta_softplus=softplus, return_last_state=True)
    on_gpu_as(y, inp["u"])
    on_gpu_as(last, inp["u"], torch.float32)
    ref = {k: f64(v) for k, v in inp.items()}
    y_ref, last_ref = selective_scan_ref(**ref, delta_softplus=softplus,
                                         return_last_state=True)
    assert_close(f64(y), y_ref, scan_tol(L) + HALF[dtype], "y")
    assert_close(f64(last), last_ref, scan_tol(L), "last_state")

    dy = gpu_tensor(rng, tuple(y.shape), dtype)
    dl = gpu_tensor(rng, tuple(last.shape)) if "last" in opts else None
    names = [k for k, v in inp.items() if v is not None]
    outs, gouts = ([y, last], [dy, dl]) if dl is not None else ([y], [dy])
    got = torch.autograd.grad(outs, [inp[k] for k in names], gouts)
    want = selective_scan_bwd_ref(**ref, delta_softplus=softplus, dout=f64(dy),
                                  dlast_state=f64(dl))
    for k, g in zip(names, got):
        on_gpu_as(g, inp[k])
        assert_close(f64(g), want["d" + k], scan_tol(L) + HALF[dtype_name(inp[k])], "d" + k)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_selective_scan_time_invariant_B(rng, poison, dtype):
    """mamba_ssm's non-variable B (dim, dstate) float32 with a variable C in the activation
    dtype: run as ngroups = dim stride-0 views (no copy of B). Against the float64
    references with B broadcast to (batch, dim, dstate, L); dB is their gradient summed over
    batch and L: per element within scan_tol + HALF, the sum of b * L random-signed terms
    cancels partly, hence twice that bound (relative norm)."""
    b, d, L, N = 2, 24, 67, 16
    u = gpu_tensor(rng, (b, d, L), dtype, grad=True)
    delta = gpu_tensor(rng, (b, d, L), dtype, 0.5, grad=True)
    A = (-torch.exp(gpu_tensor(rng, (d, N), scale=0.5))).detach().requires_grad_()
    B = gpu_tensor(rng, (d, N), grad=True)
    C = gpu_tensor(rng, (b, N, L), dtype, grad=True)
    y = st.selective_scan_fn(u, delta, A, B, C, delta_softplus=True)
    on_gpu_as(y, u)
    Bx = np.broadcast_to(f64(B)[None, :, :, None], (b, d, N, L))
    Cx = np.broadcast_to(f64(C)[:, None], (b, d, N, L))
    ref = dict(u=f64(u), delta=f64(delta), A=f64(A), B=Bx, C=Cx)
    assert_close(f64(y), selective_scan_ref(**ref, delta_softplus=True),
                 scan_tol(L) + HALF[dtype], "y")
    dy = gpu_tensor(rng, (b, d, L), dtype)
    got = torch.autograd.grad(y, (u, delta, A, B, C), dy)
    want = selective_scan_bwd_ref(**ref, D=None, z=None, delta_bias=None, delta_softplus=True,
                                  dout=f64(dy))
    for k, g, x in zip("u delta A".split(), got, (u, delta, A)):
        on_gpu_as(g, x)
        assert_close(f64(g), want["d" + k], scan_tol(L) + HALF[dtype_name(x)], "d" + k)
    on_gpu_as(got[3], B)
    assert_close(f64(got[3]), want["dB"].sum(axis=(0, 3)), 2 * scan_tol(L), "dB")
    on_gpu_as(got[4], C)
    assert_close(f64(got[4]), want["dC"].sum(axis=1), 2 * (scan_tol(L) + HALF[dtype]), "dC")


# --------------------------------------------------------------------- causal conv1d ---
# (batch, dim, L, width, options)
CONV_CASES = [
    (1, 8, 1, 2, ()),
    (2, 24, 37, 4, ("bias", "silu", "init", "final")),
    (3, 64, 129, 3, ("silu", "final")),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_causal_conv1d(rng, poison, dtype, case):
    b, d, L, W, opts = case
    act = "silu" if "silu" in opts else None
    x = gpu_tensor(rng, (b, d, L), dtype, grad=True)
    w = gpu_tensor(rng, (d, W), dtype, 0.5, grad=True)
    bias = gpu_tensor(rng, (d,), dtype, 0.3, grad=True) if "bias" in opts else None
    init = gpu_tensor(rng, (b, d, W - 1), dtype, grad=True) if "init" in opts else None
    final = "final" in opts
    buf = torch.full((b, d, W - 1), float("nan"), device="cuda", dtype=x.dtype)
    res = st.causal_conv1d_fn(x, w, bias, initial_states=init, return_final_states=final,
                              final_states_out=buf if final else None, activation=act)
    y, fin = res if final else (res, None)
    on_gpu_as(y, x)
    y_ref, fin_ref = causal_conv1d_ref(f64(x), f64(w), f64(bias), act, f64(init))
    assert_close(f64(y), y_ref, CONV + HALF[dtype], "y")
    if final:
        # the last W-1 inputs, copied: exact, written into final_states_out in place
        assert fin is buf
        on_gpu_as(fin, x)
        np.testing.assert_array_equal(f64(fin), fin_ref)

    dy = gpu_tensor(rng, tuple(y.shape), dtype)
    dfin = gpu_tensor(rng, tuple(fin.shape), dtype) if final else None
    leaves = {k: t for k, t in (("dx", x), ("dweight", w), ("dbias", bias),
                                ("dinitial_states", init)) if t is not None}
    outs, gouts = ([y, fin], [dy, dfin]) if final else ([y], [dy])
    got = torch.autograd.grad(outs, list(leaves.values()), gouts)
    want = causal_conv1d_bwd_ref(f64(x), f64(w), f64(bias), act, f64(init), f64(dy),
                                 f64(dfin))
    for (k, t), g in zip(leaves.items(), got):
        on_gpu_as(g, t)
        assert_close(f64(g), want[k], CONV + HALF[dtype], k)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "silu"])
def test_causal_conv1d_seq_idx(rng, poison, dtype, act):
    """Packed sequences (seq_idx) on CUDA tensors: the output and the autograd gradients
    against the same call on CPU tensors (the C kernels, tests/test_conv_seq_idx.py) holding
    the same rounded values in float32; int32 ids, and int64 ids broadcast over the batch
    (stride 0). Each result is within CONV of the float64 definition on both devices, plus
    the rounding to dtype on CUDA: 2 CONV + HALF[dtype]. The fakes match (opcheck)."""
    b, d, L, W = 2, 24, 37, 4
    x = gpu_tensor(rng, (b, d, L), dtype, grad=True)
    w = gpu_tensor(rng, (d, W), dtype, 0.5, grad=True)
    bias = gpu_tensor(rng, (d,), dtype, 0.3, grad=True)
    dy = gpu_tensor(rng, (b, d, L), dtype)
    ids = np.sort(rng.integers(0, 5, (b, L)), axis=1)
    for seq in (torch.tensor(ids, dtype=torch.int32, device="cuda"),
                torch.tensor(ids[:1], dtype=torch.int64, device="cuda").expand(b, L)):
        y = st.causal_conv1d_fn(x, w, bias, seq_idx=seq, activation=act)
        on_gpu_as(y, x)
        got = torch.autograd.grad(y, (x, w, bias), dy)
        cpu = [t.detach().float().cpu().requires_grad_() for t in (x, w, bias)]
        y_cpu = st.causal_conv1d_fn(*cpu, seq_idx=seq.cpu(), activation=act)
        want = torch.autograd.grad(y_cpu, cpu, dy.float().cpu())
        tol = 2 * CONV + HALF[dtype]
        assert_close(f64(y), f64(y_cpu), tol, "y")
        for name, g, ref, t in zip(("dx", "dweight", "dbias"), got, want, (x, w, bias)):
            on_gpu_as(g, t)
            assert_close(f64(g), f64(ref), tol, name)
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is not None:
        from samba_ext.torch import _ops
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        opcheck(_ops.causal_conv1d_op, (x, w, bias, None, act is not None, seq),
                test_utils=utils)
        opcheck(_ops.causal_conv1d_backward_op,
                (x.detach(), w.detach(), bias.detach(), None, act is not None, dy, None, seq),
                test_utils=utils)


# ------------------------------------------------------------------------ attention ---
# (batch, Lq, Lk, nheads, nheads_kv, headdim, causal, window_size, softcap)
ATTN_CASES = [
    (2, 67, 67, 4, 4, 64, True, (-1, -1), 0.0),
    (1, 33, 97, 8, 2, 128, True, (16, 0), 0.0),       # window shorter than L, GQA, Lq < Lk
    (2, 45, 45, 6, 3, 64, False, (5, 3), 0.0),        # two-sided window
    (1, 29, 29, 4, 1, 128, True, (1000, 0), 30.0),    # window longer than L, softcap, MQA
    (3, 1, 50, 4, 2, 64, False, (-1, -1), 0.0),       # one query
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_flash_attn_func(rng, poison, dtype, case):
    flash_attn_case(rng, dtype, case, None)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("case", ATTN_CASES[1:4], ids=lambda c: "x".join(map(str, c[:6])))
def test_flash_attn_func_alibi(rng, poison, dtype, per_batch, case):
    """alibi_slopes (nheads,) or (batch, nheads) as CUDA tensors: -slope |i + Lk - Lq - j|
    after the softcap, forward and autograd against the float64 references (the slopes get
    no gradient)."""
    al = slopes(rng, case[0], case[3], per_batch)
    flash_attn_case(rng, dtype, case, torch.tensor(al, dtype=torch.float32, device="cuda"))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hd", [59, 111, 250])
def test_flash_attn_func_odd_head_dims(rng, poison, monkeypatch, dtype, hd):
    """float16 / bfloat16 head dims that are not a multiple of 8 run zero-padded to one (the
    op sees the padded head dim, so the tensor-core kernels take them); float32 is not padded.
    Forward and autograd against the float64 references, as every case above."""
    seen = []
    real = st.attention_op

    def spy(q, *args):
        seen.append(q.shape[-1])
        return real(q, *args)

    monkeypatch.setattr(st, "attention_op", spy)
    flash_attn_case(rng, dtype, (2, 70, 90, 4, 2, hd, True, (30, 0), 0.0), None)
    assert seen == [hd if dtype == "float32" else hd + (-hd) % 8]


def flash_attn_case(rng, dtype, case, alibi) -> None:
    b, lq, lk, H, Hkv, hd, causal, window, cap = case
    q = gpu_tensor(rng, (b, lq, H, hd), dtype, grad=True)
    k = gpu_tensor(rng, (b, lk, Hkv, hd), dtype, grad=True)
    v = gpu_tensor(rng, (b, lk, Hkv, hd), dtype, grad=True)
    out = st.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=cap,
                             alibi_slopes=alibi)
    on_gpu_as(out, q)
    scale = 1.0 / math.sqrt(hd)
    left, right = window[0], 0 if causal else window[1]
    al = None if alibi is None else f64(alibi)
    out_ref, _ = attention_fwd_ref(f64(q), f64(k), f64(v), scale, left, right, cap, al)
    assert_close(f64(out), out_ref, RTOL[dtype], "out")

    dout = gpu_tensor(rng, (b, lq, H, hd), dtype)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = attention_bwd_ref(f64(q), f64(k), f64(v), f64(dout), scale, left, right, cap, al)
    n = max(lk, (H // Hkv) * lq)
    for name, t, g in zip(("dq", "dk", "dv"), (q, k, v), got):
        on_gpu_as(g, t)
        assert_close(f64(g), want[name], attn_tol(dtype, n), name)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flash_attn_func_return_attn_probs(rng, poison, dtype):
    """(out, softmax_lse, None) as flash-attn without dropout: lse (batch, nheads, Lq)
    float32 on the GPU within 2e-5 absolute of the float64 reference (float32 scores of
    exact products, as in test_cuda_grad_attention.py), +inf where a query sees no key
    (Lq > Lk, causal), out identical to the plain call's."""
    b, lq, lk, H, Hkv, hd = 2, 37, 29, 4, 2, 64
    q = gpu_tensor(rng, (b, lq, H, hd), dtype)
    k, v = gpu_tensor(rng, (b, lk, Hkv, hd), dtype), gpu_tensor(rng, (b, lk, Hkv, hd), dtype)
    out, lse, s = st.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert s is None
    on_gpu_as(out, q)
    assert lse.device == q.device and lse.dtype == torch.float32 and lse.shape == (b, H, lq)
    assert torch.equal(out, st.flash_attn_func(q, k, v, causal=True))
    _, ref = attention_fwd_ref(f64(q), f64(k), f64(v), 1.0 / math.sqrt(hd), -1, 0)
    got = f64(lse)
    empty = np.isneginf(ref)
    assert empty.any() and np.all(np.isposinf(got[empty]))
    np.testing.assert_allclose(got[~empty], ref[~empty], rtol=0, atol=2e-5)


# ------------------------------------------------------------------- mamba_inner_fn ---
def inner_inputs(rng, dtype, nb=2, d=24, L=67, n=8, rank=3, width=4, e=16, fixed_b=False):
    """Mamba-1 mixer weights in dtype (A, D, delta_bias float32 as mamba_ssm keeps them;
    float64 when dtype is float64)."""
    par = "float64" if dtype == "float64" else "float32"
    rows = rank + n * (1 + (not fixed_b))
    a = dict(xz=gpu_tensor(rng, (nb, 2 * d, L), dtype, grad=True),
             conv1d_weight=gpu_tensor(rng, (d, 1, width), dtype, 0.5, grad=True),
             conv1d_bias=gpu_tensor(rng, (d,), dtype, 0.3, grad=True),
             x_proj_weight=gpu_tensor(rng, (rows, d), dtype, 0.4, grad=True),
             delta_proj_weight=gpu_tensor(rng, (d, rank), dtype, 0.5, grad=True),
             out_proj_weight=gpu_tensor(rng, (e, d), dtype, 0.4, grad=True),
             out_proj_bias=gpu_tensor(rng, (e,), dtype, grad=True),
             A=(-torch.exp(gpu_tensor(rng, (d, n), par, 0.5))).detach().requires_grad_(),
             D=gpu_tensor(rng, (d,), par, grad=True),
             delta_bias=gpu_tensor(rng, (d,), par, 0.3, grad=True))
    if fixed_b:
        a["B"] = gpu_tensor(rng, (d, n), dtype, grad=True)
    else:
        a["b_rms_weight"] = gpu_tensor(rng, (n,), dtype, grad=True)
        a["c_rms_weight"] = gpu_tensor(rng, (n,), dtype, grad=True)
        a["dt_rms_weight"] = gpu_tensor(rng, (d,), dtype, grad=True)
    return a


def inner_run(fn, a, dout, **kw):
    """(out, {name: gradient}) of fn on a, every tensor a leaf."""
    names = [k for k, v in a.items() if isinstance(v, torch.Tensor)]
    out = fn(**a, **kw)
    got = torch.autograd.grad(out, [a[k] for k in names], dout)
    return out, dict(zip(names, got))


def inner_ref(a, dout):
    """float64 CPU reference: mamba_inner_ref on float64 copies of the GPU tensors."""
    cpu = {k: torch.tensor(f64(v), requires_grad=True) if isinstance(v, torch.Tensor) else v
           for k, v in a.items()}
    out, g = inner_run(st.mamba_inner_ref, cpu, torch.tensor(f64(dout)))
    return out.detach().numpy(), {k: v.numpy() for k, v in g.items()}


@gpu
@pytest.mark.parametrize("fixed_b", [False, True])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1])
def test_mamba_inner_float64(rng, poison, fixed_b, checkpoint_lvl):
    a = inner_inputs(rng, "float64", fixed_b=fixed_b)
    dout = gpu_tensor(rng, (2, 67, 16), "float64")
    out, g = inner_run(st.mamba_inner_fn, a, dout, checkpoint_lvl=checkpoint_lvl)
    on_gpu_as(out, a["xz"])
    out_ref, g_ref = inner_ref(a, dout)
    assert_close(f64(out), out_ref, 6e-5, "out")
    for k, t in g.items():
        on_gpu_as(t, a[k])
        assert_close(f64(t), g_ref[k], 6e-5, "d" + k)


@gpu
def test_mamba_inner_bfloat16(rng, poison):
    a = inner_inputs(rng, "bfloat16")
    dout = gpu_tensor(rng, (2, 67, 16), "bfloat16")
    out, g = inner_run(st.mamba_inner_fn, a, dout)
    on_gpu_as(out, a["xz"])
    out_t, g_t = inner_run(st.mamba_inner_ref, a, dout)   # plain torch, bfloat16, same GPU
    out_ref, g_ref = inner_ref(a, dout)
    ours, theirs = rel_err(f64(out), out_ref), rel_err(f64(out_t), out_ref)
    assert ours <= 2 * theirs + 1e-2, f"out: {ours:.3e} vs torch's {theirs:.3e}"
    for k, t in g.items():
        on_gpu_as(t, a[k])
        ours, theirs = rel_err(f64(t), g_ref[k]), rel_err(f64(g_t[k]), g_ref[k])
        assert ours <= 2 * theirs + 1e-2, f"d{k}: {ours:.3e} vs torch's {theirs:.3e}"


# ------------------------------------------------------ transfers, streams, compile ---
@gpu
def test_no_host_transfers_or_syncs(rng, poison, monkeypatch):
    """Forward and backward of the differentiable ops run without any host <-> device
    copy or synchronization: samba_ext's copies and syncs raise, and torch's sync debug
    mode turns a synchronizing torch call into an error."""
    from samba_ext import _cuda

    def refuse(*args, **kwargs):
        raise AssertionError("a host transfer or synchronization in a CUDA op")

    q = gpu_tensor(rng, (2, 31, 4, 64), "bfloat16", grad=True)
    kv = gpu_tensor(rng, (2, 31, 2, 64), "bfloat16", grad=True)
    u = gpu_tensor(rng, (2, 16, 31), "bfloat16", grad=True)
    A = (-torch.exp(gpu_tensor(rng, (16, 8)))).detach().requires_grad_()
    B = gpu_tensor(rng, (2, 8, 31), "bfloat16", grad=True)
    w = gpu_tensor(rng, (16, 4), "bfloat16", grad=True)
    for name in ("memcpy_h2d", "memcpy_d2h", "stream_sync", "device_sync"):
        monkeypatch.setattr(_cuda, name, refuse)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = st.flash_attn_func(q, kv, kv, causal=True)
        y = st.selective_scan_fn(u, u, A, B, B, delta_softplus=True)
        c = st.causal_conv1d_fn(u, w, activation="silu")
        loss = out.float().sum() + y.float().sum() + c.float().sum()
        grads = torch.autograd.grad(loss, (q, kv, u, A, B, w))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for t, like in zip((out, y, c) + grads, (q, u, u, q, kv, u, A, B, w)):
        on_gpu_as(t, like)


@gpu
def test_side_stream_ordering(rng, poison):
    """The ops run on torch's current stream: on a side stream, inputs written after a long
    sleep on that stream are read only once written, and the results are read by the next
    torch op on the stream only once the kernels are done."""
    q = gpu_tensor(rng, (1, 257, 4, 64), "bfloat16")
    u = gpu_tensor(rng, (2, 64, 513))
    A = -torch.exp(gpu_tensor(rng, (64, 16)))
    B = gpu_tensor(rng, (2, 16, 513))
    want_o = st.flash_attn_func(q, q, q, causal=True).float()
    want_y = st.selective_scan_fn(u, u, A, B, B, delta_softplus=True)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q2, u2 = torch.full_like(q, float("nan")), torch.full_like(u, float("nan"))
        torch.cuda._sleep(100_000_000)    # ~50 ms of GPU time before the inputs exist
        q2.copy_(q)
        u2.copy_(u)
        got_o = st.flash_attn_func(q2, q2, q2, causal=True).float() * 1.0
        got_y = st.selective_scan_fn(u2, u2, A, B, B, delta_softplus=True) * 1.0
    torch.cuda.synchronize()
    # the same kernels on the same inputs: equal up to the rounding of the output dtype (a
    # kernel variant chosen by alignment may differ in the last bits); reading the inputs
    # before they are written gives NaN (they start as NaN), which never passes
    assert_close(f64(got_o), f64(want_o), RTOL["bfloat16"], "attention on a side stream")
    assert_close(f64(got_y), f64(want_y), RTOL["float32"], "scan on a side stream")


@gpu
def test_results_wrapped_on_their_stream(monkeypatch):
    """_device.tensors: a result made on torch's current stream is exported with stream=-1
    (the consumer is that stream, nothing to order); one made on another stream goes through
    torch.from_dlpack, which hands the export torch's current stream to wait on."""
    from samba_ext import cuda as scuda
    from samba_ext.torch._device import tensors

    streams = []
    real = scuda.DeviceArray.__dlpack__
    monkeypatch.setattr(scuda.DeviceArray, "__dlpack__",
                        lambda self, **kw: streams.append(kw.get("stream")) or real(self, **kw))
    dev = torch.device("cuda", torch.cuda.current_device())
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        (t,) = tensors((scuda.to_device(x, device=dev.index, stream=side.cuda_stream),), dev)
        assert streams == [-1]
        (u,) = tensors((scuda.to_device(x, device=dev.index), None), dev)[:1]
        assert streams[1:] == [side.cuda_stream]
    torch.cuda.synchronize()
    assert torch.equal(t.cpu(), torch.from_numpy(x)) and torch.equal(u.cpu(), torch.from_numpy(x))


@gpu
def test_compile_fullgraph(rng, poison):
    """flash_attn_func inside torch.compile(fullgraph=True) (one graph, the custom op a
    node): forward and gradients as in eager. Same kernels on the same inputs, so the only
    differences are the order of float32 atomic adds in the attention backward (dq), which
    can move a gradient element across a bfloat16 rounding boundary: RTOL bfloat16."""
    q = gpu_tensor(rng, (2, 45, 8, 64), "bfloat16", grad=True)
    k = gpu_tensor(rng, (2, 45, 2, 64), "bfloat16", grad=True)
    v = gpu_tensor(rng, (2, 45, 2, 64), "bfloat16", grad=True)

    def f(q, k, v):
        return st.flash_attn_func(q, k, v, causal=True, window_size=(15, 0))

    backend = "inductor" if importlib.util.find_spec("triton") else "aot_eager"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(q, k, v)
    want = f(q, k, v)
    on_gpu_as(got, q)
    assert_close(f64(got), f64(want), 1e-6, "compiled out")
    dout = gpu_tensor(rng, tuple(want.shape), "bfloat16")
    g_got = torch.autograd.grad(got, (q, k, v), dout)
    g_want = torch.autograd.grad(want, (q, k, v), dout)
    for name, a, b, t in zip(("dq", "dk", "dv"), g_got, g_want, (q, k, v)):
        on_gpu_as(a, t)
        assert_close(f64(a), f64(b), RTOL["bfloat16"], name)


@gpu
def test_opcheck_cuda(rng, poison):
    """Schema, autograd registration and fake implementation (device, dtype, shape,
    strides against the real CUDA outputs) of every differentiable op and its backward."""
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    from samba_ext.torch import _ops
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for dtype in ("bfloat16", "float32"):
        u = gpu_tensor(rng, (2, 8, 13), dtype, grad=True)
        A = (-torch.exp(gpu_tensor(rng, (8, 4)))).detach().requires_grad_()
        B = gpu_tensor(rng, (2, 2, 4, 13), dtype, grad=True)
        D = gpu_tensor(rng, (8,), grad=True)
        opcheck(_ops.selective_scan_op, (u, u, A, B, B, D, u, D, True), test_utils=utils)
        # the backward ops have no autograd of their own: plain (detached) inputs
        ud, Ad, Bd, Dd = (t.detach() for t in (u, A, B, D))
        opcheck(_ops.selective_scan_backward_op,
                (ud, ud, Ad, Bd, Bd, Dd, ud, Dd, True, gpu_tensor(rng, (2, 8, 13), dtype),
                 gpu_tensor(rng, (2, 8, 4))), test_utils=utils)
        w = gpu_tensor(rng, (8, 4), dtype, grad=True)
        init = gpu_tensor(rng, (2, 8, 3), dtype, grad=True)
        opcheck(_ops.causal_conv1d_op, (u, w, None, init, True), test_utils=utils)
        opcheck(_ops.causal_conv1d_backward_op,
                (ud, w.detach(), None, init.detach(), True, gpu_tensor(rng, (2, 8, 13), dtype),
                 gpu_tensor(rng, (2, 8, 3))), test_utils=utils)
        q = gpu_tensor(rng, (1, 9, 4, 64), dtype, grad=True)
        k = gpu_tensor(rng, (1, 11, 2, 64), dtype, grad=True)
        opcheck(_ops.attention_op, (q, k, k, 0.125, 4, 0, 0.0), test_utils=utils)
        out, lse = _ops.attention_op(q, k, k, 0.125, 4, 0, 0.0)
        opcheck(_ops.attention_backward_op,
                (q.detach(), k.detach(), k.detach(), out.detach(), lse.detach(),
                 gpu_tensor(rng, (1, 9, 4, 64), dtype),
                 0.125, 4, 0, 0.0), test_utils=utils)


@gpu
def test_refused_on_cuda(rng):
    """What only the CPU kernels handle raises NotImplementedError naming the argument;
    tensors on two devices raise ValueError naming the argument."""
    u = gpu_tensor(rng, (1, 4, 5))
    with pytest.raises(NotImplementedError, match="A: dstate"):
        st.selective_scan_fn(u, u, -torch.ones(4, 300, device="cuda"),
                             gpu_tensor(rng, (1, 300, 5)), gpu_tensor(rng, (1, 300, 5)))
    q = gpu_tensor(rng, (1, 3, 2, 264))
    with pytest.raises(NotImplementedError, match="q: headdim"):
        st.flash_attn_func(q, q, q)
    with pytest.raises(ValueError, match="weight"):
        st.causal_conv1d_fn(u, torch.randn(4, 3))
    with pytest.raises(ValueError, match="final_states_out"):
        st.causal_conv1d_fn(u, gpu_tensor(rng, (4, 3)), return_final_states=True,
                            final_states_out=torch.empty(1, 4, 2))


# ---------------------------------------------------------------- fakes, no GPU needed ---
def _fake_cuda_mode():
    """A FakeTensorMode whose tensors may claim a CUDA device (no GPU needed), or skip."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    try:
        with mode:
            torch.empty(1, device="cuda")
    except Exception as e:   # a torch build that cannot fake CUDA tensors
        pytest.skip(f"fake CUDA tensors unavailable: {e}")
    return mode


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_fakes_follow_cuda_dtypes(dtype):
    """The fake implementations on fake CUDA tensors: outputs on the input's device, in the
    dtypes the CUDA kernels write (y, out, du, ddelta, dz, dx, dq, dk, dv in their input's
    dtype, float64 computed as float32; states, lse and parameter gradients float32) and
    the public functions' outputs in the peers' dtypes."""
    from samba_ext.torch import _inference, _ops
    dt = getattr(torch, dtype)
    act = torch.float32 if dt == torch.float64 else dt
    f32 = torch.float32
    with _fake_cuda_mode():
        u = torch.empty(2, 8, 13, device="cuda", dtype=dt)
        A = torch.empty(8, 4, device="cuda")
        B = torch.empty(2, 4, 13, device="cuda", dtype=dt)
        D = torch.empty(8, device="cuda")
        y, last = _ops.selective_scan_op(u, u, A, B, B, D, u, D, True)
        assert (y.device.type, y.dtype, last.dtype) == ("cuda", act, f32)
        g = _ops.selective_scan_backward_op(u, u, A, B, B, D, u, D, True, y, last)
        assert [t.dtype for t in g] == [act, act, f32, f32, f32, f32, act, f32]
        assert all(t.device.type == "cuda" for t in g)
        assert st.selective_scan_fn(u, u, A, B, B).dtype == dt
        w = torch.empty(8, 4, device="cuda", dtype=dt)
        y, fin = _ops.causal_conv1d_op(u, w, None, None, True)
        assert (y.device.type, y.dtype, fin.dtype) == ("cuda", act, f32)
        g = _ops.causal_conv1d_backward_op(u, w, None, None, True, y, fin)
        assert [t.dtype for t in g] == [act, f32, f32, f32]
        assert all(t.device.type == "cuda" for t in g)
        q = torch.empty(1, 9, 4, 64, device="cuda", dtype=dt)
        k = torch.empty(1, 11, 2, 64, device="cuda", dtype=dt)
        out, lse = _ops.attention_op(q, k, k, 0.125, -1, 0, 0.0)
        assert (out.device.type, out.dtype, lse.dtype) == ("cuda", act, f32)
        g = _ops.attention_backward_op(q, k, k, out, lse, out, 0.125, -1, 0, 0.0)
        assert [t.dtype for t in g] == [act, act, act]
        assert st.flash_attn_func(q, k, k, causal=True).dtype == dt
        s = torch.empty(2, 8, 4, device="cuda")
        x = torch.empty(2, 1, 8, device="cuda", dtype=dt)
        o = _inference.selective_state_update_op(s[:, None], x, x, A[None], B[:, None, :, 0],
                                                 B[:, None, :, 0], None, None, None, True,
                                                 None)
        assert (o.device.type, o.dtype) == ("cuda", act)
        o = _inference.causal_conv1d_update_op(u, s[:, :, :3], w, None, True, None, None)
        assert (o.device.type, o.dtype) == ("cuda", act)
