"""torch.library custom ops (forward + backward) over the CPU C kernels, with autograd.

Each op converts its CPU tensors to NumPy without a copy where they are float32 and
contiguous (other float dtypes are converted to float32 by the kernels), calls
samba_ext.kernels / samba_ext.grad, and wraps the float32 results with torch.from_numpy
(no copy); the public functions in samba_ext.torch cast to the peers' output dtypes.
Registered with fake (meta) implementations so torch.compile can trace them as single
graph nodes. CUDA tensors raise NotImplementedError (the CUDA backward is not written yet).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import grad as _grad
from .. import kernels as _k


def _np(t: Optional[Tensor], name: str) -> Optional[np.ndarray]:
    if t is None:
        return None
    if t.device.type != "cpu":
        raise NotImplementedError(
            f"{name}: is on {t.device}; samba_ext.torch runs on CPU tensors only so far "
            "(the CUDA backward is not implemented)")
    a = t.detach()
    if a.dtype == torch.bfloat16:
        a = a.float()
    return a.contiguous().numpy()


def _t(a: Optional[np.ndarray]) -> Tensor:
    """float32 ndarray -> tensor sharing its memory; None -> an empty placeholder."""
    if a is None:
        return torch.empty(0)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# -------------------------------------------------------------------- selective scan ---
@torch.library.custom_op("samba_ext::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                      delta_softplus: bool) -> tuple[Tensor, Tensor]:
    """-> (y (batch, dim, L) float32, last_state (batch, dim, dstate) float32)"""
    y, last = _k.selective_scan(_np(u, "u"), _np(delta, "delta"), _np(A, "A"), _np(B, "B"),
                                _np(C, "C"), _np(D, "D"), _np(z, "z"),
                                _np(delta_bias, "delta_bias"), delta_softplus,
                                return_last_state=True)
    return _t(y), _t(last)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return (u.new_empty(u.shape, dtype=torch.float32),
            u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32))


@torch.library.custom_op("samba_ext::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor], z: Optional[Tensor],
                               delta_bias: Optional[Tensor], delta_softplus: bool,
                               dout: Tensor, dlast_state: Optional[Tensor]
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor]:
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty tensors for inputs not given"""
    g = _grad.selective_scan_bwd(
        _np(u, "u"), _np(delta, "delta"), _np(A, "A"), _np(B, "B"), _np(C, "C"), _np(D, "D"),
        _np(z, "z"), _np(delta_bias, "delta_bias"), delta_softplus, dout=_np(dout, "dout"),
        dlast_state=_np(dlast_state, "dlast_state"))
    return (_t(g.du), _t(g.ddelta), _t(g.dA), _t(g.dB), _t(g.dC), _t(g.dD), _t(g.dz),
            _t(g.ddelta_bias))


@selective_scan_backward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, dlast_state):
    def like(t):
        return (torch.empty(0, device=u.device) if t is None
                else t.new_empty(t.shape, dtype=torch.float32))
    return (like(u), like(delta), like(A), like(B), like(C), like(D), like(z),
            like(delta_bias))


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus = delta_softplus


def _scan_backward(ctx, dy, dlast):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    g = selective_scan_backward_op(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus,
                                   dy, dlast)
    ins = (u, delta, A, B, C, D, z, delta_bias)
    out = [None if x is None else gi.to(x.dtype) for gi, x in zip(g, ins)]
    return (*out, None)


selective_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


# -------------------------------------------------------------------- causal conv1d ---
@torch.library.custom_op("samba_ext::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                     initial_states: Optional[Tensor], silu: bool) -> tuple[Tensor, Tensor]:
    """-> (y (batch, dim, L) float32, final_states (batch, dim, width-1) float32)"""
    y, fin = _k.causal_conv1d(_np(x, "x"), _np(weight, "weight"), _np(bias, "bias"),
                              "silu" if silu else None, _np(initial_states, "initial_states"),
                              return_final_states=True)
    return _t(y), _t(fin)


@causal_conv1d_op.register_fake
def _(x, weight, bias, initial_states, silu):
    return (x.new_empty(x.shape, dtype=torch.float32),
            x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1), dtype=torch.float32))


@torch.library.custom_op("samba_ext::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                              initial_states: Optional[Tensor], silu: bool, dy: Tensor,
                              dfinal_states: Optional[Tensor]
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dx, dweight, dbias, dinitial_states); empty tensors for inputs not given"""
    g = _grad.causal_conv1d_bwd(_np(x, "x"), _np(weight, "weight"), _np(bias, "bias"),
                                "silu" if silu else None, _np(initial_states, "initial_states"),
                                dy=_np(dy, "dy"), dfinal_states=_np(dfinal_states,
                                                                    "dfinal_states"))
    return _t(g.dx), _t(g.dweight), _t(g.dbias), _t(g.dinitial_states)


@causal_conv1d_backward_op.register_fake
def _(x, weight, bias, initial_states, silu, dy, dfinal_states):
    def like(t):
        return (torch.empty(0, device=x.device) if t is None
                else t.new_empty(t.shape, dtype=torch.float32))
    return like(x), like(weight), like(bias), like(initial_states)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, initial_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_states)
    ctx.silu = silu


def _conv_backward(ctx, dy, dfinal):
    x, weight, bias, initial_states = ctx.saved_tensors
    g = causal_conv1d_backward_op(x, weight, bias, initial_states, ctx.silu, dy, dfinal)
    ins = (x, weight, bias, initial_states)
    return (*[None if t is None else gi.to(t.dtype) for gi, t in zip(g, ins)], None)


causal_conv1d_op.register_autograd(_conv_backward, setup_context=_conv_setup)


# ------------------------------------------------------------------------ attention ---
@torch.library.custom_op("samba_ext::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float, window_left: int,
                 window_right: int, softcap: float) -> tuple[Tensor, Tensor]:
    """-> (out (batch, Lq, H, hd) float32, lse (batch, H, Lq) float32); window -1 = none"""
    out, lse = _grad.attention_fwd(_np(q, "q"), _np(k, "k"), _np(v, "v"), softmax_scale,
                                   False, (window_left, window_right), softcap)
    return _t(out), _t(lse)


@attention_op.register_fake
def _(q, k, v, softmax_scale, window_left, window_right, softcap):
    return (q.new_empty(q.shape, dtype=torch.float32),
            q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32))


@torch.library.custom_op("samba_ext::attention_backward", mutates_args=())
def attention_backward_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          dout: Tensor, softmax_scale: float, window_left: int,
                          window_right: int, softcap: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) float32"""
    dq, dk, dv = _grad.attention_bwd(_np(q, "q"), _np(k, "k"), _np(v, "v"), softmax_scale,
                                     False, (window_left, window_right), softcap,
                                     dout=_np(dout, "dout"), out=_np(out, "out"),
                                     lse=_np(lse, "lse"))
    return _t(dq), _t(dk), _t(dv)


@attention_backward_op.register_fake
def _(q, k, v, out, lse, dout, softmax_scale, window_left, window_right, softcap):
    return (q.new_empty(q.shape, dtype=torch.float32),
            k.new_empty(k.shape, dtype=torch.float32),
            v.new_empty(v.shape, dtype=torch.float32))


def _attn_setup(ctx, inputs, output):
    q, k, v, scale, wl, wr, cap = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (scale, wl, wr, cap)


def _attn_backward(ctx, dout, dlse):
    # lse is an auxiliary output for the backward; the public functions never return it, so
    # no loss depends on it and its incoming gradient (dlse) is zero.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, *ctx.args)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


attention_op.register_autograd(_attn_backward, setup_context=_attn_setup)
