"""The CUDA backward of the selective scan and of the causal conv1d (csrc/cuda/scan_bwd.cu,
conv_bwd.cu), run by :mod:`samba_ext.grad` when an input lives on a CUDA device.

The arguments have already passed the op contracts
(:func:`samba_ext.ops.contracts.selective_scan_bwd`, :func:`~samba_ext.ops.contracts.causal_conv1d_bwd`);
the checks here only protect device memory (``Call.fit``), as in :mod:`samba_ext.cuda.ops`.

* CUDA inputs (DeviceArray, or any ``__dlpack__`` / ``__cuda_array_interface__`` producer)
  are read in place through their strides; NumPy inputs mixed in are uploaded. float32,
  float16 and bfloat16 are read; the large inputs (u, delta, z, dout, B, C of the scan; x, dy
  of the conv) are read in one dtype: when they differ they are all copied to float32 first.
* Results are new C-contiguous DeviceArrays on the inputs' device and stream: the gradients
  of the per-step activations (du, ddelta, dz; dx) in the dtype of the matching input, the
  gradients of parameters and states (dA, dB, dC, dD, ddelta_bias, dinitial_state; dweight,
  dbias, dinitial_states) in float32. All arithmetic and accumulation is float32.
"""
from __future__ import annotations

from typing import Any, Optional

from .call import Call, strides_bgnl
from .layout import DTYPES
from .runtime import keeps_device, launch

__all__ = ["selective_scan_bwd", "causal_conv1d_bwd"]


def _one_dtype(c: Call, arrays: list) -> list:
    """The arrays themselves when they share a dtype, else float32 copies of all of them."""
    present = [a for a in arrays if a is not None]
    if len({a.dtype for a in present}) <= 1:
        return arrays
    return [None if a is None else c.convert(a, "float32") for a in arrays]


def _ref(d: Any) -> Optional[tuple]:
    """(ptr, dtype code) of a new DeviceArray (None stays None)."""
    return None if d is None else (d.ptr, DTYPES[d.dtype][0])


@keeps_device
def selective_scan_bwd(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any, z: Any,
                       delta_bias: Any, delta_softplus: bool, initial_state: Any, dout: Any,
                       dlast_state: Any, *, stream: Any = None) -> tuple:
    """Gradients of the scan on the GPU, see :func:`samba_ext.grad.selective_scan_bwd`.

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state): du (batch, dim,
    seqlen) in u's dtype, ddelta in delta's, dz in z's; dA (dim, dstate), dB / dC of B's
    shape, dD / ddelta_bias (dim,), dinitial_state (batch, dim, dstate) float32; None for an
    input that was not given (dinitial_state: no initial_state).
    """
    c = Call("grad.selective_scan_bwd", dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                             delta_bias=delta_bias,
                                             initial_state=initial_state, dout=dout,
                                             dlast_state=dlast_state), stream)
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
    ya = c.arr(dout, "dout", (3,))
    init = c.contig(c.arr(initial_state, "initial_state", (3,)), "float32")
    dlast = c.contig(c.arr(dlast_state, "dlast_state", (3,)), "float32")
    c.fit(da, "delta", batch, dim, L)
    c.fit(Aa, "A", dim, N)
    bshape = (batch, N, L) if Ba.ndim == 3 else (batch, G, N, L)
    c.fit(Ba, "B", *bshape)
    c.fit(Ca, "C", *bshape)
    c.fit(Da, "D", dim)
    c.fit(dba, "delta_bias", dim)
    c.fit(za, "z", batch, dim, L)
    c.fit(ya, "dout", batch, dim, L)
    c.fit(init, "initial_state", batch, dim, N)
    c.fit(dlast, "dlast_state", batch, dim, N)
    c.need(G >= 1 and dim % G == 0, "B", "ngroups must divide dim")
    c.need(1 <= N <= 256, "A", "dstate must be in 1..256 on CUDA")
    du = c.new((batch, dim, L), ua.dtype)
    ddelta = c.new((batch, dim, L), da.dtype)
    dz = c.new((batch, dim, L), za.dtype) if za is not None else None
    dA = c.new((dim, N), "float32")
    dB = c.new(bshape, "float32")
    dC = c.new(bshape, "float32")
    dD = c.new((dim,), "float32") if Da is not None else None
    ddb = c.new((dim,), "float32") if dba is not None else None
    dinit = c.new((batch, dim, N), "float32") if init is not None else None
    ua, da, za, ya, Ba, Ca = _one_dtype(c, [ua, da, za, ya, Ba, Ca])
    launch(c.cu.selective_scan_bwd, batch, dim, N, L, G, ua.ref, da.ref, Aa.ref, Ba.ref,
           Ca.ref, Da.ref if Da else None, za.ref if za else None, dba.ref if dba else None,
           ya.ref, ua.strides, da.strides, za.strides if za else (0, 0, 0), ya.strides,
           strides_bgnl(Ba), strides_bgnl(Ca), int(bool(delta_softplus)),
           init.ptr if init else None, dlast.ptr if dlast else None, _ref(du), _ref(ddelta),
           _ref(dz), dA.ptr, dB.ptr, dC.ptr, dD.ptr if dD is not None else None,
           ddb.ptr if ddb is not None else None, dinit.ptr if dinit is not None else None,
           c.stream)
    return c.finish((du, ddelta, dA, dB, dC, dD, dz, ddb, dinit))


