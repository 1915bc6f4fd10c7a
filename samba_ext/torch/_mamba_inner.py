"""mamba_ssm's ``mamba_inner_fn`` (the fused Mamba-1 mixer body) and ``mamba_inner_ref``.

mamba_inner_fn composes the differentiable ops of samba_ext.torch: causal_conv1d_fn (silu)
and selective_scan_fn (C forward and backward kernels) with torch's F.linear, so autograd
runs through them. mamba_inner_ref is written independently in plain torch: a grouped
F.conv1d and :func:`selective_scan_ref`.

Shapes (d = d_inner, N = d_state, R = dt_rank, E = d_model): xz (batch, 2d, L), x then z;
conv1d_weight (d, 1, width); conv1d_bias (d,); x_proj_weight (R + N + N, d) (only the rows
for the B, C taken from it are needed); delta_proj_weight (d, R); out_proj_weight (E, d);
out_proj_bias (E,); A (d, N) real; B, C None (taken from x_proj: "variable", per token) or
given as (d, N) (fixed) or (batch, N, L) / (batch, G, N, L); D, delta_bias (d,);
B_proj_bias, C_proj_bias (N,) (only with variable B, C); b_rms_weight, c_rms_weight (N,) and
dt_rms_weight (d,): RMS norms of B, C (over N) and of delta (over d) before the scan.
Returns (batch, L, E) in xz's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMS norm over the last axis, float32 or wider, returned in x's dtype."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(wide)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(wide)
    return y.to(x.dtype)


def _check(xz: Tensor, conv1d_weight: Tensor, x_proj_weight: Tensor,
           delta_proj_weight: Tensor, A: Tensor, B: Optional[Tensor], C: Optional[Tensor],
           B_proj_bias: Optional[Tensor], C_proj_bias: Optional[Tensor],
           b_rms_weight: Optional[Tensor], c_rms_weight: Optional[Tensor],
           dt_rms_weight: Optional[Tensor]) -> None:
    if A.is_complex():
        raise NotImplementedError("A: complex A is not supported (real Mamba-1 only)")
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz: expected (batch, 2 * d_inner, seqlen), got shape "
                         f"{tuple(xz.shape)}")
    d = xz.shape[1] // 2
    if conv1d_weight.dim() != 3 or conv1d_weight.shape[:2] != (d, 1):
        raise ValueError(f"conv1d_weight: expected (d_inner, 1, width) = ({d}, 1, width), got "
                         f"shape {tuple(conv1d_weight.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A: expected (d_inner, d_state) = ({d}, d_state), got shape "
                         f"{tuple(A.shape)}")
    n = A.shape[1]
    if delta_proj_weight.dim() != 2 or delta_proj_weight.shape[0] != d:
        raise ValueError(f"delta_proj_weight: expected (d_inner, dt_rank) = ({d}, dt_rank), "
                         f"got shape {tuple(delta_proj_weight.shape)}")
    rank = delta_proj_weight.shape[1]
    rows = rank + n * ((B is None) + (C is None))
    if x_proj_weight.dim() != 2 or x_proj_weight.shape[1] != d or x_proj_weight.shape[0] < rows:
        raise ValueError(f"x_proj_weight: expected (dt_rank + d_state per variable B/C, "
                         f"d_inner) = ({rows}, {d}), got shape {tuple(x_proj_weight.shape)}")
    for name, bias, given in (("B_proj_bias", B_proj_bias, B), ("C_proj_bias", C_proj_bias, C),
                              ("b_rms_weight", b_rms_weight, B),
                              ("c_rms_weight", c_rms_weight, C)):
        if bias is None:
            continue
        if given is not None:
            raise NotImplementedError(f"{name}: only supported with variable {name[0].upper()}"
                                      f" ({name[0].upper()}=None, taken from x_proj)")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"{name}: expected shape (d_state,) = ({n},), got "
                             f"{tuple(bias.shape)}")
    if dt_rms_weight is not None and tuple(dt_rms_weight.shape) != (d,):
        raise ValueError(f"dt_rms_weight: expected shape (d_inner,) = ({d},), got "
                         f"{tuple(dt_rms_weight.shape)}")


def _same_groups(Bs: Tensor, Cs: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """B, C as (batch, G, N, L) with one G for both (the scan takes one group count): when
    they differ (e.g. a fixed B, one group per channel, with a variable C) both become d
    groups, group g of G serving channels g * d / G onward."""
    B4 = Bs if Bs.dim() == 4 else Bs[:, None]
    C4 = Cs if Cs.dim() == 4 else Cs[:, None]
    if B4.shape[1] == C4.shape[1]:
        return B4, C4
    for name, t in (("B", B4), ("C", C4)):
        if t.shape[1] < 1 or d % t.shape[1]:
            raise ValueError(f"{name}: ngroups ({t.shape[1]}) must divide d_inner ({d})")
    return (B4.repeat_interleave(d // B4.shape[1], dim=1),
            C4.repeat_interleave(d // C4.shape[1], dim=1))


def _bc(x_dbl: Tensor, given: Optional[Tensor], lo: int, hi: int, bias: Optional[Tensor],
        rms_weight: Optional[Tensor], eps: float, batch: int, L: int, d: int) -> Tensor:
    """B or C for the scan: columns lo:hi of x_dbl ((batch L), N), plus bias, RMS-normed,
    as (batch, 1, N, L); a given (d, N) one broadcast to (batch, d, N, L) (d groups)."""
    if given is not None:
        if given.dim() == 2:
            return given[None, :, :, None].expand(batch, d, given.shape[1], L)
        return given
    m = x_dbl[:, lo:hi]
    if bias is not None:
        m = m + bias.to(m.dtype)
    if rms_weight is not None:
        m = _rms(m, rms_weight, eps)
    return m.reshape(batch, L, 1, -1).permute(0, 2, 3, 1)


def _inner(xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Optional[Tensor],
           x_proj_weight: Tensor, delta_proj_weight: Tensor, A: Tensor, B: Optional[Tensor],
           C: Optional[Tensor], D: Optional[Tensor], delta_bias: Optional[Tensor],
           B_proj_bias: Optional[Tensor], C_proj_bias: Optional[Tensor],
           b_rms_weight: Optional[Tensor], c_rms_weight: Optional[Tensor],
           dt_rms_weight: Optional[Tensor], delta_softplus: bool, eps: float) -> Tensor:
    """xz -> the gated scan output (batch, d_inner, L), through the samba_ext ops."""
    from . import causal_conv1d_fn, selective_scan_fn   # the package imports this module
    batch, _, L = xz.shape
    d, n, rank = A.shape[0], A.shape[1], delta_proj_weight.shape[1]
    x, z = xz.chunk(2, dim=1)
    u = causal_conv1d_fn(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    x_dbl = F.linear(u.transpose(1, 2).reshape(batch * L, d), x_proj_weight)   # ((b L), *)
    delta = x_dbl[:, :rank] @ delta_proj_weight.t()                              # ((b L), d)
    if dt_rms_weight is not None:
        delta = _rms(delta, dt_rms_weight, eps)
    delta = delta.reshape(batch, L, d).transpose(1, 2)
    width = x_dbl.shape[1]
    Bs = _bc(x_dbl, B, rank, rank + n, B_proj_bias, b_rms_weight, eps, batch, L, d)
    Cs = _bc(x_dbl, C, width - n, width, C_proj_bias, c_rms_weight, eps, batch, L, d)
    Bs, Cs = _same_groups(Bs, Cs, d)
    return selective_scan_fn(u, delta, A, Bs, Cs, D, z, delta_bias, delta_softplus)


def mamba_inner_fn(xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Optional[Tensor],
                   x_proj_weight: Tensor, delta_proj_weight: Tensor, out_proj_weight: Tensor,
                   out_proj_bias: Optional[Tensor], A: Tensor, B: Optional[Tensor] = None,
                   C: Optional[Tensor] = None, D: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, B_proj_bias: Optional[Tensor] = None,
                   C_proj_bias: Optional[Tensor] = None, delta_softplus: bool = True,
                   checkpoint_lvl: int = 1, b_rms_weight: Optional[Tensor] = None,
                   c_rms_weight: Optional[Tensor] = None,
                   dt_rms_weight: Optional[Tensor] = None,
                   b_c_dt_rms_eps: float = 1e-6) -> Tensor:
    """mamba_ssm's ``mamba_inner_fn`` (shapes in the module docstring).

    x = silu(causal_conv1d(x)); x_dbl = x @ x_proj_weight.T; delta = x_dbl[:, :R] @
    delta_proj_weight.T (RMS-normed by dt_rms_weight); B = x_dbl[:, R:R+N], C = x_dbl[:, -N:]
    when not given (+ B/C_proj_bias, RMS-normed by b/c_rms_weight); y = selective_scan(x,
    delta, A, B, C, D, z, delta_bias, delta_softplus); returns F.linear(y, out_proj_weight,
    out_proj_bias) (batch, L, E). Differentiable in every tensor argument, the RMS weights
    included. checkpoint_lvl 0 keeps the activations for the backward; 1 (default) keeps
    only the inputs and recomputes the convolution, projections and scan in the backward
    (torch.utils.checkpoint; mamba_ssm recomputes the convolution and delta). Not supported
    (NotImplementedError): complex A; B/C_proj_bias or b/c_rms_weight with a given B/C.
    """
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"checkpoint_lvl: expected 0 or 1, got {checkpoint_lvl!r}")
    _check(xz, conv1d_weight, x_proj_weight, delta_proj_weight, A, B, C, B_proj_bias,
           C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight)
    args = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
            delta_bias, B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight,
            bool(delta_softplus), float(b_c_dt_rms_eps))
    grads = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                            for t in args)
    if checkpoint_lvl == 1 and grads:
        y = checkpoint(_inner, *args, use_reentrant=False)
    else:
        y = _inner(*args)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def mamba_inner_ref(xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Optional[Tensor],
                    x_proj_weight: Tensor, delta_proj_weight: Tensor, out_proj_weight: Tensor,
                    out_proj_bias: Optional[Tensor], A: Tensor, B: Optional[Tensor] = None,
                    C: Optional[Tensor] = None, D: Optional[Tensor] = None,
                    delta_bias: Optional[Tensor] = None, B_proj_bias: Optional[Tensor] = None,
                    C_proj_bias: Optional[Tensor] = None, delta_softplus: bool = True, *,
                    b_rms_weight: Optional[Tensor] = None,
                    c_rms_weight: Optional[Tensor] = None,
                    dt_rms_weight: Optional[Tensor] = None,
                    b_c_dt_rms_eps: float = 1e-6) -> Tensor:
    """Plain-torch reference of :func:`mamba_inner_fn` (mamba_ssm's ``mamba_inner_ref``
    arguments; the RMS weights keyword-only, as extras), differentiable by torch autograd.
    Computes in the inputs' dtype (the scan in float32, or float64 for float64 inputs).
    Unlike mamba_ssm's reference, which always applies softplus, delta_softplus is honored.
    """
    from . import selective_scan_ref   # the package imports this module
    _check(xz, conv1d_weight, x_proj_weight, delta_proj_weight, A, B, C, B_proj_bias,
           C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight)
    batch, _, L = xz.shape
    d, n, rank = A.shape[0], A.shape[1], delta_proj_weight.shape[1]
    width = conv1d_weight.shape[2]
    x, z = xz[:, :d], xz[:, d:]
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=width - 1, groups=d)[..., :L])
    x_dbl = torch.einsum("bdl,rd->blr", x, x_proj_weight)              # (b, L, rows)
    delta = torch.einsum("blr,dr->bld", x_dbl[..., :rank], delta_proj_weight)
    if dt_rms_weight is not None:
        delta = _rms(delta, dt_rms_weight, b_c_dt_rms_eps)
    delta = delta.permute(0, 2, 1)

    def side(given, cols, bias, rms_weight):
        if given is not None:   # fixed (d, N): every channel its own group
            return given if given.dim() > 2 else given[None, :, :, None].expand(batch, d, n, L)
        m = x_dbl[..., cols]
        if bias is not None:
            m = m + bias
        if rms_weight is not None:
            m = _rms(m, rms_weight, b_c_dt_rms_eps)
        return m.permute(0, 2, 1)                                        # (b, N, L)

    Bs = side(B, slice(rank, rank + n), B_proj_bias, b_rms_weight)
    Cs = side(C, slice(x_dbl.shape[-1] - n, None), C_proj_bias, c_rms_weight)
    if Bs.dim() != Cs.dim() or Bs.shape[-3] != Cs.shape[-3]:
        Bs, Cs = _same_groups(Bs, Cs, d)
    y = selective_scan_ref(x, delta, A, Bs, Cs, D, z=z, delta_bias=delta_bias,
                           delta_softplus=delta_softplus)
    out = torch.einsum("bdl,ed->ble", y, out_proj_weight)
    return out if out_proj_bias is None else out + out_proj_bias
