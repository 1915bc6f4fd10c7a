"""The CUDA backend of the kernel ops (csrc/cuda/*.cu through the ``_cuda`` extension).

Each function takes the arguments of its namesake in :mod:`samba_ext.kernels` (which checks
them against the op's contract, samba_ext/ops/contracts.py, before calling here) plus
``out=`` and ``stream=``. The checks here only protect device memory: the number of axes,
that the buffers fit together (``Call.fit``, one line per argument) and the layout of
arrays written in place. The model backend (samba_ext/backend_cuda.py) calls these
functions directly with arrays it made itself.

* CUDA arrays are used in place; float32, float16 and bfloat16 are read; arithmetic,
  accumulation and recurrent states are float32. Strided inputs are read through their
  strides where the kernel supports it and copied to C order otherwise.
* The result is a :class:`~samba_ext.cuda.array.DeviceArray` in the dtype of the main
  input, or the caller's ``out=`` object; NumPy inputs (``device="cuda"``) give float32
  NumPy results.
* A failed launch raises ``CudaError`` (a RuntimeError) naming the kernel; set
  ``SAMBA_EXT_CUDA_SYNC=1`` to synchronize after every launch.
* The work runs with the inputs' device current; the calling thread's current device is
  put back afterwards, also on error (:func:`~samba_ext.cuda.runtime.keeps_device`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .call import Call, strides_bgnl
from .interop import ArrayView, is_cuda_array
from .layout import DTYPES
from .runtime import keeps_device, launch

__all__ = ["selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
           "swa_attention", "swa_decode", "rms_norm", "apply_rotary", "swiglu"]


@keeps_device
def selective_scan(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None,
                   delta_bias: Any = None, delta_softplus: bool = False,
                   initial_state: Any = None, return_last_state: bool = False, *,
                   out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.selective_scan`. y has u's dtype; states float32."""
    c = Call("selective_scan", dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                    delta_bias=delta_bias, initial_state=initial_state,
                                    out=out), stream)
    ua = c.arr(u, "u", (3,))
    batch, dim, L = ua.shape
    da = c.arr(delta, "delta", (3,))
    Aa = c.contig(c.arr(A, "A", (2,)))
    N = Aa.shape[1]
    Ba = c.arr(B, "B", (3, 4))
    Ca = c.arr(C, "C", (3, 4))
    G = Ba.shape[1] if Ba.ndim == 4 else 1
    Da = c.contig(c.arr(D, "D", (1,)))
    dba = c.contig(c.arr(delta_bias, "delta_bias", (1,)))
    za = c.arr(z, "z", (3,))
    init = c.contig(c.arr(initial_state, "initial_state", (3,)), "float32")
    c.fit(da, "delta", batch, dim, L)
    c.fit(Aa, "A", dim, N)
    c.fit(Ba, "B", *((batch, N, L) if Ba.ndim == 3 else (batch, G, N, L)))
    c.fit(Ca, "C", *((batch, N, L) if G == 1 and Ca.ndim == 3 else (batch, G, N, L)))
    c.fit(Da, "D", dim)
    c.fit(dba, "delta_bias", dim)
    c.fit(za, "z", batch, dim, L)
    c.fit(init, "initial_state", batch, dim, N)
    c.need(G >= 1 and dim % G == 0, "B", "ngroups must divide dim")
    if Ba.dtype != Ca.dtype:
        Ba, Ca = c.convert(Ba, "float32"), c.convert(Ca, "float32")
    ya, yres = c.output((batch, dim, L), ua.dtype, out)
    fin, fres = (c.state_output((batch, dim, N)) if return_last_state else (None, None))
    zero3 = (0, 0, 0)
    launch(c.cu.selective_scan, batch, dim, N, L, G, ua.ref, da.ref, Aa.ref, Ba.ref, Ca.ref,
           Da.ref if Da else None, za.ref if za else None, dba.ref if dba else None, ya.ref,
           ua.strides, da.strides, za.strides if za else zero3, ya.strides, strides_bgnl(Ba),
           strides_bgnl(Ca), int(bool(delta_softplus)), init.ptr if init else None,
           fin.ptr if fin else None, c.stream)
    return c.finish((yres, fres) if return_last_state else yres)


