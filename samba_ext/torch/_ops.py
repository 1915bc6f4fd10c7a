"""torch.library custom ops (forward + backward) over the samba_ext kernels, with autograd.

Each op hands its tensors to samba_ext.kernels / samba_ext.grad through :mod:`._device`:
CPU tensors as NumPy arrays (the C kernels; float32 results), CUDA tensors as they are (the
CUDA kernels, read in place; results wrapped with torch.from_dlpack, on the
current torch stream). Output dtypes: the CPU kernels return float32; the CUDA kernels write
the outputs that follow an input (y, out, du, ddelta, dz, dx, dq, dk, dv) in that input's
dtype (float32 / float16 / bfloat16; float64 inputs are computed as float32) and states,
lse and parameter gradients in float32 (:func:`._device.act_dtype`). The public functions
in samba_ext.torch cast to the peers' output dtypes. Registered with fake implementations
that follow the same rules, so torch.compile traces each op as one graph node on either
device. All tensors of one call must be on one device (ValueError naming the argument).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import grad as _grad
from .. import kernels as _k
from . import _cuda_limits
from ._device import act_dtype, arg, device_of, is_cuda, on_device, tensors


def _like(t: Optional[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Fake of a gradient of input t (empty placeholder when t was not given)."""
    if t is None:
        return torch.empty(0, device=device)
    return t.new_empty(t.shape, dtype=dtype)


