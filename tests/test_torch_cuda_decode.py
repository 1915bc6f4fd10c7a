"""samba_ext.torch's decode ops on CUDA tensors: selective_state_update, causal_conv1d_update
and flash_attn_with_kvcache against float64 references of the same rounded inputs
(ref_scan.selective_state_update_ref, and the loop references of test_torch_inference.py
and test_torch_kvcache.py), in float32, float16 and bfloat16: both state layouts, state rows
picked by index, wider and circular conv states, several tokens at once, GQA, per-row cache
lengths, cache_batch_idx, left padding, paged caches, windows shorter and longer than the
cache, softcap, rotary tables, no new keys. Every state / cache is checked to be the
caller's CUDA tensor, mutated in place (same data_ptr) with exactly the expected contents
and the rows that must not change unchanged; outputs on the input's device and dtype and
NaN-free (new samba_ext outputs start as NaN, the ``poison`` fixture). Also: no host
transfer or synchronization in the state updates, and selective_state_update inside
torch.compile(fullgraph=True).

Tolerances (relative Frobenius norm unless said; NaN/Inf never pass):
* state updates: float32 arithmetic of a short sum (<= dstate products for out, three terms
  per state element; the GPU's exp within a few ulp): 1e-5, as on the CPU
  (test_torch_inference.py, measured ~1e-7 there). A result stored in float16 / bfloat16
  (out in x's dtype, the state in its own) adds that rounding, HALF[dtype] (as in
  test_torch_cuda.py: float16 2e-3, bfloat16 1e-2). Moving tokens through a conv state is
  copying: exact.
* conv update out: CONV = 2e-5 (sum of <= 4 products, fast SiLU) plus HALF[x dtype].
* kv-cache out: float32 1e-5 (the exact float32 CUDA-core attention, ex2.approx with
  relative error 2^-22: measured <= 3e-7 on the CPU test's sizes); float16 / bfloat16
  cuda_util.RTOL (the tensor-core forward rounds P to the dtype before P V, then the output:
  tests/test_cuda_attention.py). lse: within 2e-5 absolute (float32 scores of exact products,
  as in test_cuda_grad_attention.py), +inf exactly where a query sees no key. The appended
  keys are copies: the caches must equal the reference exactly; rotated keys (float32
  caches) carry float32 rounding of the rotation: 1e-6, as on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
from cuda_util import RTOL  # noqa: E402
from ref_scan import selective_state_update_ref  # noqa: E402
from test_grad_attention_alibi import slopes  # noqa: E402
from test_torch_inference import conv_update_ref  # noqa: E402
from test_torch_kvcache import kvcache_ref  # noqa: E402
from torch_cuda_util import f64, gpu, gpu_tensor, on_gpu_as  # noqa: E402

import samba_ext.torch as st  # noqa: E402

DTYPES = ["float32", "float16", "bfloat16"]
HALF = {"float32": 0.0, "float16": RTOL["float16"] - RTOL["float32"],
        "bfloat16": RTOL["bfloat16"] - RTOL["float32"]}
CONV = 2e-5


def name(t) -> str:
    return str(t.dtype).replace("torch.", "")


# ------------------------------------------------------------ selective_state_update ---
# (multi-head layout, batch, nheads, headdim, dstate, ngroups, state dtype, x dtype, state
#  rows (> batch: state_batch_indices), options)
SSU_CASES = [
    (False, 3, 1, 24, 16, 1, "float32", "float32", 3, ("D", "z", "dt_bias", "softplus")),
    (True, 2, 8, 64, 16, 2, "bfloat16", "bfloat16", 2,
     ("D", "z", "dt_bias", "softplus", "head_A")),
    (True, 3, 4, 16, 128, 4, "float32", "float16", 5, ("D", "softplus")),
    (True, 1, 6, 8, 256, 3, "float16", "float32", 4, ("z", "dt_bias")),
]


@gpu
@pytest.mark.parametrize("case", SSU_CASES, ids=lambda c: "x".join(map(str, c[1:6])))
def test_selective_state_update(rng, poison, case):
    heads, nb, nh, hp, nn, ng, sdt, xdt, rows, opts = case
    lead = (nh, hp) if heads else (nh * hp,)
    state = gpu_tensor(rng, (rows,) + lead + (nn,), sdt)
    x = gpu_tensor(rng, (nb,) + lead, xdt)
    dt = gpu_tensor(rng, (nb,) + lead, xdt, 0.5)
    if "head_A" in opts:   # one A per head, broadcast (a stride-0 view, as Mamba-2 passes)
        A = (-torch.exp(gpu_tensor(rng, (nh,), scale=0.5)))[:, None, None].expand(nh, hp, nn)
    else:
        A = -torch.exp(gpu_tensor(rng, lead + (nn,), scale=0.5))
    B = gpu_tensor(rng, (nb, ng, nn) if heads else (nb, nn), xdt)
    C = gpu_tensor(rng, tuple(B.shape), xdt)
    D = gpu_tensor(rng, lead) if "D" in opts else None
    z = gpu_tensor(rng, (nb,) + lead, xdt) if "z" in opts else None
    dt_bias = gpu_tensor(rng, lead, scale=0.3) if "dt_bias" in opts else None
    idx = (torch.tensor(rng.permutation(rows)[:nb], dtype=torch.int32, device="cuda")
           if rows > nb else None)
    before, ptr = state.clone(), state.data_ptr()
    out = st.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, "softplus" in opts,
                                    state_batch_indices=idx)
    on_gpu_as(out, x)
    assert state.data_ptr() == ptr and state.dtype == getattr(torch, sdt)
    sel = list(range(nb)) if idx is None else idx.tolist()
    dim = nh * hp

    def flat(t, *shape):
        return None if t is None else f64(t).reshape(*shape)
    y_ref, s_ref = selective_state_update_ref(
        flat(before, rows, dim, nn)[sel], flat(x, nb, dim), flat(dt, nb, dim),
        flat(A, dim, nn), f64(B) if heads else f64(B)[:, None], f64(C) if heads else
        f64(C)[:, None], flat(D, dim), flat(z, nb, dim), flat(dt_bias, dim),
        "softplus" in opts)
    assert_close(f64(out).reshape(nb, dim), y_ref, 1e-5 + HALF[xdt], "out")
    assert_close(flat(state, rows, dim, nn)[sel], s_ref, 1e-5 + HALF[sdt], "state")
    for r in set(range(rows)) - set(sel):
        assert torch.equal(state[r], before[r]), f"state row {r} changed"


# -------------------------------------------------------------- causal_conv1d_update ---
# (batch, dim, seqlen (0: x is (batch, dim)), width, state_len, state dtype, x dtype,
#  circular (cache_seqlens), state rows (> batch: conv_state_indices), activation, bias)
CONV_CASES = [
    (3, 24, 0, 4, 3, "float32", "float32", False, 3, "silu", True),
    (2, 64, 0, 4, 4, "bfloat16", "bfloat16", False, 2, None, True),   # mamba_ssm's d_conv
    (2, 16, 3, 3, 5, "float16", "float32", True, 4, "silu", False),
    (1, 8, 7, 2, 4, "float32", "bfloat16", True, 1, None, True),      # more tokens than slots
]


@gpu
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_causal_conv1d_update(rng, poison, case):
    nb, d, L, W, S, sdt, xdt, circular, rows, act, has_bias = case
    x = gpu_tensor(rng, (nb, d) if L == 0 else (nb, d, L), xdt)
    state = gpu_tensor(rng, (rows, d, S), sdt)
    w = gpu_tensor(rng, (d, W), xdt, 0.5)
    bias = gpu_tensor(rng, (d,), xdt, 0.3) if has_bias else None
    seq = (torch.tensor(rng.integers(0, 20, nb), dtype=torch.int32, device="cuda")
           if circular else None)
    idx = (torch.tensor(rng.permutation(rows)[:nb], dtype=torch.int32, device="cuda")
           if rows > nb else None)
    before, ptr = state.clone(), state.data_ptr()
    out = st.causal_conv1d_update(x, state, w, bias, act, cache_seqlens=seq,
                                  conv_state_indices=idx)
    on_gpu_as(out, x)
    assert out.shape == x.shape and state.data_ptr() == ptr
    sel = list(range(nb)) if idx is None else idx.tolist()
    x3 = f64(x).reshape(nb, d, max(L, 1))
    s_ref, y_ref = conv_update_ref(x3, f64(before)[sel], f64(w), f64(bias), act is not None,
                                   None if seq is None else seq.tolist())
    assert_close(f64(out).reshape(nb, d, -1), y_ref, CONV + HALF[xdt], "out")
    # the state holds copies of earlier states and of x, in its own dtype: exact
    want = torch.tensor(s_ref).to(state.dtype)
    assert torch.equal(state[sel].cpu(), want), "conv_state contents"
    for r in set(range(rows)) - set(sel):
        assert torch.equal(state[r], before[r]), f"conv_state row {r} changed"


@gpu
def test_state_updates_padding(rng, poison):
    """Index entries of -1 (the peers' pad slot): out rows exactly 0 (no NaN from the poisoned
    outputs), the padded rows' states untouched, the valid rows as the float64 references."""
    nb, d, W, S, rows = 6, 40, 4, 5, 12
    idx_l = [7, -1, 2, -1, -1, 10]
    ok = [b for b, i in enumerate(idx_l) if i >= 0]
    sel = [idx_l[b] for b in ok]
    idx = torch.tensor(idx_l, dtype=torch.int32, device="cuda")
    x = gpu_tensor(rng, (nb, d, 2), "bfloat16")
    state = gpu_tensor(rng, (rows, d, S), "bfloat16")
    w = gpu_tensor(rng, (d, W), "bfloat16", 0.5)
    before = state.clone()
    out = st.causal_conv1d_update(x, state, w, None, "silu", conv_state_indices=idx)
    on_gpu_as(out, x)
    assert not out[[1, 3, 4]].any()
    s_ref, y_ref = conv_update_ref(f64(x)[ok], f64(before)[sel], f64(w), None, True)
    assert_close(f64(out)[ok], y_ref, CONV + HALF["bfloat16"], "out")
    assert torch.equal(state[sel].cpu(), torch.tensor(s_ref).to(state.dtype))
    for r in set(range(rows)) - set(sel):
        assert torch.equal(state[r], before[r]), f"conv_state row {r} changed"

    N = 16
    ss = gpu_tensor(rng, (rows, d, N))
    xs, dt = gpu_tensor(rng, (nb, d)), gpu_tensor(rng, (nb, d), scale=0.5)
    A = -torch.exp(gpu_tensor(rng, (d, N), scale=0.5))
    B, C = gpu_tensor(rng, (nb, N)), gpu_tensor(rng, (nb, N))
    sbefore = ss.clone()
    y = st.selective_state_update(ss, xs, dt, A, B, C, dt_softplus=True, state_batch_indices=idx)
    on_gpu_as(y, xs)
    assert not y[[1, 3, 4]].any()
    y_ref, s_ref = selective_state_update_ref(f64(sbefore)[sel], f64(xs)[ok], f64(dt)[ok],
                                              f64(A), f64(B)[ok], f64(C)[ok],
                                              dt_softplus=True)
    assert_close(f64(y)[ok], y_ref, 1e-5, "out")       # float32 state and x: 1e-5, as above
    assert_close(f64(ss)[sel], s_ref, 1e-5, "state")
    for r in set(range(rows)) - set(sel):
        assert torch.equal(ss[r], sbefore[r]), f"state row {r} changed"