@keeps_device
def selective_state_update(state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any, D: Any = None,
                           z: Any = None, dt_bias: Any = None, dt_softplus: bool = False, *,
                           out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.selective_state_update` (state float32, in place)."""
    c = Call("selective_state_update", dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z,
                                            dt_bias=dt_bias, out=out), stream)
    a = StepArgs(c, state, x, A, B, C, D, z, dt_bias)
    dta = c.arr(dt, "dt", (2,))
    c.fit(dta, "dt", a.batch, a.dim)
    ya, yres = c.output((a.batch, a.dim), a.x.dtype, out)
    launch(c.cu.selective_state_update, a.batch, a.dim, a.N, a.G, a.state.ptr, a.x.ref, dta.ref,
           a.A.ref, a.B.ref, a.C.ref, a.opt("D"), a.opt("z"), a.opt("dt_bias"), ya.ref,
           a.x.strides, dta.strides, a.z.strides if a.z else (0, 0), ya.strides, a.s3(a.B),
           a.s3(a.C), int(bool(dt_softplus)), c.stream)
    return c.finish(yres)


class StepArgs:
    """The checked arguments of a one-step state update other than dt (shared by
    :func:`selective_state_update` and samba_ext.cuda.decode.dt_state_update): state (batch,
    dim, N) float32 updated in place, x (batch, dim), A (dim, N), B and C (batch, N) or (batch,
    G, N), D and dt_bias (dim,), z (batch, dim)."""

    def __init__(self, c: Call, state: Any, x: Any, A: Any, B: Any, C: Any, D: Any, z: Any,
                 dt_bias: Any) -> None:
        self.state = c.inplace(state, "state", 3)
        self.batch, self.dim, self.N = batch, dim, N = self.state.shape
        self.x = c.arr(x, "x", (2,))
        self.A = c.contig(c.arr(A, "A", (2,)))
        self.B = c.arr(B, "B", (2, 3))
        self.C = c.arr(C, "C", (2, 3))
        self.G = G = self.B.shape[1] if self.B.ndim == 3 else 1
        self.D = c.contig(c.arr(D, "D", (1,)))
        self.dt_bias = c.contig(c.arr(dt_bias, "dt_bias", (1,)))
        self.z = c.arr(z, "z", (2,))
        c.fit(self.x, "x", batch, dim)
        c.fit(self.A, "A", dim, N)
        c.fit(self.B, "B", *((batch, N) if self.B.ndim == 2 else (batch, G, N)))
        c.fit(self.C, "C", *((batch, N) if G == 1 and self.C.ndim == 2 else (batch, G, N)))
        c.fit(self.D, "D", dim)
        c.fit(self.dt_bias, "dt_bias", dim)
        c.fit(self.z, "z", batch, dim)
        c.need(G >= 1 and dim % G == 0, "B", "ngroups must divide dim")

    def opt(self, name: str) -> Any:
        """The kernel reference of an optional input (D, z, dt_bias), or None."""
        v = getattr(self, name)
        return v.ref if v else None

    @staticmethod
    def s3(a: ArrayView) -> tuple:
        """B's or C's (batch, group, state) strides (group stride 0 for a 2-D array)."""
        return (a.strides[0], 0, a.strides[1]) if a.ndim == 2 else tuple(a.strides)


def _activation(activation: Optional[str]) -> int:
    """None -> 0, "silu" / "swish" -> 1 (the contract explains any other value)."""
    if activation is None:
        return 0
    if activation in ("silu", "swish"):
        return 1
    raise ValueError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")


def _conv_weight(c: Call, weight: Any, dim: int) -> ArrayView:
    wa = c.contig(c.arr(weight, "weight", (2,)))
    c.fit(wa, "weight", dim, None)
    c.need(2 <= wa.shape[1] <= 4, "weight", "width must be 2, 3 or 4")
    return wa


@keeps_device
def causal_conv1d(x: Any, weight: Any, bias: Any = None, activation: Optional[str] = None,
                  initial_states: Any = None, return_final_states: bool = False, *,
                  seq_idx: Any = None, out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.causal_conv1d`. y has x's dtype; states float32.
    seq_idx: int32 / int64 on the device, read in place through its strides (a host array
    is uploaded as int64)."""
    silu = _activation(activation)
    c = Call("causal_conv1d", dict(x=x, weight=weight, bias=bias,
                                   initial_states=initial_states, seq_idx=seq_idx, out=out),
             stream)
    xa = c.arr(x, "x", (3,))
    batch, dim, L = xa.shape
    wa = _conv_weight(c, weight, dim)
    W = wa.shape[1]
    ba = c.contig(c.arr(bias, "bias", (1,)))
    init = c.contig(c.arr(initial_states, "initial_states", (3,)), "float32")
    sa = c.arr(seq_idx, "seq_idx", (2,), kind="int")
    c.fit(ba, "bias", dim)
    c.fit(init, "initial_states", batch, dim, W - 1)
    c.fit(sa, "seq_idx", batch, L)
    ya, yres = c.output((batch, dim, L), xa.dtype, out)
    fin, fres = (c.state_output((batch, dim, W - 1)) if return_final_states else (None, None))
    launch(c.cu.causal_conv1d, batch, dim, L, W, xa.ref, xa.strides, wa.ref,
           ba.ref if ba else None, init.ptr if init else None, fin.ptr if fin else None,
           sa.ref if sa else None, sa.strides if sa else (0, 0), silu, ya.ref, ya.strides,
           c.stream)
    return c.finish((yres, fres) if return_final_states else yres)


@keeps_device
def causal_conv1d_update(x: Any, conv_state: Any, weight: Any, bias: Any = None,
                         activation: Optional[str] = None, *, out: Any = None,
                         stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.causal_conv1d_update` (conv_state float32, in place)."""
    silu = _activation(activation)
    c = Call("causal_conv1d_update", dict(x=x, conv_state=conv_state, weight=weight,
                                          bias=bias, out=out), stream)
    st = c.inplace(conv_state, "conv_state", 3)
    batch, dim, W1 = st.shape
    xa = c.arr(x, "x", (2,))
    wa = _conv_weight(c, weight, dim)
    ba = c.contig(c.arr(bias, "bias", (1,)))
    c.fit(xa, "x", batch, dim)
    c.fit(st, "conv_state", batch, dim, wa.shape[1] - 1)
    c.fit(ba, "bias", dim)
    ya, yres = c.output((batch, dim), xa.dtype, out)
    launch(c.cu.causal_conv1d_update, batch, dim, W1 + 1, xa.ref, xa.strides, st.ptr, wa.ref,
           ba.ref if ba else None, silu, ya.ref, ya.strides, c.stream)
    return c.finish(yres)


def _scale(softmax_scale: Optional[float], hd: int) -> float:
    return 1.0 / math.sqrt(hd) if softmax_scale is None else float(softmax_scale)


@keeps_device
def swa_attention(q: Any, k: Any, v: Any, window: Optional[int] = None,
                  softmax_scale: Optional[float] = None, *, out: Any = None,
                  stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swa_attention`. out has q's dtype."""
    c = Call("swa_attention", dict(q=q, k=k, v=v, out=out), stream)
    qa = c.lastdim_contig(c.arr(q, "q", (4,)))
    ka = c.lastdim_contig(c.arr(k, "k", (4,)))
    va = c.lastdim_contig(c.arr(v, "v", (4,)))
    batch, Lq, H, hd = qa.shape
    Lk, Hkv = ka.shape[1], ka.shape[2]
    c.fit(ka, "k", batch, None, None, hd)
    c.fit(va, "v", batch, Lk, Hkv, hd)
    c.need(Hkv >= 1 and H % Hkv == 0, "k", "nheads must be a multiple of nheads_kv")
    c.need(Lk >= Lq, "k", "seqlen_k must be >= seqlen_q")
    ya, yres = c.output((batch, Lq, H, hd), qa.dtype, out)
    launch(c.cu.swa_attention, batch, Lq, Lk, H, Hkv, hd, int(window or 0),
           _scale(softmax_scale, hd), qa.ref, qa.strides[:3], ka.ref, ka.strides[:3], va.ref,
           va.strides[:3], ya.ref, c.stream)
    return c.finish(yres)


def _int_vector(c: Call, x: Any, name: str, batch: int, lo: int, hi: int) -> ArrayView:
    """(batch,) integers on the device; host values are checked to lie in [lo, hi] (the
    kernel indexes the cache with them; device values are the caller's, e.g. the model's)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        x = np.full((batch,), int(x), dtype=np.int64)
    if not is_cuda_array(x):
        h = np.asarray(x)
        c.need(h.dtype.kind in "iu", name, "expected integers")
        c.need(h.size == 0 or (int(h.min()) >= lo and int(h.max()) <= hi), name,
               f"values must lie in [{lo}, {hi}]")
    a = c.contig(c.arr(x, name, (1,), kind="int"))
    c.fit(a, name, batch)
    return a


@keeps_device
def swa_decode(q: Any, k_cache: Any, v_cache: Any, pos: Any, n_valid: Any,
               softmax_scale: Optional[float] = None, *, out: Any = None,
               stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swa_decode`. pos / n_valid may live on the device
    (int32 / int64), so a captured graph reads them at replay time."""
    c = Call("swa_decode", dict(q=q, k_cache=k_cache, v_cache=v_cache, pos=pos,
                                n_valid=n_valid, out=out), stream)
    qa = c.contig(c.arr(q, "q", (3,)))
    batch, H, hd = qa.shape
    ka = c.contig(c.arr(k_cache, "k_cache", (4,)))
    va = c.contig(c.arr(v_cache, "v_cache", (4,)))
    cap, Hkv = ka.shape[1], ka.shape[2]
    c.fit(ka, "k_cache", batch, None, None, hd)
    c.fit(va, "v_cache", batch, cap, Hkv, hd)
    c.need(Hkv >= 1 and H % Hkv == 0, "k_cache", "nheads must be a multiple of nheads_kv")
    c.need(cap >= 1, "k_cache", "capacity must be >= 1")
    pa = _int_vector(c, pos, "pos", batch, 0, 2**63 - 1)
    na = _int_vector(c, n_valid, "n_valid", batch, 1, cap)
    ya, yres = c.output((batch, H, hd), qa.dtype, out)
    launch(c.cu.swa_decode, batch, H, Hkv, hd, cap, qa.ref, ka.ref, va.ref, pa.ref, na.ref,
           _scale(softmax_scale, hd), ya.ref, c.stream)
    return c.finish(yres)


@keeps_device
def rms_norm(x: Any, weight: Any, eps: float = 1e-5, residual: Any = None, *, out: Any = None,
             stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.rms_norm`. y has x's dtype; the returned sum x + residual
    has residual's dtype (and is what y normalises)."""
    eps = float(eps)
    c = Call("rms_norm", dict(x=x, weight=weight, residual=residual, out=out), stream)
    xa = c.arr(x, "x")
    c.need(xa.ndim >= 1, "x", "expected at least 1 dimension")
    n = xa.shape[-1]
    rows = int(np.prod(xa.shape[:-1], dtype=np.int64))
    xa, ldx = c.rows(xa)
    wa = c.contig(c.arr(weight, "weight", (1,)))
    ra = c.arr(residual, "residual")
    c.fit(wa, "weight", n)
    c.fit(ra, "residual", *xa.shape)
    ya, yres = c.output(xa.shape, xa.dtype, out)
    if ra is not None:
        ra, ldr = c.rows(ra)
        ro = c.new(xa.shape, "float32" if c.host else ra.dtype)
        launch(c.cu.rms_norm, rows, n, xa.ref, ldx, ra.ref, ldr,
               (ro.ptr, DTYPES[ro.dtype][0]), wa.ref, eps, ya.ref, c.stream)
        return c.finish((yres, ro))
    launch(c.cu.rms_norm, rows, n, xa.ref, ldx, None, 0, None, wa.ref, eps, ya.ref, c.stream)
    return c.finish(yres)


@keeps_device
def apply_rotary(x: Any, positions: Any = 0, base: float = 10000.0, *, out: Any = None,
                 stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.apply_rotary` (angles computed in float64)."""
    base = float(base)
    if isinstance(positions, np.ndarray) and positions.ndim == 0:
        positions = int(positions)
    scalar = isinstance(positions, (int, np.integer)) and not isinstance(positions, bool)
    c = Call("apply_rotary", dict(x=x, positions=None if scalar else positions, out=out),
             stream)
    xa = c.lastdim_contig(c.arr(x, "x", (4,)))
    batch, L, H, hd = xa.shape
    if scalar:
        pa, batched, offset = None, 0, int(positions)
    else:
        pa = c.contig(c.arr(positions, "positions", (1, 2), kind="int"))
        batched = int(pa.ndim == 2)
        c.fit(pa, "positions", *((batch, L) if batched else (L,)))
        offset = 0
    ya, yres = c.output(xa.shape, xa.dtype, out)
    launch(c.cu.apply_rotary, batch, L, H, hd, xa.ref, xa.strides[:3], pa.ref if pa else None,
           batched, offset, base, ya.ref, ya.strides[:3], c.stream)
    return c.finish(yres)


@keeps_device
def swiglu(gate: Any, up: Any, *, out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swiglu`. Output has gate's dtype."""
    c = Call("swiglu", dict(gate=gate, up=up, out=out), stream)
    ga = c.arr(gate, "gate")
    ua = c.arr(up, "up")
    c.fit(ua, "up", *ga.shape)
    ya, yres = c.output(ga.shape, ga.dtype, out)
    if ga.ndim == 0:
        ga, ua = c.contig(ga), c.contig(ua)
        rows, cols, ldg, ldu = 1, 1, 1, 1
    else:
        cols = ga.shape[-1]
        rows = int(np.prod(ga.shape[:-1], dtype=np.int64))
        ga, ldg = c.rows(ga)
        ua, ldu = c.rows(ua)
    launch(c.cu.swiglu, rows, cols, ga.ref, ldg, ua.ref, ldu, ya.ref, cols, c.stream)
    return c.finish(yres)
