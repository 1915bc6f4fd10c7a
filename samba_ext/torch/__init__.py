"""PyTorch interface of samba_ext: the peers' function names and signatures, with autograd.

Optional: importing this module needs torch (``pip install torch``); nothing else in
samba_ext does, and building never does. The ops are registered through torch.library
(``samba_ext::selective_scan``, ``samba_ext::causal_conv1d``, ``samba_ext::attention`` and
their ``*_backward``), each with a fake implementation, so torch.compile keeps them as
single graph nodes, and with autograd backed by the C backward kernels; the decode ops
(``samba_ext::selective_state_update``, ``samba_ext::causal_conv1d_update``,
``samba_ext::attention_kvcache``) mutate their state/cache arguments and have no autograd.

CPU and CUDA tensors (all tensors of one call on one device; float32 computation). CPU
tensors run the C kernels (float16/bfloat16/float64 inputs are converted, outputs are cast
back to the peers' output dtypes). CUDA tensors run the CUDA kernels in place, without host
copies, on the current torch stream; they read float32, float16 and bfloat16 (float64 is
converted to float32 on the device) and write the outputs in the peers' dtypes (see
:mod:`._device`). The arguments listed under each function, other devices, and on CUDA
dstate > 256 or headdim > 256 raise NotImplementedError naming the argument.

- :func:`selective_scan_fn`, :func:`selective_scan_ref` (mamba_ssm.ops.selective_scan_interface)
- :func:`causal_conv1d_fn` (causal_conv1d)
- :func:`flash_attn_func` (flash_attn)
- :func:`mamba_inner_fn` (autograd through the ops above), :func:`mamba_inner_ref`
  (mamba_ssm.ops.selective_scan_interface)
- forward only (decode, state updated in place, no autograd): :func:`selective_state_update`
  (mamba_ssm.ops.triton.selective_state_update), :func:`causal_conv1d_update` (causal_conv1d),
  :func:`flash_attn_with_kvcache` (flash_attn; KV cache appended in place)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

from ._inference import causal_conv1d_update, selective_state_update
from ._kvcache import flash_attn_with_kvcache
from ._kvcache_args import scalars
from ._mamba_inner import mamba_inner_fn, mamba_inner_ref
from ._ops import attention_op, causal_conv1d_op, selective_scan_op
from ._varlen import causal_conv1d_varlen_states

__all__ = ["selective_scan_fn", "selective_scan_ref", "causal_conv1d_fn", "flash_attn_func",
           "mamba_inner_fn", "mamba_inner_ref", "selective_state_update",
           "causal_conv1d_update", "flash_attn_with_kvcache", "causal_conv1d_varlen_states"]


def selective_scan_fn(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                      delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                      return_last_state: bool = False):
    """mamba_ssm's ``selective_scan_fn`` (real A only).

    u, delta, z (batch, dim, L); A (dim, dstate); B, C each (batch, dstate, L), (batch,
    ngroups, dstate, L) or, time-invariant, (dim, dstate) (channel d uses B[d], as mamba_ssm's
    non-variable B/C); D, delta_bias (dim,). Returns out (batch, dim, L) in u's dtype, and
    with return_last_state the last state (batch, dim, dstate) float32.
    Differentiable in u, delta, A, B, C, D, z, delta_bias. Not supported: complex A, B, C.
    A (dim, dstate) B or C runs as ngroups = dim (one channel per group), broadcast over
    batch and time as a stride-0 view on CUDA (the CPU kernels get a contiguous copy,
    batch x dim x dstate x L floats); its gradient is summed back to (dim, dstate).
    """
    _real_only(A, B, C)
    B, C = _per_channel(u, B, C)
    y, last = selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def _real_only(A: Tensor, B: Tensor, C: Tensor) -> None:
    for name, t in (("A", A), ("B", B), ("C", C)):
        if isinstance(t, Tensor) and t.is_complex():
            raise NotImplementedError(f"{name}: complex {name} is not supported (real "
                                      "Mamba-1 only)")


def _check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor],
                       delta_bias: Optional[Tensor]) -> None:
    """The scan's shape rules (samba_ext.ops.contracts, as selective_scan_fn's op applies
    them), on shape-only stand-ins: for selective_scan_ref, which runs no kernel."""
    from ..ops import contracts

    def shape_of(name: str, t: Optional[Tensor]) -> Optional[np.ndarray]:
        if t is None:
            return None
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        return np.broadcast_to(np.float32(0), tuple(t.shape))

    contracts.selective_scan(*(shape_of(n, t) for n, t in (
        ("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
        ("delta_bias", delta_bias))))


def _per_channel(u: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B, C with a time-invariant (dim, dstate) one -> both (batch, dim, dstate, L) (ngroups
    = dim) as broadcast views (the other one's groups repeated per channel); unchanged when
    neither is 2-D. Shapes are checked by the op's contract afterwards."""
    if B.dim() != 2 and C.dim() != 2:
        return B, C
    if u.dim() != 3:
        raise ValueError(f"u: expected (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape

    def widen(name: str, m: Tensor) -> Tensor:
        if m.dim() == 2:
            if m.shape[0] != dim:
                raise ValueError(f"{name}: a time-invariant {name} is (dim, dstate) = ({dim}, "
                                 f"dstate), got shape {tuple(m.shape)}")
            return m[None, :, :, None].expand(batch, dim, m.shape[1], L)
        if m.dim() == 3:
            m = m[:, None]
        if m.dim() != 4 or m.shape[1] < 1 or dim % m.shape[1]:
            raise ValueError(f"{name}: expected (batch, dstate, L), (batch, ngroups, dstate, "
                             f"L) with ngroups dividing dim ({dim}) or (dim, dstate), got "
                             f"shape {tuple(m.shape)}")
        g = m.shape[1]
        if g == dim:
            return m
        return m[:, :, None].expand(m.shape[0], g, dim // g, *m.shape[2:]).reshape(
            m.shape[0], dim, *m.shape[2:])

    return widen("B", B), widen("C", C)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """Plain-torch reference of :func:`selective_scan_fn` (a loop over time, float32 or the
    inputs' wider dtype), differentiable by torch autograd; same arguments, shape rules and
    outputs, except that the last state is float64 for float64 inputs (as mamba_ssm's)."""
    _real_only(A, B, C)
    _check_scan_shapes(u, delta, A, *_per_channel(u, B, C), D, z, delta_bias)
    dtype_in = u.dtype
    wide = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(wide) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(wide)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape

    def per_channel(m: Tensor) -> Tensor:             # -> (batch, dim, N, L)
        if m.dim() == 2:                              # time-invariant (dim, N)
            return m[None, :, :, None].expand(batch, dim, m.shape[1], L)
        if m.dim() == 3:
            m = m[:, None]
        return m.repeat_interleave(dim // m.shape[1], dim=1)

    B, C = per_channel(B), per_channel(C)
    x = u.new_zeros((batch, dim, A.shape[1]))
    ys = []
    for t in range(L):
        x = torch.exp(delta[:, :, t, None] * A) * x + \
            (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(wide)[:, None]
    if z is not None:
        y = y * F.silu(z.to(wide))
    y = y.to(dtype_in)
    return (y, x) if return_last_state else y


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     seq_idx: Optional[Tensor] = None, initial_states: Optional[Tensor] = None,
                     return_final_states: bool = False,
                     final_states_out: Optional[Tensor] = None,
                     activation: Optional[str] = None):
    """causal-conv1d's ``causal_conv1d_fn``.

    x (batch, dim, L); weight (dim, width), 2 <= width <= 4; bias (dim,); initial_states
    (batch, dim, width-1); activation None, "silu" or "swish". Returns out (x's dtype), and
    with return_final_states also final_states (batch, dim, width-1) in x's dtype (written
    into final_states_out when given). seq_idx (batch, L) integer ids of packed sequences,
    as causal-conv1d: out[t] sees only the inputs of its own sequence, and out[t] = 0 where
    seq_idx[t] < 0 (padding); no initial_states and no final states with it; CPU and CUDA
    tensors, int32 or int64.
    Differentiable in x, weight, bias, initial_states.
    """
    if seq_idx is not None and return_final_states:
        raise ValueError("seq_idx: packed sequences return no final states (as "
                         "causal-conv1d); pass return_final_states=False")
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f'activation: expected None, "silu" or "swish", got '
                                  f"{activation!r}")
    if final_states_out is not None and not return_final_states:
        raise ValueError("final_states_out: only used with return_final_states=True")
    if final_states_out is not None:
        want = (x.shape[0], x.shape[1], weight.shape[-1] - 1) if x.dim() == 3 else None
        if final_states_out.device != x.device:
            raise ValueError(f"final_states_out: is on {final_states_out.device} but x is on "
                             f"{x.device}; pass all tensors on one device")
        if want is not None and tuple(final_states_out.shape) != want:
            raise ValueError(f"final_states_out: expected shape (batch, dim, width - 1) = "
                             f"{want}, got {tuple(final_states_out.shape)}")
        if final_states_out.dtype != x.dtype:
            raise ValueError(f"final_states_out: expected x's dtype {x.dtype}, got "
                             f"{final_states_out.dtype}")
    y, fin = causal_conv1d_op(x, weight, bias, initial_states, activation is not None,
                              seq_idx)
    y = y.to(x.dtype)
    if not return_final_states:
        return y
    fin = fin.to(x.dtype)
    if final_states_out is not None:
        final_states_out.copy_(fin)
        fin = final_states_out
    return y, fin


def _pad_head_dim(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v with zero columns appended up to a head dim that is a multiple of 8, where that
    moves the call onto the tensor cores: float16 / bfloat16 CUDA tensors of 4 dims with one
    head dim below 256 that is not a multiple of 8 (the tensor-core kernels read rows of whole
    16-byte vectors; otherwise the CUDA-core kernels run, many times slower). flash-attn pads
    the same way. The zero columns add exactly 0 to every score and give output columns (and
    gradient columns, through the pad's backward) that are cut off, so the result is that of
    the unpadded call up to the kernels' summation order. Anything else is returned as is."""
    ts = (q, k, v)
    if not all(isinstance(t, Tensor) and t.is_cuda and t.dim() == 4 for t in ts):
        return q, k, v
    hd = q.shape[-1]
    if (q.dtype not in (torch.float16, torch.bfloat16) or hd % 8 == 0 or hd > 256
            or any(t.dtype != q.dtype or t.shape[-1] != hd for t in ts)):
        return q, k, v
    pad = (0, 8 - hd % 8)
    return F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                    return_attn_probs: bool = False):
    """flash-attn's ``flash_attn_func``.

    q (batch, Lq, nheads, headdim); k, v (batch, Lk, nheads_kv, headdim). window_size
    (left, right), -1 unbounded; causal sets right = 0 (bottom-right aligned, as flash-attn);
    softcap as flash-attn. Returns out in q's dtype; with return_attn_probs, as flash-attn
    without dropout, (out, softmax_lse, None): softmax_lse (batch, nheads, Lq) float32, the
    natural log of each query's softmax denominator of the scaled (soft-capped) scores
    (+inf for a query that sees no key), and None for S_dmask (flash-attn returns it only
    when dropout_p > 0). softmax_lse is detached: flash-attn's backward ignores its
    gradient, here autograd sees it as a constant. deterministic: on CUDA, bfloat16 / float16
    inputs take the tensor-core backward, which sums dq (and dk / dv when query heads of a
    group are split over blocks) with float32 atomics, so the last bits vary between runs;
    deterministic=True makes them bitwise-repeatable, for more scratch memory (float32 copies
    of dq, up to 512 MiB) and some speed. The CPU and float32 backwards are always
    deterministic. alibi_slopes (nheads,) or (batch, nheads), as flash-attn: the score of
    query i and key j gets -slope |i + Lk - Lq - j| after the softcap (no gradient for the
    slopes). On CUDA, ALiBi runs the general tensor-core kernels (bfloat16 / float16; the
    Hopper wgmma backward does not take it) or the float32 CUDA-core ones. bfloat16 / float16
    head dims that are not a multiple of 8 are zero-padded to one on CUDA (as flash-attn
    does), so they run on the tensor cores too; out is then a view of the padded result.
    Not supported: dropout_p > 0.
    """
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p: only 0.0 is supported, got {dropout_p!r}")
    if alibi_slopes is not None and not isinstance(alibi_slopes, Tensor):
        raise TypeError(f"alibi_slopes: expected a torch.Tensor (nheads,) or (batch, nheads) "
                        f"or None, got {type(alibi_slopes).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    scale, left, right, cap = scalars(q, softmax_scale, bool(causal), window_size, softcap)
    qp, kp, vp = _pad_head_dim(q, k, v)
    out, lse = attention_op(qp, kp, vp, scale, left, right, cap, bool(deterministic),
                            alibi_slopes)
    out = out.to(q.dtype)
    if qp is not q:
        out = out[..., :q.shape[-1]]
    if not return_attn_probs:
        return out
    # a new tensor (the op's lse is saved for the backward): -inf -> +inf as flash-attn
    lse = lse.detach()
    return out, torch.where(lse == float("-inf"), float("inf"), lse), None
