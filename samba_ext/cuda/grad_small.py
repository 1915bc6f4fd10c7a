"""The CUDA side of :func:`samba_ext.grad.rms_norm_bwd`, :func:`~samba_ext.grad.swiglu_bwd` and
:func:`~samba_ext.grad.apply_rotary_bwd` (csrc/cuda/norm_bwd.cu, swiglu_bwd.cu, and rotary.cu with
negated angles).

:mod:`samba_ext.grad` checks the arguments and calls here when an input lives on a CUDA
device. Inputs are float32 / float16 / bfloat16 with any strides (rows are read through a row
stride where possible, else copied); arithmetic and accumulation are float32. Results are new
C-contiguous DeviceArrays in the dtype of the matching input (dx: x's, dweight: weight's,
dgate / dup: gate's / up's, rotary dx: dy's).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .call import Call
from .layout import DTYPES
from .runtime import keeps_device, launch

__all__ = ["rms_norm_bwd", "swiglu_bwd", "apply_rotary_bwd"]


@keeps_device
def rms_norm_bwd(x: Any, weight: Any, eps: float, residual: Any, dy: Any, dresidual_out: Any,
                 *, stream: Any = None) -> tuple[Any, Any, Any]:
    """(dx (x's shape), dweight (n,), dresidual): dresidual is dx itself when residual was
    given, else None. With a residual the normalised sum is x + residual rounded to residual's
    dtype, as the CUDA forward computes it."""
    c = Call("grad.rms_norm_bwd", dict(x=x, weight=weight, residual=residual, dy=dy,
                                  dresidual_out=dresidual_out), stream)
    xa = c.arr(x, "x")
    c.need(xa.ndim >= 1, "x", "expected at least 1 dimension")
    shape, n = xa.shape, xa.shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    xa, ldx = c.rows(xa)
    wa = c.contig(c.arr(weight, "weight", (1,)))
    c.fit(wa, "weight", n)
    ya = c.arr(dy, "dy")
    c.fit(ya, "dy", *shape)
    ya, ldy = c.rows(ya)
    ra = c.arr(residual, "residual")
    c.fit(ra, "residual", *shape)
    ra, ldr = c.rows(ra) if ra is not None else (None, 0)
    oa = c.arr(dresidual_out, "dresidual_out")
    c.fit(oa, "dresidual_out", *shape)
    oa, ldo = c.rows(oa) if oa is not None else (None, 0)
    dxa, dxr = c.output(shape, xa.dtype)
    dwa, dwr = c.output((n,), wa.dtype)
    launch(c.cu.rms_norm_bwd, rows, n, xa.ref, ldx, ra.ref if ra else None, ldr,
           DTYPES[ra.dtype][0] if ra else 0, wa.ref, float(eps), ya.ref, ldy,
           oa.ref if oa else None, ldo, dxa.ref, dwa.ref, c.stream)
    dx, dw = c.finish((dxr, dwr))
    return dx, dw, (dx if residual is not None else None)


@keeps_device
def swiglu_bwd(gate: Any, up: Any, dy: Any, *, stream: Any = None) -> tuple[Any, Any]:
    """(dgate, dup) of gate's shape."""
    c = Call("grad.swiglu_bwd", dict(gate=gate, up=up, dy=dy), stream)
    ga = c.arr(gate, "gate")
    ua = c.arr(up, "up")
    ya = c.arr(dy, "dy")
    shape = ga.shape
    c.fit(ua, "up", *shape)
    c.fit(ya, "dy", *shape)
    dga, dgr = c.output(shape, ga.dtype)
    dua, dur = c.output(shape, ua.dtype)
    if ga.ndim == 0:
        ga, ua, ya = c.contig(ga), c.contig(ua), c.contig(ya)
        rows, cols, ldg, ldu, ldy = 1, 1, 1, 1, 1
    else:
        cols = shape[-1]
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        ga, ldg = c.rows(ga)
        ua, ldu = c.rows(ua)
        ya, ldy = c.rows(ya)
    launch(c.cu.swiglu_bwd, rows, cols, ga.ref, ldg, ua.ref, ldu, ya.ref, ldy, dga.ref, dua.ref,
           c.stream)
    return c.finish((dgr, dur))


@keeps_device
def apply_rotary_bwd(dy: Any, positions: Any = 0, base: float = 10000.0, *,
                     stream: Any = None) -> Any:
    """dx (batch, seqlen, nheads, headdim) in dy's dtype: dy rotated by the negative angles.
    positions: an int offset, or ints (seqlen,) / (batch, seqlen) on the host or the device."""
    base = float(base)
    if isinstance(positions, np.ndarray) and positions.ndim == 0:
        positions = int(positions)
    scalar = isinstance(positions, (int, np.integer)) and not isinstance(positions, bool)
    c = Call("grad.apply_rotary_bwd", dict(dy=dy, positions=None if scalar else positions), stream)
    ya = c.lastdim_contig(c.arr(dy, "dy", (4,)))
    batch, L, H, hd = ya.shape
    if scalar:
        pa, batched, offset = None, 0, int(positions)
    else:
        pa = c.contig(c.arr(positions, "positions", (1, 2), kind="int"))
        batched = int(pa.ndim == 2)
        c.fit(pa, "positions", *((batch, L) if batched else (L,)))
        offset = 0
    dxa, dxr = c.output(ya.shape, ya.dtype)
    launch(c.cu.apply_rotary_bwd, batch, L, H, hd, ya.ref, ya.strides[:3],
           pa.ref if pa else None, batched, offset, base, dxa.ref, dxa.strides[:3], c.stream)
    return c.finish(dxr)
