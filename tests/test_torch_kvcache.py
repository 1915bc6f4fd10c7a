"""samba_ext.torch.flash_attn_with_kvcache (skipped without torch) against a plainly written
float64 reference (below): the in-place cache append, GQA, decode and multi-token queries,
partially filled caches with a different length per row, cache_batch_idx, left padding,
paged caches, windows shorter and longer than the cache, causal or not, softcap, rotary
tables, the log-sum-exp, and the arguments that are refused.

Tolerances. The op computes in float32: each output is a softmax-weighted sum of <= 40
value rows with scores from dot products of length <= 256, so its error is float32 rounding,
~1e-7 relative (plus exp's amplification of the score rounding, |s| * 6e-8 with |s| < 10);
rtol 1e-5 (relative norm) leaves a ~30x margin and still fails on a wrong mask, scale or
head mapping (O(1e-1) errors); measured <= 3e-7. lse: the same rounding on O(1) values,
atol 1e-5. Rotated keys are written into a float32 cache after a float32 rotation (two
products and a sum per element, <= 2 ulp): relative norm ~1e-7 against the float64
rotation, checked at 1e-6, which a wrong angle row or feature pairing (O(1) errors) does not
pass. Copying the new keys into the cache without rotation is exact, and so is everything
the call must not touch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
import samba_ext.torch as st  # noqa: E402

RTOL = 1e-5


def rand(rng, *shape, dtype=torch.float32):
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float64).to(dtype)


def rotate_ref(x, cos, sin, pos, interleaved):
    """float64, as complex numbers: pair (a, b) -> (a + ib) e^{i angle}; x (L, H, d),
    pos (L,) rows of the tables."""
    x = x.double().clone()
    half = cos.shape[1]
    rot = torch.complex(cos.double(), sin.double())[pos][:, None, :]     # (L, 1, half)
    if interleaved:
        a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    else:
        a, b = x[..., :half], x[..., half:2 * half]
    z = torch.complex(a, b) * rot
    if interleaved:
        x[..., 0:2 * half:2], x[..., 1:2 * half:2] = z.real, z.imag
    else:
        x[..., :half], x[..., half:2 * half] = z.real, z.imag
    return x


def kvcache_ref(q, k_cache, v_cache, k, v, seqlens, batch_idx=None, leftpad=None,
                causal=False, window=(-1, -1), softcap=0.0, scale=None, rotary=None,
                interleaved=True, alibi=None):
    """float64 loops over batch rows. Returns (out, lse, new k_cache, new v_cache); the
    caches are updated copies in their own dtype. alibi: slopes (nh,) or (nb, nh); the
    score of query i and key j gets -slope |i + nk - lq - j| after the softcap."""
    kc, vc = k_cache.clone(), v_cache.clone()
    nb, lq, nh, hd = q.shape
    group = nh // kc.shape[2]
    lnew = 0 if k is None else k.shape[1]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    left, right = window[0], 0 if causal else window[1]
    local = causal or 0 <= left < kc.shape[1] or 0 <= right < kc.shape[1]
    out = torch.zeros(nb, lq, nh, hd, dtype=torch.float64)
    lse = torch.zeros(nb, nh, lq, dtype=torch.float64)
    for b in range(nb):
        r = b if batch_idx is None else int(batch_idx[b])
        n0 = int(seqlens[b])
        qb = q[b].double()
        if k is not None:
            kb = k[b].double()
            if rotary is not None:
                kb = rotate_ref(kb, *rotary, torch.arange(n0, n0 + lnew), interleaved)
                qpos = torch.arange(n0, n0 + lq) if local else torch.full((lq,), n0)
                qb = rotate_ref(qb, *rotary, qpos, interleaved)
            kc[r, n0:n0 + lnew] = kb.to(kc.dtype)
            vc[r, n0:n0 + lnew] = v[b].to(vc.dtype)
        lo = 0 if leftpad is None else int(leftpad[b])
        keys = kc[r, lo:n0 + lnew].double().repeat_interleave(group, dim=1)   # (nk, H, d)
        vals = vc[r, lo:n0 + lnew].double().repeat_interleave(group, dim=1)
        nk = keys.shape[0]
        s = torch.einsum("qhd,khd->hqk", qb, keys) * scale
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        pos = torch.arange(lq)[:, None] + nk - lq           # query i's key position
        j = torch.arange(nk)[None, :]
        if alibi is not None:
            sl = alibi.double() if alibi.dim() == 1 else alibi[b].double()
            s = s - sl[:, None, None] * (pos - j).abs()
        keep = torch.ones(lq, nk, dtype=torch.bool)
        if left >= 0:
            keep &= j >= pos - left
        if right >= 0:
            keep &= j <= pos + right
        s = s.masked_fill(~keep, float("-inf"))
        m = torch.logsumexp(s, dim=-1)                      # -inf where no key is seen
        p = torch.where(keep, torch.exp(s - m[..., None]), torch.zeros((), dtype=s.dtype))
        out[b] = torch.einsum("hqk,khd->qhd", torch.nan_to_num(p), vals)
        lse[b] = torch.where(torch.isinf(m), torch.full_like(m, float("inf")), m)
    return out, lse, kc, vc


def make_case(rng, nb, lq, lnew, nh, nhk, hd, cap, batch_idx, spare=1, dtype=torch.float32):
    """Caches with extra rows (spare), distinct fill lengths per row that leave room for
    lnew new keys, and optionally a permutation of the cache rows."""
    rows = nb + spare
    seqlens = torch.tensor(rng.choice(cap - lnew + 1, size=nb, replace=False), dtype=torch.int32)
    idx = None
    if batch_idx:
        idx = torch.tensor(rng.permutation(rows)[:nb], dtype=torch.int32)
    return dict(q=rand(rng, nb, lq, nh, hd), k_cache=rand(rng, rows, cap, nhk, hd, dtype=dtype),
                v_cache=rand(rng, rows, cap, nhk, hd, dtype=dtype),
                k=rand(rng, nb, lnew, nhk, hd) if lnew else None,
                v=rand(rng, nb, lnew, nhk, hd) if lnew else None, cache_seqlens=seqlens,
                cache_batch_idx=idx)


def check_against_ref(case, got_out, got_lse, kc0, vc0, **opts):
    ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(
        case["q"], kc0, vc0, case["k"], case["v"], case["cache_seqlens"],
        case["cache_batch_idx"], case.get("cache_leftpad"), **opts)
    assert got_out.dtype == case["q"].dtype and got_lse.dtype == torch.float32
    assert_close(got_out.numpy(), ref_out.numpy(), RTOL, "out")
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(got_lse), fin) and bool((got_lse[~fin] == math.inf).all())
    np.testing.assert_allclose(got_lse[fin].numpy(), ref_lse[fin].numpy(), atol=1e-5, rtol=0)
    return ref_kc, ref_vc


@pytest.mark.parametrize("nb,lq,lnew,nh,nhk,hd,cap,causal,window,softcap,batch_idx", [
    (3, 1, 1, 8, 1, 64, 20, True, (-1, -1), 0.0, False),    # decode, GQA 8:1
    (2, 4, 4, 4, 4, 96, 24, True, (-1, -1), 0.0, True),     # prefill chunk, 1:1, permuted rows
    (3, 3, 2, 8, 1, 128, 32, False, (-1, -1), 0.0, True),   # seqlen_new != seqlen_q
    (2, 5, 5, 8, 8, 256, 16, True, (3, 0), 0.0, False),     # window shorter than the cache
    (2, 2, 2, 8, 1, 64, 16, False, (40, 40), 0.0, False),   # window longer than the cache
    (3, 2, 1, 8, 1, 64, 18, False, (2, 1), 0.0, True),      # two-sided window
    (3, 1, 0, 8, 1, 64, 12, False, (-1, -1), 0.0, True),    # no new keys
    (2, 3, 3, 4, 2, 64, 20, True, (5, -1), 2.0, False),     # softcap + window
    (2, 4, 1, 8, 8, 64, 9, True, (-1, -1), 1.5, True),      # seqlen_q > keys of some rows
])
def test_matches_reference(rng, nb, lq, lnew, nh, nhk, hd, cap, causal, window, softcap,
                           batch_idx):
    case = make_case(rng, nb, lq, lnew, nh, nhk, hd, cap, batch_idx)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out, lse = st.flash_attn_with_kvcache(**case, causal=causal, window_size=window,
                                          softcap=softcap, return_softmax_lse=True)
    ref_kc, ref_vc = check_against_ref(case, out, lse, kc0, vc0, causal=causal,
                                       window=window, softcap=softcap)
    # the append is a copy into the given positions, and nothing else changes
    assert torch.equal(case["k_cache"], ref_kc) and torch.equal(case["v_cache"], ref_vc)


@pytest.mark.parametrize("per_batch,causal,window,leftpad", [
    (False, True, (-1, -1), False), (True, False, (2, 1), False), (True, True, (-1, -1), True)])
def test_alibi(rng, per_batch, causal, window, leftpad):
    """alibi_slopes (nheads,) or (batch, nheads) against the float64 reference with the
    same bias, with new keys appended, cache_batch_idx and (last case) cache_leftpad."""
    case = make_case(rng, 3, 2, 2, 8, 2, 64, 14, True)
    if leftpad:
        seq = case["cache_seqlens"].long()
        case["cache_leftpad"] = torch.minimum(seq, torch.tensor([1, 0, 2])).to(torch.int32)
    al = torch.tensor(rng.uniform(0.05, 0.8, (3, 8) if per_batch else (8,)),
                      dtype=torch.float32)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out, lse = st.flash_attn_with_kvcache(**case, causal=causal, window_size=window,
                                          alibi_slopes=al, return_softmax_lse=True)
    check_against_ref(case, out, lse, kc0, vc0, causal=causal, window=window, alibi=al)
    bad = dict(case, k=None, v=None)
    with pytest.raises(ValueError, match="alibi_slopes: expected shape"):
        st.flash_attn_with_kvcache(**bad, alibi_slopes=torch.ones(4))
    with pytest.raises(TypeError, match="alibi_slopes"):
        st.flash_attn_with_kvcache(**bad, alibi_slopes=torch.ones(8, dtype=torch.int64))


@pytest.mark.parametrize("window", [torch.tensor([3, 1]),
                                    (torch.tensor(2, dtype=torch.int32), torch.tensor(-1))])
def test_window_size_tensors(rng, window):
    """window_size as 0-d integer tensors (flash-attn's tests pass ``torch.randint(0, n,
    (2,))``): the same as the ints, against the float64 reference; float tensors refused."""
    case = make_case(rng, 2, 3, 2, 4, 2, 64, 12, False)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    ints = tuple(int(w) for w in window)
    out, lse = st.flash_attn_with_kvcache(**case, window_size=window, return_softmax_lse=True)
    ref_kc, ref_vc = check_against_ref(case, out, lse, kc0, vc0, window=ints)
    assert torch.equal(case["k_cache"], ref_kc) and torch.equal(case["v_cache"], ref_vc)
    with pytest.raises(TypeError, match=r"window_size\[0\]"):
        st.flash_attn_with_kvcache(case["q"], case["k_cache"], case["v_cache"],
                                   cache_seqlens=case["cache_seqlens"],
                                   window_size=(torch.tensor(2.0), -1))


def test_scalar_seqlens_scale_dtypes(rng):
    """int cache_seqlens, an explicit softmax_scale, bfloat16 caches (the new keys rounded
    to bfloat16 when written, exactly as .to(bfloat16)), float16 q -> float16 out."""
    case = make_case(rng, 2, 2, 2, 4, 2, 64, 10, False, dtype=torch.bfloat16)
    case["cache_seqlens"] = 5
    case["q"] = case["q"].to(torch.float16)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out = st.flash_attn_with_kvcache(**case, softmax_scale=0.2, causal=True)
    assert out.dtype == torch.float16
    ref_out, _, ref_kc, ref_vc = kvcache_ref(case["q"], kc0, vc0, case["k"], case["v"], [5, 5],
                                             causal=True, scale=0.2)
    assert torch.equal(case["k_cache"], ref_kc) and torch.equal(case["v_cache"], ref_vc)
    # float16 output: rounding to 11 significant bits, relative 2^-11 per element
    assert_close(out.numpy(), ref_out.numpy(), 1e-3, "out")
    # cache_seqlens=None: the whole cache, no append
    full = st.flash_attn_with_kvcache(case["q"], case["k_cache"], case["v_cache"])
    ref_full = kvcache_ref(case["q"], case["k_cache"], case["v_cache"], None, None, [10, 10])[0]
    assert_close(full.numpy(), ref_full.numpy(), 1e-3, "full cache")


def test_queries_without_keys(rng):
    """Causal with more queries than keys: the first queries see nothing (out 0, lse
    +inf, as flash-attn), the others match the reference."""
    case = make_case(rng, 2, 3, 1, 4, 1, 64, 6, False)
    case["cache_seqlens"] = torch.tensor([0, 4], dtype=torch.int32)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out, lse = st.flash_attn_with_kvcache(**case, causal=True, return_softmax_lse=True)
    assert torch.equal(out[0, :2], torch.zeros_like(out[0, :2]))
    assert bool((lse[0, :, :2] == math.inf).all()) and bool(torch.isfinite(lse[0, :, 2]).all())
    check_against_ref(case, out, lse, kc0, vc0, causal=True)


def test_leftpad(rng):
    case = make_case(rng, 3, 2, 2, 8, 2, 64, 16, True)
    seq = case["cache_seqlens"].long()
    case["cache_leftpad"] = torch.tensor([int(rng.integers(0, int(s) + 1)) for s in seq],
                                         dtype=torch.int32)
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out, lse = st.flash_attn_with_kvcache(**case, causal=True, window_size=(4, -1),
                                          return_softmax_lse=True)
    ref_kc, _ = check_against_ref(case, out, lse, kc0, vc0, causal=True, window=(4, -1))
    assert torch.equal(case["k_cache"], ref_kc)


@pytest.mark.parametrize("new", [2, 0])
def test_paged(rng, new):
    """A paged cache gives what the same cache laid out contiguously gives."""
    nb, bs, nblk, nhk, hd = 3, 4, 5, 2, 64
    total = nb * nblk + 2                                   # two blocks no row uses
    table = torch.tensor(rng.permutation(total)[:nb * nblk].reshape(nb, nblk), dtype=torch.int32)
    kp, vp = rand(rng, total, bs, nhk, hd), rand(rng, total, bs, nhk, hd)
    seqlens = torch.tensor([3, 20 - new, 9], dtype=torch.int32)
    q = rand(rng, nb, 2, 8, hd)
    k = rand(rng, nb, new, nhk, hd) if new else None
    v = rand(rng, nb, new, nhk, hd) if new else None
    kp0, vp0 = kp.clone(), vp.clone()
    out, lse = st.flash_attn_with_kvcache(q, kp, vp, k, v, cache_seqlens=seqlens,
                                          block_table=table, causal=True,
                                          return_softmax_lse=True)
    flat = table.long()
    kc0, vc0 = kp0[flat].flatten(1, 2), vp0[flat].flatten(1, 2)    # (nb, nblk * bs, H, d)
    case = dict(q=q, k=k, v=v, cache_seqlens=seqlens, cache_batch_idx=None)
    ref_kc, ref_vc = check_against_ref(case, out, lse, kc0, vc0, causal=True)
    assert torch.equal(kp[flat].flatten(1, 2), ref_kc) and torch.equal(vp[flat].flatten(1, 2),
                                                                        ref_vc)
    unused = sorted(set(range(total)) - set(flat.flatten().tolist()))
    assert torch.equal(kp[unused], kp0[unused]) and torch.equal(vp[unused], vp0[unused])


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)),
                                           (False, (100, 100)), (False, (3, 3))])
def test_rotary(rng, interleaved, causal, window):
    """Keys rotated at their cache positions before the append; queries at cache_seqlens + i
    when causal or local, else all at cache_seqlens (a window wider than the cache is not
    local)."""
    case = make_case(rng, 2, 3, 3, 4, 2, 64, 12, True)
    angle = torch.tensor(rng.uniform(0, 2 * math.pi, (16, 16)), dtype=torch.float32)
    cos, sin = torch.cos(angle), torch.sin(angle)                  # rotary_dim 32 of 64
    kc0, vc0 = case["k_cache"].clone(), case["v_cache"].clone()
    out, lse = st.flash_attn_with_kvcache(**case, rotary_cos=cos, rotary_sin=sin,
                                          rotary_interleaved=interleaved, causal=causal,
                                          window_size=window, return_softmax_lse=True)
    ref_kc, ref_vc = check_against_ref(case, out, lse, kc0, vc0, causal=causal, window=window,
                                       rotary=(cos, sin), interleaved=interleaved)
    assert_close(case["k_cache"].numpy(), ref_kc.numpy(), 1e-6, "rotated k_cache")
    assert torch.equal(case["v_cache"], ref_vc)


def test_refused_arguments(rng):
    case = make_case(rng, 2, 1, 1, 4, 2, 64, 8, False)
    q, kc, vc, k, v = (case[n] for n in ("q", "k_cache", "v_cache", "k", "v"))
    seq = case["cache_seqlens"]
    kc0 = kc.clone()
    nie = [
        (dict(num_splits=2), "num_splits"),
        (dict(q=q.to("meta")), "q"),
        (dict(cache_seqlens=seq.to("meta")), "cache_seqlens"),
    ]
    for kw, name in nie:
        args = dict(q=q, k_cache=kc, v_cache=vc, k=k, v=v, cache_seqlens=seq) | kw
        with pytest.raises(NotImplementedError, match=name):
            st.flash_attn_with_kvcache(**args)
    bad = [
        (dict(v=None), "v"),
        (dict(cache_seqlens=None), "cache_seqlens"),
        (dict(cache_seqlens=8), "cache_seqlens"),                         # no room for k
        (dict(cache_seqlens=torch.tensor([1.0, 2.0])), "cache_seqlens"),
        (dict(cache_batch_idx=torch.tensor([1, 1], dtype=torch.int32)), "cache_batch_idx"),
        (dict(cache_batch_idx=torch.tensor([0, 3], dtype=torch.int32)), "cache_batch_idx"),
        (dict(cache_leftpad=seq.long() + 1), "cache_leftpad"),
        (dict(k=None, v=None, rotary_cos=torch.ones(8, 4), rotary_sin=torch.ones(8, 4)),
         "rotary_cos"),
        (dict(rotary_cos=torch.ones(8, 4)), "rotary_sin"),
        (dict(rotary_cos=torch.ones(8, 40), rotary_sin=torch.ones(8, 40)), "rotary_cos"),
        (dict(block_table=torch.zeros(2, 2, dtype=torch.int32),
              cache_batch_idx=torch.tensor([0, 1])), "cache_batch_idx"),
        (dict(k_cache=kc[:, :, :1].expand(3, 8, 3, 64),
              v_cache=vc[:, :, :1].expand(3, 8, 3, 64)), "q"),           # 4 % 3 heads
        (dict(v_cache=vc[:, :4]), "v_cache"),
        (dict(k=k[:, :, :, :32]), "k"),
        (dict(window_size=(-2, 0)), "window_size"),
        (dict(softcap=-1.0), "softcap"),
    ]
    for kw, name in bad:
        args = dict(q=q, k_cache=kc, v_cache=vc, k=k, v=v, cache_seqlens=seq) | kw
        with pytest.raises((ValueError, TypeError), match=name):
            st.flash_attn_with_kvcache(**args)
    assert torch.equal(kc, kc0)          # nothing was written by a refused call
    # flash-attn's paged bounds guard (test_flash_attn_kvcache_paged_block_table_bounds):
    # a row longer than block_table covers is refused naming both, as an error that is a
    # ValueError (samba_ext's convention) and a RuntimeError (what the test and flash-attn's
    # C++ checks expect)
    for k1, v1, n in ((None, None, 9), (k[:, :1], v[:, :1], 8)):
        with pytest.raises(RuntimeError, match="cache_seqlens.*block_table's 1 blocks of 8") as e:
            st.flash_attn_with_kvcache(q, kc[:, :8], vc[:, :8], k1, v1, cache_seqlens=n,
                                       block_table=torch.zeros(2, 1, dtype=torch.int32))
        assert isinstance(e.value, ValueError)
    st.flash_attn_with_kvcache(q, kc[:, :8], vc[:, :8], cache_seqlens=8,
                               block_table=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="block_table"):   # two rows writing one slot
        st.flash_attn_with_kvcache(q, kc[:2, :4], vc[:2, :4], k, v, cache_seqlens=0,
                                   block_table=torch.zeros(2, 1, dtype=torch.int32))


def test_opcheck(rng):
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    from samba_ext.torch import _kvcache
    case = make_case(rng, 2, 2, 1, 4, 2, 64, 8, True)
    idx = case["cache_batch_idx"].long()
    args = (case["q"], case["k_cache"], case["v_cache"], case["k"], case["v"], None, None,
            case["cache_seqlens"].long(), idx, None, None, 0.125, 3, 0, 0.0, True, True)
    opcheck(_kvcache.attention_kvcache_op, args,
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
