"""Forward-only (inference) decode ops of samba_ext.torch: the one-step state updates.

``selective_state_update`` (mamba_ssm.ops.triton.selective_state_update) and
``causal_conv1d_update`` (causal_conv1d), registered as torch.library custom ops that mutate
their state argument (``samba_ext::selective_state_update``, ``samba_ext::causal_conv1d_update``)
with fake implementations, over the samba_ext kernels: the C kernels for CPU tensors, the
CUDA kernels for CUDA tensors (no host copies; see :mod:`._device`). They carry no autograd
(the peers' update functions have none either). The state keeps its own dtype and device and
is updated in place; the arithmetic runs in float32, as the peers' kernels do.

Not supported (NotImplementedError naming it): devices other than CPU and CUDA, complex A;
on CUDA dstate > 256.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import kernels as _k
from . import _cuda_limits
from ._device import act_dtype, arg, device_of, is_cuda, on_device, tensor


def _work(t: Tensor) -> Tensor:
    """The float32 C-contiguous tensor a kernel updates in place: t itself (detached, same
    memory) when it already is one, else a float32 copy to write back afterwards."""
    t = t.detach()
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.to(torch.float32).contiguous()


def _indices(name: str, idx: Optional[Tensor], batch: int, nstate: int) -> Optional[Tensor]:
    """Validate a (batch,) integer index tensor into a state of nstate rows -> int64 tensor.
    Negative entries mark padding rows (the peers' pad slot, -1): allowed here, handled by
    :func:`_valid`."""
    if idx is None:
        return None
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor (int32/int64), got {idx.dtype}")
    if tuple(idx.shape) != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},) (one state row per batch entry), "
                         f"got {tuple(idx.shape)}")
    idx = idx.to(torch.int64)
    real = idx[idx >= 0]
    if real.numel() and int(real.max()) >= nstate:
        raise ValueError(f"{name}: expected indices in [0, {nstate}) (the state's batch "
                         f"size) or negative (padding), got {int(real.max())}")
    if torch.unique(real).numel() != real.numel():
        raise ValueError(f"{name}: indices must be distinct (two batch entries would update "
                         "the same state row)")
    return idx


def _valid(idx: Optional[Tensor]) -> Optional[Tensor]:
    """(batch,) bool mask of the non-padding entries of idx, or None when there is no
    padding (no index tensor, or no negative entry)."""
    if idx is None:
        return None
    mask = idx >= 0
    return None if bool(mask.all()) else mask


def _sub(t: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is None or mask is None else t[mask]


def _unpad(out: Tensor, mask: Optional[Tensor], batch: int) -> Tensor:
    """The outputs of the valid entries placed in a batch of zeros (padding rows output 0)."""
    if mask is None:
        return out
    full = out.new_zeros((batch,) + tuple(out.shape[1:]))
    full[mask] = out
    return full


def _shape(name: str, t: Optional[Tensor], want: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != want:
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


# ------------------------------------------------------------ selective_state_update ---
@torch.library.custom_op("samba_ext::selective_state_update", mutates_args=("state",))
def selective_state_update_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                              C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                              dt_bias: Optional[Tensor], dt_softplus: bool,
                              state_batch_indices: Optional[Tensor]) -> Tensor:
    """Multi-head layout only (the public function adds the head axis):
    state (nstate, nheads, headdim, dstate) any float dtype, updated in place; x, dt, z
    (batch, nheads, headdim); A (nheads, headdim, dstate); B, C (batch, ngroups, dstate);
    D, dt_bias (nheads, headdim); state_batch_indices (batch,) or None.
    -> out (batch, nheads, headdim) float32 (CUDA: x's dtype)."""
    dev = device_of((("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C),
                     ("D", D), ("z", z), ("dt_bias", dt_bias),
                     ("state_batch_indices", state_batch_indices)))
    if is_cuda(dev):
        _cuda_limits.scan(A)
    batch, nheads, headdim = x.shape
    dstate = state.shape[-1]
    idx = state_batch_indices
    rows = state if idx is None else state.index_select(0, idx)
    work = _work(rows.reshape(batch, nheads * headdim, dstate))  # state's memory if float32
    fl = (batch, nheads * headdim)
    with on_device(dev):
        y = _k.selective_state_update(
            work.numpy() if work.device.type == "cpu" else work, arg(x.reshape(fl)),
            arg(dt.reshape(fl)), arg(A.reshape(nheads * headdim, dstate)), arg(B), arg(C),
            arg(None if D is None else D.reshape(-1)), arg(None if z is None else z.reshape(fl)),
            arg(None if dt_bias is None else dt_bias.reshape(-1)), dt_softplus)
        y = tensor(y, dev)
    new = work.reshape(rows.shape)
    if idx is None:
        if new.data_ptr() != state.data_ptr():
            state.copy_(new)
    else:
        state.index_copy_(0, idx, new.to(state.dtype))
    return y.reshape(x.shape)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    return x.new_empty(x.shape, dtype=act_dtype(x))


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                           C: Tensor, D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                           dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                           state_batch_indices: Optional[Tensor] = None) -> Tensor:
    """mamba_ssm's (Triton) ``selective_state_update``: one recurrent step, state in place.

    Either layout:
      state (batch, dim, dstate); x, dt, z (batch, dim); A (dim, dstate); B, C (batch,
      dstate) or (batch, 1, dstate); D, dt_bias (dim,); returns out (batch, dim);
    or multi-head:
      state (batch, nheads, headdim, dstate); x, dt, z (batch, nheads, headdim); A (nheads,
      headdim, dstate) (broadcast views such as ``A[:, None, None].expand(...)`` are fine);
      B, C (batch, ngroups, dstate), head h using group h // (nheads // ngroups); D, dt_bias
      (nheads, headdim); returns out (batch, nheads, headdim).
    dt += dt_bias, then softplus when dt_softplus; state = exp(dt A) state + dt B x;
    out = state . C + D x, times silu(z). The state keeps its dtype (any float dtype, e.g. the
    model's bfloat16); out is computed from the float32 state before it is rounded to that
    dtype, as in the Triton kernel. out has x's dtype. With state_batch_indices (batch,)
    int, batch entry b uses (and updates) state[state_batch_indices[b]], and state may have
    more rows than the batch; a negative entry (the Triton kernel's padding, -1) marks a
    padding entry: its out row is 0 and no state row is read or written. CPU or CUDA tensors, all on one device (on CUDA dstate <=
    256).
    """
    named = (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D),
             ("z", z), ("dt_bias", dt_bias))
    device_of(named + (("state_batch_indices", state_batch_indices),))
    for name, t in named:
        if t is not None and not t.dtype.is_floating_point:
            if t.dtype.is_complex:
                raise NotImplementedError(f"{name}: complex tensors are not supported "
                                          "(real Mamba only)")
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    has_heads = state.dim() == 4
    if state.dim() not in (3, 4):
        raise ValueError(f"state: expected (batch, dim, dstate) or (batch, nheads, headdim, "
                         f"dstate), got shape {tuple(state.shape)}")

    def heads(name: str, t: Optional[Tensor], n: int, axis: int) -> Optional[Tensor]:
        # the 3-D layout is the multi-head one with a single head (inserted at axis)
        if t is None or has_heads:
            return t
        if t.dim() != n:
            raise ValueError(f"{name}: expected {n} dimensions with a 3-D state, got shape "
                             f"{tuple(t.shape)}")
        return t.unsqueeze(axis)

    s4 = state if has_heads else state.unsqueeze(1)
    x4, dt4, z4 = heads("x", x, 2, 1), heads("dt", dt, 2, 1), heads("z", z, 2, 1)
    A4, D4, db4 = heads("A", A, 2, 0), heads("D", D, 1, 0), heads("dt_bias", dt_bias, 1, 0)
    B4 = B.unsqueeze(1) if B.dim() == 2 else B
    C4 = C.unsqueeze(1) if C.dim() == 2 else C
    _, nheads, headdim, dstate = s4.shape
    if x4.dim() != 3:
        raise ValueError(f"x: expected (batch, nheads, headdim), got shape {tuple(x.shape)}")
    batch = x4.shape[0]

    def shape(name: str, t4: Optional[Tensor], want: tuple[int, ...], axis: int) -> None:
        # named in the caller's layout: a 3-D state's head axis (at axis) is not shown
        if t4 is None or tuple(t4.shape) == want:
            return
        got = tuple(t4.shape)
        if not has_heads:
            want, got = want[:axis] + want[axis + 1:], got[:axis] + got[axis + 1:]
        raise ValueError(f"{name}: expected shape {want}, got {got}")

    shape("x", x4, (batch, nheads, headdim), 1)
    shape("dt", dt4, (batch, nheads, headdim), 1)
    shape("z", z4, (batch, nheads, headdim), 1)
    shape("A", A4, (nheads, headdim, dstate), 0)
    shape("D", D4, (nheads, headdim), 0)
    shape("dt_bias", db4, (nheads, headdim), 0)
    if B4.dim() != 3 or B4.shape[0] != batch or B4.shape[2] != dstate:
        raise ValueError(f"B: expected (batch, ngroups, dstate) = ({batch}, ngroups, {dstate})"
                         f" or (batch, dstate), got shape {tuple(B.shape)}")
    ngroups = B4.shape[1]
    if ngroups < 1 or nheads % ngroups:
        raise ValueError(f"B: ngroups ({ngroups}) must divide nheads ({nheads}; 1 for a 3-D "
                         "state)")
    _shape("C", C4, tuple(B4.shape))
    if state_batch_indices is None and s4.shape[0] != batch:
        raise ValueError(f"state: batch {s4.shape[0]} != x's batch {batch}; pass "
                         "state_batch_indices to select state rows")
    idx = _indices("state_batch_indices", state_batch_indices, batch, s4.shape[0])
    m = _valid(idx)
    if m is not None and not bool(m.any()):        # padding only: nothing to update
        out = x4.new_zeros(x4.shape)
    else:
        out = selective_state_update_op(s4, _sub(x4, m), _sub(dt4, m), A4, _sub(B4, m),
                                        _sub(C4, m), D4, _sub(z4, m), db4, bool(dt_softplus),
                                        _sub(idx, m))
        out = _unpad(out.to(x.dtype), m, batch)
    return out if has_heads else out.squeeze(1)


# -------------------------------------------------------------- causal_conv1d_update ---
@torch.library.custom_op("samba_ext::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor,
                            bias: Optional[Tensor], silu: bool,
                            cache_seqlens: Optional[Tensor],
                            conv_state_indices: Optional[Tensor]) -> Tensor:
    """x (batch, dim, seqlen); conv_state (nstate, dim, state_len), state_len >= width-1, any
    float dtype, updated in place; weight (dim, width); bias (dim,); cache_seqlens,
    conv_state_indices (batch,) int64 or None. -> out (batch, dim, seqlen) float32 (CUDA:
    x's dtype)."""
    dev = device_of((("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias),
                     ("cache_seqlens", cache_seqlens),
                     ("conv_state_indices", conv_state_indices)))
    batch, dim, seqlen = x.shape
    width, state_len = weight.shape[1], conv_state.shape[2]
    idx = conv_state_indices
    rows = conv_state if idx is None else conv_state.index_select(0, idx)
    # the width-1 inputs before x: the last ones of the state, or with cache_seqlens (a
    # circular buffer whose next write slot is cache_seqlens % state_len) the ones before it
    if cache_seqlens is None:
        prev = rows[:, :, state_len - (width - 1):]
    else:
        pos = torch.remainder(cache_seqlens[:, None]
                              + torch.arange(-(width - 1), 0, dtype=torch.int64, device=dev),
                              state_len)
        prev = rows.gather(2, pos[:, None, :].expand(batch, dim, width - 1))
    with on_device(dev):
        y = tensor(_k.causal_conv1d(arg(x), arg(weight), arg(bias), "silu" if silu else None,
                                    arg(prev)), dev)
    xs = x.detach().to(conv_state.dtype)
    if cache_seqlens is None:
        new = torch.cat([rows, xs], dim=2)[:, :, -state_len:]
    else:
        # only the last state_len tokens survive; their slots are then distinct
        k = min(seqlen, state_len)
        slots = torch.remainder(cache_seqlens[:, None]
                                + torch.arange(seqlen - k, seqlen, dtype=torch.int64, device=dev),
                                state_len)
        new = rows.clone()
        new.scatter_(2, slots[:, None, :].expand(batch, dim, k), xs[:, :, seqlen - k:])
    if idx is None:
        conv_state.copy_(new)
    else:
        conv_state.index_copy_(0, idx, new)
    return y


@causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices):
    return x.new_empty(x.shape, dtype=act_dtype(x))


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor,
                         bias: Optional[Tensor] = None, activation: Optional[str] = None,
                         cache_seqlens: Optional[Tensor] = None,
                         conv_state_indices: Optional[Tensor] = None) -> Tensor:
    """causal-conv1d's ``causal_conv1d_update``: decode steps of the depthwise causal conv.

    x (batch, dim) or (batch, dim, seqlen) (several new tokens at once); conv_state (batch,
    dim, state_len) with state_len >= width-1, holding the latest inputs (newest last), any
    float dtype, updated in place in that dtype; weight (dim, width), 2 <= width <= 4; bias
    (dim,); activation None, "silu" or "swish". cache_seqlens (batch,) int: conv_state is a
    circular buffer, x is written at slots cache_seqlens % state_len onward and the width-1
    inputs before it are read from the slots before that. conv_state_indices (batch,) int:
    batch entry b uses row conv_state_indices[b] of a larger conv_state; a negative entry
    (causal-conv1d's padding, -1) marks a padding entry: its out row is 0 and conv_state is
    left untouched for it. Returns out with
    x's shape and dtype (float32 arithmetic). CPU or CUDA tensors, all on one device.
    """
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f'activation: expected None, "silu" or "swish", got '
                                  f"{activation!r}")
    device_of((("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias),
               ("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)))
    for name, t in (("x", x), ("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        if t is not None and not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    unsqueeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if unsqueeze else x
    if x3.dim() != 3:
        raise ValueError(f"x: expected (batch, dim) or (batch, dim, seqlen), got shape "
                         f"{tuple(x.shape)}")
    batch, dim, _ = x3.shape
    if weight.dim() != 2 or weight.shape[0] != dim or not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"weight: expected (dim, width) = ({dim}, 2..4), got shape "
                         f"{tuple(weight.shape)}")
    width = weight.shape[1]
    _shape("bias", bias, (dim,))
    if conv_state.dim() != 3 or conv_state.shape[1] != dim or conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state: expected (batch, dim, state_len) = (batch, {dim}, "
                         f">= {width - 1}), got shape {tuple(conv_state.shape)}")
    if conv_state_indices is None and conv_state.shape[0] != batch:
        raise ValueError(f"conv_state: batch {conv_state.shape[0]} != x's batch {batch}; pass "
                         "conv_state_indices to select state rows")
    idx = _indices("conv_state_indices", conv_state_indices, batch, conv_state.shape[0])
    seq = None
    if cache_seqlens is not None:
        if cache_seqlens.dtype.is_floating_point or cache_seqlens.dtype == torch.bool:
            raise TypeError(f"cache_seqlens: expected an integer tensor, got "
                            f"{cache_seqlens.dtype}")
        _shape("cache_seqlens", cache_seqlens, (batch,))
        seq = cache_seqlens.to(torch.int64)
        if batch and int(seq.min()) < 0:
            raise ValueError(f"cache_seqlens: expected values >= 0, got {int(seq.min())}")
    m = _valid(idx)
    if m is not None and not bool(m.any()):        # padding only: nothing to update
        out = x3.new_zeros(x3.shape)
    else:
        out = causal_conv1d_update_op(_sub(x3, m), conv_state, weight, bias,
                                      activation is not None, _sub(seq, m),
                                      _sub(idx, m)).to(x.dtype)
        out = _unpad(out, m, batch)
    return out.squeeze(-1) if unsqueeze else out