# ----------------------------------------------------------- flash_attn_with_kvcache ---
def kv_case(rng, dtype, nb, lq, lnew, nh, nhk, hd, cap, batch_idx, leftpad, spare=1):
    """CPU float64-exact tensors in dtype: caches with spare rows, distinct fill lengths that
    leave room for lnew new keys, optional row permutation and left padding."""
    def r(*shape):
        return torch.tensor(rng.standard_normal(shape)).to(getattr(torch, dtype))
    rows = nb + spare
    seqlens = torch.tensor(rng.choice(cap - lnew + 1, size=nb, replace=False),
                           dtype=torch.int32)
    c = dict(q=r(nb, lq, nh, hd), k_cache=r(rows, cap, nhk, hd), v_cache=r(rows, cap, nhk, hd),
             k=r(nb, lnew, nhk, hd) if lnew else None, v=r(nb, lnew, nhk, hd) if lnew else None,
             cache_seqlens=seqlens,
             cache_batch_idx=(torch.tensor(rng.permutation(rows)[:nb], dtype=torch.int32)
                              if batch_idx else None),
             cache_leftpad=(torch.tensor([rng.integers(0, int(s) + 1) for s in seqlens],
                                         dtype=torch.int32) if leftpad else None))
    return c


def cuda_copy(case):
    return {k: None if v is None else v.to("cuda") for k, v in case.items()}