# -------------------------------------------------------------------- selective scan ---
@torch.library.custom_op("samba_ext::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                      delta_softplus: bool) -> tuple[Tensor, Tensor]:
    """-> (y (batch, dim, L) float32 (CUDA: u's dtype), last_state (batch, dim, dstate)
    float32)"""
    dev = device_of((("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                     ("z", z), ("delta_bias", delta_bias)))
    if is_cuda(dev):
        _cuda_limits.scan(A)
    with on_device(dev):
        y, last = _k.selective_scan(arg(u), arg(delta), arg(A), arg(B), arg(C), arg(D),
                                    arg(z), arg(delta_bias), delta_softplus,
                                    return_last_state=True)
        return tensors((y, last), dev)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return (u.new_empty(u.shape, dtype=act_dtype(u)),
            u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32))


@torch.library.custom_op("samba_ext::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor], z: Optional[Tensor],
                               delta_bias: Optional[Tensor], delta_softplus: bool,
                               dout: Tensor, dlast_state: Optional[Tensor]
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor]:
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty tensors for inputs not given;
    float32, except du, ddelta, dz on CUDA: the dtypes of u, delta, z"""
    dev = device_of((("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                     ("z", z), ("delta_bias", delta_bias), ("dout", dout),
                     ("dlast_state", dlast_state)))
    if is_cuda(dev):
        _cuda_limits.scan_backward(A, B, u.shape[0])
    with on_device(dev):
        g = _grad.selective_scan_bwd(
            arg(u), arg(delta), arg(A), arg(B), arg(C), arg(D), arg(z), arg(delta_bias),
            delta_softplus, dout=arg(dout), dlast_state=arg(dlast_state))
        return tensors((g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias), dev)


@selective_scan_backward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, dlast_state):
    f32, dev = torch.float32, u.device
    return (_like(u, act_dtype(u), dev), _like(delta, act_dtype(delta), dev),
            _like(A, f32, dev), _like(B, f32, dev), _like(C, f32, dev), _like(D, f32, dev),
            _like(z, None if z is None else act_dtype(z), dev), _like(delta_bias, f32, dev))


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
                     initial_states: Optional[Tensor], silu: bool,
                     seq_idx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """-> (y (batch, dim, L) float32 (CUDA: x's dtype), final_states (batch, dim, width-1)
    float32; zeros with seq_idx, whose packed sequences have no final states)"""
    dev = device_of((("x", x), ("weight", weight), ("bias", bias),
                     ("initial_states", initial_states), ("seq_idx", seq_idx)))
    with on_device(dev):
        act = "silu" if silu else None
        if seq_idx is None:
            y, fin = _k.causal_conv1d(arg(x), arg(weight), arg(bias), act,
                                      arg(initial_states), return_final_states=True)
            return tensors((y, fin), dev)
        y = _k.causal_conv1d(arg(x), arg(weight), arg(bias), act, arg(initial_states),
                             seq_idx=arg(seq_idx))
        fin = torch.zeros((x.shape[0], x.shape[1], weight.shape[1] - 1),
                          dtype=torch.float32, device=dev)
        return tensors((y,), dev)[0], fin


@causal_conv1d_op.register_fake
def _(x, weight, bias, initial_states, silu, seq_idx=None):
    return (x.new_empty(x.shape, dtype=act_dtype(x)),
            x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1), dtype=torch.float32))


@torch.library.custom_op("samba_ext::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                              initial_states: Optional[Tensor], silu: bool, dy: Tensor,
                              dfinal_states: Optional[Tensor], seq_idx: Optional[Tensor] = None
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dx, dweight, dbias, dinitial_states); empty tensors for inputs not given;
    float32, except dx on CUDA: x's dtype"""
    dev = device_of((("x", x), ("weight", weight), ("bias", bias),
                     ("initial_states", initial_states), ("dy", dy),
                     ("dfinal_states", dfinal_states), ("seq_idx", seq_idx)))
    with on_device(dev):
        g = _grad.causal_conv1d_bwd(arg(x), arg(weight), arg(bias), "silu" if silu else None,
                                    arg(initial_states), dy=arg(dy),
                                    dfinal_states=arg(dfinal_states), seq_idx=arg(seq_idx))
        return tensors((g.dx, g.dweight, g.dbias, g.dinitial_states), dev)


@causal_conv1d_backward_op.register_fake
def _(x, weight, bias, initial_states, silu, dy, dfinal_states, seq_idx=None):
    f32, dev = torch.float32, x.device
    return (_like(x, act_dtype(x), dev), _like(weight, f32, dev), _like(bias, f32, dev),
            _like(initial_states, f32, dev))


def _conv_setup(ctx, inputs, output):
    x, weight, bias, initial_states, silu, seq_idx = inputs
    ctx.save_for_backward(x, weight, bias, initial_states, seq_idx)
    ctx.silu = silu


def _conv_backward(ctx, dy, dfinal):
    x, weight, bias, initial_states, seq_idx = ctx.saved_tensors
    if seq_idx is not None:
        dfinal = None  # packed sequences have no final states (the op's zeros are unused)
    g = causal_conv1d_backward_op(x, weight, bias, initial_states, ctx.silu, dy, dfinal,
                                  seq_idx)
    ins = (x, weight, bias, initial_states)
    return (*[None if t is None else gi.to(t.dtype) for gi, t in zip(g, ins)], None, None)


causal_conv1d_op.register_autograd(_conv_backward, setup_context=_conv_setup)


# ------------------------------------------------------------------------ attention ---
@torch.library.custom_op("samba_ext::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float, window_left: int,
                 window_right: int, softcap: float, deterministic: bool = False,
                 alibi_slopes: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """-> (out (batch, Lq, H, hd) float32 (CUDA: q's dtype), lse (batch, H, Lq) float32);
    window -1 = none; deterministic: a bitwise-repeatable backward (see flash_attn_func);
    alibi_slopes (H,) or (batch, H), or None"""
    dev = device_of((("q", q), ("k", k), ("v", v), ("alibi_slopes", alibi_slopes)))
    if is_cuda(dev):
        _cuda_limits.attention(q, k)
    with on_device(dev):
        out, lse = _grad.attention_fwd(arg(q), arg(k), arg(v), softmax_scale, False,
                                       (window_left, window_right), softcap,
                                       arg(alibi_slopes))
        return tensors((out, lse), dev)


@attention_op.register_fake
def _(q, k, v, softmax_scale, window_left, window_right, softcap, deterministic=False,
      alibi_slopes=None):
    return (q.new_empty(q.shape, dtype=act_dtype(q)),
            q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32))


@torch.library.custom_op("samba_ext::attention_backward", mutates_args=())
def attention_backward_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          dout: Tensor, softmax_scale: float, window_left: int,
                          window_right: int, softcap: float, deterministic: bool = False,
                          alibi_slopes: Optional[Tensor] = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) float32 (CUDA: the dtypes of q, k, v)"""
    dev = device_of((("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse),
                     ("dout", dout), ("alibi_slopes", alibi_slopes)))
    if is_cuda(dev):
        _cuda_limits.attention(q, k)
    with on_device(dev):
        dq, dk, dv = _grad.attention_bwd(arg(q), arg(k), arg(v), softmax_scale, False,
                                         (window_left, window_right), softcap,
                                         arg(alibi_slopes), dout=arg(dout), out=arg(out),
                                         lse=arg(lse), deterministic=deterministic)
        return tensors((dq, dk, dv), dev)


@attention_backward_op.register_fake
def _(q, k, v, out, lse, dout, softmax_scale, window_left, window_right, softcap,
      deterministic=False, alibi_slopes=None):
    return (q.new_empty(q.shape, dtype=act_dtype(q)),
            k.new_empty(k.shape, dtype=act_dtype(k)),
            v.new_empty(v.shape, dtype=act_dtype(v)))


def _attn_setup(ctx, inputs, output):
    q, k, v, scale, wl, wr, cap, det, alibi = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, alibi)
    ctx.args = (scale, wl, wr, cap, det)


def _attn_backward(ctx, dout, dlse):
    # lse is an auxiliary output for the backward; flash_attn_func returns it only detached
    # (return_attn_probs), so no loss depends on it and its incoming gradient (dlse) is zero.
    # The ALiBi slopes are constants (no gradient, as in flash-attn).
    q, k, v, out, lse, alibi = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, *ctx.args, alibi)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None,
            None)


attention_op.register_autograd(_attn_backward, setup_context=_attn_setup)