@keeps_device
def causal_conv1d_bwd(x: Any, weight: Any, bias: Any, activation: Optional[str],
                      initial_states: Any, dy: Any, dfinal_states: Any, *,
                      seq_idx: Any = None, stream: Any = None) -> tuple:
    """Gradients of the conv on the GPU, see :func:`samba_ext.grad.causal_conv1d_bwd`.

    Returns (dx, dweight, dbias, dinitial_states): dx (batch, dim, seqlen) in x's dtype;
    dweight (dim, width), dbias (dim,), dinitial_states (batch, dim, width-1) float32; None
    for an input that was not given. seq_idx (batch, seqlen): int32 / int64 on the device,
    read in place through its strides (a host array is uploaded as int64).
    """
    c = Call("grad.causal_conv1d_bwd", dict(x=x, weight=weight, bias=bias,
                                            initial_states=initial_states, dy=dy,
                                            dfinal_states=dfinal_states, seq_idx=seq_idx),
             stream)
    xa = c.arr(x, "x", (3,))
    batch, dim, L = xa.shape
    wa = c.contig(c.arr(weight, "weight", (2,)))
    c.fit(wa, "weight", dim, None)
    W = wa.shape[1]
    c.need(2 <= W <= 4, "weight", "width must be 2, 3 or 4")
    ba = c.contig(c.arr(bias, "bias", (1,)))
    init = c.contig(c.arr(initial_states, "initial_states", (3,)), "float32")
    dfin = c.contig(c.arr(dfinal_states, "dfinal_states", (3,)), "float32")
    ya = c.arr(dy, "dy", (3,))
    sa = c.arr(seq_idx, "seq_idx", (2,), kind="int")
    c.fit(ba, "bias", dim)
    c.fit(init, "initial_states", batch, dim, W - 1)
    c.fit(dfin, "dfinal_states", batch, dim, W - 1)
    c.fit(ya, "dy", batch, dim, L)
    c.fit(sa, "seq_idx", batch, L)
    dx = c.new((batch, dim, L), xa.dtype)
    dw = c.new((dim, W), "float32")
    db = c.new((dim,), "float32") if ba is not None else None
    dinit = c.new((batch, dim, W - 1), "float32") if init is not None else None
    xa, ya = _one_dtype(c, [xa, ya])
    launch(c.cu.causal_conv1d_bwd, batch, dim, L, W, xa.ref, xa.strides, ya.ref, ya.strides,
           wa.ref, ba.ref if ba else None, init.ptr if init else None,
           dfin.ptr if dfin else None, sa.ref if sa else None, sa.strides if sa else (0, 0),
           int(activation is not None), _ref(dx), dw.ptr,
           db.ptr if db is not None else None, dinit.ptr if dinit is not None else None,
           c.stream)
    return c.finish((dx, dw, db, dinit))
