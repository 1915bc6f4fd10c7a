"""The CUDA side of :func:`samba_ext.grad.attention_fwd` / :func:`~samba_ext.grad.attention_bwd`
(csrc/cuda/attention_fwd_lse.cu, attention_bwd.cu, attention_bwd_mma.cu).

:mod:`samba_ext.grad` checks the arguments and calls here when an input lives on a CUDA
device, with the window already as (left, right) ints (-1 = unbounded, ``causal`` folded into
right = 0), softmax_scale as a float and softcap >= 0. The checks here only protect device
memory (``Call.fit``). Inputs: q, out, dout (batch, seqlen_q, nheads, headdim); k, v (batch,
seqlen_k, nheads_kv, headdim), float32 / float16 / bfloat16, any strides with a contiguous last
dim (else copied); lse (batch, nheads, seqlen_q), converted to float32 when needed; alibi
(nheads,) or (batch, nheads) ALiBi slopes or None, converted to float32. Results are
new DeviceArrays: out in q's dtype, lse float32, dq / dk / dv in the dtype of q / k / v, all
accumulated in float32.
"""
from __future__ import annotations

from typing import Any, Optional

from .call import Call
from .interop import ArrayView
from .runtime import keeps_device, launch

__all__ = ["attention_fwd", "attention_bwd"]


def _qkv(c: Call, q: Any, k: Any, v: Any) -> tuple[ArrayView, ArrayView, ArrayView]:
    qa = c.lastdim_contig(c.arr(q, "q", (4,)))
    ka = c.lastdim_contig(c.arr(k, "k", (4,)))
    va = c.lastdim_contig(c.arr(v, "v", (4,)))
    batch, _, H, hd = qa.shape
    Lk, Hkv = ka.shape[1], ka.shape[2]
    c.fit(ka, "k", batch, None, None, hd)
    c.fit(va, "v", batch, Lk, Hkv, hd)
    c.need(Hkv >= 1 and H % Hkv == 0, "k", "nheads must be a multiple of nheads_kv")
    return qa, ka, va


def _alibi(c: Call, alibi: Any, batch: int, H: int) -> tuple[Optional[int], int]:
    """(device pointer or None, batch stride) of the float32 ALiBi slopes (nheads,) (stride
    0: shared by the batch rows) or (batch, nheads)."""
    a = c.contig(c.arr(alibi, "alibi_slopes", (1, 2)), "float32")
    if a is None:
        return None, 0
    if a.ndim == 1:
        c.fit(a, "alibi_slopes", H)
        return a.ptr, 0
    c.fit(a, "alibi_slopes", batch, H)
    return a.ptr, H


def _forward(c: Call, qa: ArrayView, ka: ArrayView, va: ArrayView, scale: float, left: int,
             right: int, softcap: float, alibi: tuple[Optional[int], int]
             ) -> tuple[ArrayView, Any, ArrayView, Any]:
    batch, Lq, H, hd = qa.shape
    Lk, Hkv = ka.shape[1], ka.shape[2]
    oa, ores = c.output((batch, Lq, H, hd), qa.dtype)
    la, lres = c.state_output((batch, H, Lq))
    launch(c.cu.attention_fwd_lse, batch, Lq, Lk, H, Hkv, hd, left, right, scale, softcap,
           qa.ref, qa.strides[:3], ka.ref, ka.strides[:3], va.ref, va.strides[:3], oa.ref,
           oa.strides[:3], None, (0, 0, 0), la.ptr, None, None, None, c.stream, False, *alibi)
    return oa, ores, la, lres


@keeps_device
def attention_fwd(q: Any, k: Any, v: Any, scale: float, left: int, right: int, softcap: float,
                  alibi: Any = None, *, stream: Any = None) -> tuple[Any, Any]:
    """(out (batch, seqlen_q, nheads, headdim) in q's dtype, lse (batch, nheads, seqlen_q)
    float32); a query that sees no key gets out = 0, lse = -inf."""
    c = Call("grad.attention_fwd", dict(q=q, k=k, v=v, alibi_slopes=alibi), stream)
    qa, ka, va = _qkv(c, q, k, v)
    al = _alibi(c, alibi, qa.shape[0], qa.shape[2])
    _, ores, _, lres = _forward(c, qa, ka, va, float(scale), int(left), int(right),
                                float(softcap), al)
    return c.finish((ores, lres))


@keeps_device
def attention_bwd(q: Any, k: Any, v: Any, scale: float, left: int, right: int, softcap: float,
                  dout: Any, out: Optional[Any] = None, lse: Optional[Any] = None,
                  alibi: Any = None, *, deterministic: bool = False, stream: Any = None
                  ) -> tuple[Any, Any, Any]:
    """(dq, dk, dv) in the dtypes of q, k, v. out / lse: the forward's outputs; when either
    is None both are recomputed on the device first. deterministic: bitwise-repeatable
    (csrc/cuda/attention_bwd.cu)."""
    c = Call("grad.attention_bwd", dict(q=q, k=k, v=v, dout=dout, out=out, lse=lse,
                                        alibi_slopes=alibi), stream)
    qa, ka, va = _qkv(c, q, k, v)
    batch, Lq, H, hd = qa.shape
    al = _alibi(c, alibi, batch, H)
    Lk, Hkv = ka.shape[1], ka.shape[2]
    scale, left, right, softcap = float(scale), int(left), int(right), float(softcap)
    da = c.lastdim_contig(c.arr(dout, "dout", (4,)))
    c.fit(da, "dout", batch, Lq, H, hd)
    if out is None or lse is None:
        oa, ores, la, lres = _forward(c, qa, ka, va, scale, left, right, softcap, al)
        c.keep.extend((ores, lres))  # alive until the backward's kernels have run
    else:
        oa = c.lastdim_contig(c.arr(out, "out", (4,)))
        c.fit(oa, "out", batch, Lq, H, hd)
        la = c.contig(c.arr(lse, "lse", (3,)), "float32")
        c.fit(la, "lse", batch, H, Lq)
    dqa, dqr = c.output((batch, Lq, H, hd), qa.dtype)
    dka, dkr = c.output((batch, Lk, Hkv, hd), ka.dtype)
    dva, dvr = c.output((batch, Lk, Hkv, hd), va.dtype)
    launch(c.cu.attention_bwd, batch, Lq, Lk, H, Hkv, hd, left, right, scale, softcap, qa.ref,
           qa.strides[:3], ka.ref, ka.strides[:3], va.ref, va.strides[:3], oa.ref,
           oa.strides[:3], da.ref, da.strides[:3], la.ptr, dqa.ref, dka.ref, dva.ref, c.stream,
           bool(deterministic), *al)
    return c.finish((dqr, dkr, dvr))