def check_lse(got, want) -> None:
    got, want = f64(got), want.numpy()
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf) and np.all(got[inf] > 0), "lse +inf pattern"
    np.testing.assert_allclose(got[~inf], want[~inf], rtol=0, atol=2e-5, err_msg="lse")


# (batch, seqlen_q, seqlen_new, nheads, nheads_k, headdim, cache len, cache_batch_idx,
#  cache_leftpad, causal, window_size, softcap)
KV_CASES = [
    (3, 1, 1, 8, 2, 128, 40, True, False, True, (-1, -1), 0.0),   # decode, GQA
    (2, 5, 5, 4, 4, 64, 33, False, False, True, (7, 0), 0.0),     # window shorter than cache
    (2, 3, 2, 6, 3, 64, 21, True, True, False, (100, 2), 5.0),    # longer, two-sided, softcap
    (2, 4, 0, 4, 2, 64, 17, False, False, False, (-1, -1), 0.0),  # no new keys
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", KV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_flash_attn_with_kvcache(rng, poison, dtype, case):
    nb, lq, lnew, nh, nhk, hd, cap, bidx, lpad, causal, window, cap_ = case
    cpu = kv_case(rng, dtype, nb, lq, lnew, nh, nhk, hd, cap, bidx, lpad)
    gpu_args = cuda_copy(cpu)
    kc, vc = gpu_args["k_cache"], gpu_args["v_cache"]
    ptrs = (kc.data_ptr(), vc.data_ptr())
    out, lse = st.flash_attn_with_kvcache(**gpu_args, causal=causal, window_size=window,
                                          softcap=cap_, return_softmax_lse=True)
    on_gpu_as(out, gpu_args["q"])
    assert lse.device == out.device and lse.dtype == torch.float32
    ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(
        cpu["q"], cpu["k_cache"], cpu["v_cache"], cpu["k"], cpu["v"], cpu["cache_seqlens"],
        cpu["cache_batch_idx"], cpu["cache_leftpad"], causal=causal, window=window,
        softcap=cap_)
    assert_close(f64(out), ref_out.numpy(), RTOL[dtype], "out")
    check_lse(lse, ref_lse)
    # appended in place into the caller's caches, in their dtype, nothing else touched
    assert (kc.data_ptr(), vc.data_ptr()) == ptrs
    assert torch.equal(kc.cpu(), ref_kc) and torch.equal(vc.cpu(), ref_vc)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_flash_attn_with_kvcache_paged(rng, poison, dtype):
    """block_table: position p of row b in block table[b, p // 8] at offset p % 8; compared
    with the contiguous reference on the gathered logical caches."""
    nb, lq, lnew, nh, nhk, hd, bs, per = 2, 2, 2, 4, 2, 64, 8, 3
    nblocks = nb * per + 2

    def r(*shape):
        return torch.tensor(rng.standard_normal(shape)).to(getattr(torch, dtype))
    q, k, v = r(nb, lq, nh, hd), r(nb, lnew, nhk, hd), r(nb, lnew, nhk, hd)
    kc, vc = r(nblocks, bs, nhk, hd), r(nblocks, bs, nhk, hd)
    table = torch.tensor(rng.permutation(nblocks)[:nb * per].reshape(nb, per),
                         dtype=torch.int32)
    seqlens = torch.tensor(rng.integers(0, per * bs - lnew + 1, nb), dtype=torch.int32)

    def logical(c):
        return c[table.long()].reshape(nb, per * bs, nhk, hd)
    ref_out, ref_lse, ref_kl, ref_vl = kvcache_ref(q, logical(kc), logical(vc), k, v, seqlens,
                                                   causal=True)
    g = cuda_copy(dict(q=q, k_cache=kc, v_cache=vc, k=k, v=v, cache_seqlens=seqlens,
                       block_table=table))
    out, lse = st.flash_attn_with_kvcache(**g, causal=True, return_softmax_lse=True)
    on_gpu_as(out, g["q"])
    assert_close(f64(out), ref_out.numpy(), RTOL[dtype], "out")
    check_lse(lse, ref_lse)
    kc_after, vc_after = g["k_cache"].cpu(), g["v_cache"].cpu()
    assert torch.equal(logical(kc_after), ref_kl) and torch.equal(logical(vc_after), ref_vl)
    unused = sorted(set(range(nblocks)) - set(table.flatten().tolist()))
    assert torch.equal(kc_after[unused], kc[unused]) and torch.equal(vc_after[unused],
                                                                     vc[unused])


@gpu
@pytest.mark.parametrize("interleaved", [True, False])
def test_flash_attn_with_kvcache_rotary(rng, poison, interleaved):
    cpu = kv_case(rng, "float32", 2, 3, 3, 4, 2, 64, 12, True, False)
    angle = torch.tensor(rng.uniform(0, 2 * math.pi, (16, 16)), dtype=torch.float32)
    cos, sin = torch.cos(angle), torch.sin(angle)                  # rotary_dim 32 of 64
    g = cuda_copy(cpu)
    out, lse = st.flash_attn_with_kvcache(**g, rotary_cos=cos.cuda(), rotary_sin=sin.cuda(),
                                          rotary_interleaved=interleaved, causal=True,
                                          return_softmax_lse=True)
    ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(
        cpu["q"], cpu["k_cache"], cpu["v_cache"], cpu["k"], cpu["v"], cpu["cache_seqlens"],
        cpu["cache_batch_idx"], causal=True, rotary=(cos, sin), interleaved=interleaved)
    on_gpu_as(out, g["q"])
    assert_close(f64(out), ref_out.numpy(), RTOL["float32"], "out")
    check_lse(lse, ref_lse)
    assert_close(f64(g["k_cache"]), ref_kc.numpy(), 1e-6, "rotated k_cache")
    assert torch.equal(g["v_cache"].cpu(), ref_vc)


# ------------------------------------------------------ transfers, compile, refusals ---
@gpu
def test_state_updates_without_host_transfers(rng, poison, monkeypatch):
    """The state updates (without index tensors, whose range check reads them) make no
    host <-> device copy or synchronization."""
    from samba_ext import _cuda

    def refuse(*args, **kwargs):
        raise AssertionError("a host transfer or synchronization in a CUDA op")

    state = gpu_tensor(rng, (2, 4, 16, 8), "bfloat16")
    x = gpu_tensor(rng, (2, 4, 16), "bfloat16")
    A = -torch.exp(gpu_tensor(rng, (4, 16, 8)))
    B = gpu_tensor(rng, (2, 2, 8), "bfloat16")
    cstate = gpu_tensor(rng, (2, 64, 3), "bfloat16")
    xc = gpu_tensor(rng, (2, 64), "bfloat16")
    w = gpu_tensor(rng, (64, 4), "bfloat16")
    for fn in ("memcpy_h2d", "memcpy_d2h", "stream_sync", "device_sync"):
        monkeypatch.setattr(_cuda, fn, refuse)
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = st.selective_state_update(state, x, x, A, B, B, dt_softplus=True)
        yc = st.causal_conv1d_update(xc, cstate, w, activation="silu")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    on_gpu_as(y, x)
    on_gpu_as(yc, xc)


@gpu
def test_state_update_compiled(rng, poison):
    """selective_state_update inside torch.compile(fullgraph=True) mutates the caller's
    state as eager does (the same kernel on the same inputs: float32 state, no atomics)."""
    import importlib.util
    state = gpu_tensor(rng, (3, 4, 16, 8))
    x = gpu_tensor(rng, (3, 4, 16), "bfloat16")
    A = -torch.exp(gpu_tensor(rng, (4, 16, 8)))
    B = gpu_tensor(rng, (3, 2, 8), "bfloat16")
    s_eager, s_comp = state.clone(), state.clone()

    def step(s, x, A, B):
        return st.selective_state_update(s, x, x, A, B, B, dt_softplus=True)

    backend = "inductor" if importlib.util.find_spec("triton") else "aot_eager"
    y_comp = torch.compile(step, fullgraph=True, backend=backend)(s_comp, x, A, B)
    y_eager = step(s_eager, x, A, B)
    on_gpu_as(y_comp, x)
    assert_close(f64(y_comp), f64(y_eager), 1e-6, "out")
    assert_close(f64(s_comp), f64(s_eager), 1e-6, "state")
    assert not torch.equal(s_comp, state)


@gpu
def test_opcheck_decode_cuda(rng, poison):
    """Schema (the declared mutations) and fake implementations against the real CUDA
    outputs of the three decode ops, bfloat16 inputs with float32 and bfloat16 states."""
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    from samba_ext.torch import _inference, _kvcache
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    i64 = dict(dtype=torch.int64, device="cuda")
    for sdt in ("float32", "bfloat16"):
        state = gpu_tensor(rng, (4, 4, 16, 8), sdt)
        x = gpu_tensor(rng, (3, 4, 16), "bfloat16")
        A = -torch.exp(gpu_tensor(rng, (4, 16, 8)))
        B = gpu_tensor(rng, (3, 2, 8), "bfloat16")
        D = gpu_tensor(rng, (4, 16))
        opcheck(_inference.selective_state_update_op,
                (state, x, x, A, B, B, D, x, D, True, torch.tensor([2, 0, 3], **i64)),
                test_utils=utils)
        xc = gpu_tensor(rng, (3, 32, 2), "bfloat16")
        cstate = gpu_tensor(rng, (4, 32, 5), sdt)
        w = gpu_tensor(rng, (32, 4), "bfloat16")
        opcheck(_inference.causal_conv1d_update_op,
                (xc, cstate, w, None, True, torch.tensor([7, 0, 3], **i64),
                 torch.tensor([1, 3, 0], **i64)), test_utils=utils)
    q = gpu_tensor(rng, (2, 2, 4, 64), "bfloat16")
    kc = gpu_tensor(rng, (3, 16, 2, 64), "bfloat16")
    vc = gpu_tensor(rng, (3, 16, 2, 64), "bfloat16")
    k = gpu_tensor(rng, (2, 1, 2, 64), "bfloat16")
    opcheck(_kvcache.attention_kvcache_op,
            (q, kc, vc, k, k, None, None, torch.tensor([5, 9], **i64),
             torch.tensor([2, 0], **i64), None, None, 0.125, 3, 0, 0.0, True, True),
            test_utils=utils)


@gpu
def test_decode_refused_on_cuda(rng):
    x = gpu_tensor(rng, (2, 4))
    with pytest.raises(NotImplementedError, match="A: dstate"):
        st.selective_state_update(gpu_tensor(rng, (2, 4, 300)), x, x,
                                  -torch.ones(4, 300, device="cuda"),
                                  gpu_tensor(rng, (2, 300)), gpu_tensor(rng, (2, 300)))
    with pytest.raises(ValueError, match="conv_state"):
        st.causal_conv1d_update(x, torch.zeros(2, 4, 3), gpu_tensor(rng, (4, 4)))
    with pytest.raises(ValueError, match="cache_seqlens"):
        st.causal_conv1d_update(x, gpu_tensor(rng, (2, 4, 3)), gpu_tensor(rng, (4, 4)),
                                cache_seqlens=torch.zeros(2, dtype=torch.int32))
    q = gpu_tensor(rng, (1, 1, 2, 64))
    kc = gpu_tensor(rng, (1, 8, 2, 64))
    with pytest.raises(ValueError, match="cache_seqlens"):
        st.flash_attn_with_kvcache(q, kc, kc, q, q, cache_seqlens=torch.tensor([3]))
    with pytest.raises(ValueError, match="k_cache"):
        st.flash_attn_with_kvcache(q, kc.cpu(), kc, cache_seqlens=3)
    big = gpu_tensor(rng, (1, 1, 2, 264))
    with pytest.raises(NotImplementedError, match="q: headdim"):
        st.flash_attn_with_kvcache(big, gpu_tensor(rng, (1, 8, 2, 264)),
                                   gpu_tensor(rng, (1, 8, 2, 264)), cache_seqlens=3)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_batch", [False, True])
def test_flash_attn_with_kvcache_alibi(rng, poison, dtype, per_batch):
    """alibi_slopes (nheads,) or (batch, nheads) on CUDA tensors: the score of query i and key
    j gets -slope |i + n - seqlen_q - j| after the softcap, against the float64 loop
    reference; the new keys are appended as without ALiBi."""
    nb, lq, lnew, nh, nhk, hd, cap = 3, 3, 2, 8, 2, 64, 40
    cpu = kv_case(rng, dtype, nb, lq, lnew, nh, nhk, hd, cap, True, True)
    gpu_args = cuda_copy(cpu)
    al = torch.tensor(slopes(rng, nb, nh, per_batch), dtype=torch.float32)
    out, lse = st.flash_attn_with_kvcache(**gpu_args, causal=True, window_size=(20, 0),
                                          softcap=5.0, alibi_slopes=al.to("cuda"),
                                          return_softmax_lse=True)
    on_gpu_as(out, gpu_args["q"])
    ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(
        cpu["q"], cpu["k_cache"], cpu["v_cache"], cpu["k"], cpu["v"], cpu["cache_seqlens"],
        cpu["cache_batch_idx"], cpu["cache_leftpad"], causal=True, window=(20, 0), softcap=5.0,
        alibi=al)
    assert_close(f64(out), ref_out.numpy(), RTOL[dtype], "out")
    check_lse(lse, ref_lse)
    assert torch.equal(gpu_args["k_cache"].cpu(), ref_kc)
    assert torch.equal(gpu_args["v_cache"].cpu(), ref_vc)
