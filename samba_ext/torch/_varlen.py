"""causal-conv1d's ``causal_conv1d_varlen_states``: the conv states of packed sequences.

After a prefill over sequences packed into one row (``causal_conv1d_fn`` with ``seq_idx``),
decoding each sequence needs its own conv state: the last ``state_len`` inputs of that
sequence, as ``causal_conv1d_update`` takes them. This gathers them with torch indexing on
the input's device (any device torch supports), forward only, as upstream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import PeerArgumentError

__all__ = ["causal_conv1d_varlen_states"]


def causal_conv1d_varlen_states(x: Tensor, cu_seqlens: Tensor, state_len: int) -> Tensor:
    """x (total_tokens, dim); cu_seqlens (batch + 1,) integer, the sorted cumulative sequence
    lengths starting at 0 (sequence i holds tokens cu_seqlens[i] .. cu_seqlens[i+1] - 1);
    state_len >= 0. Returns states (batch, dim, state_len) in x's dtype and device:
    states[i, :, state_len - k:] = x[end - k:end].T with end = cu_seqlens[i+1] and k =
    min(state_len, the sequence's length); the positions a shorter sequence does not fill
    are 0. The result is a transposed view of a (batch, state_len, dim) tensor, as
    causal-conv1d returns it. cu_seqlens is read to the host once (one synchronization) to
    check it: a bad value raises instead of reading outside x.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise PeerArgumentError(f"x: expected a (total_tokens, dim) tensor, got "
                                f"{getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 \
            or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise PeerArgumentError("cu_seqlens: expected a 1-D integer tensor of batch + 1 "
                                "cumulative lengths")
    if cu_seqlens.device != x.device:
        raise PeerArgumentError(f"cu_seqlens: is on {cu_seqlens.device} but x is on {x.device}")
    if isinstance(state_len, bool) or not isinstance(state_len, int) or state_len < 0:
        raise PeerArgumentError(f"state_len: expected an int >= 0, got {state_len!r}")
    total, dim = x.shape
    cu = cu_seqlens.long()
    host = cu.cpu()
    if int(host[0]) != 0 or bool((host[1:] < host[:-1]).any()) or int(host[-1]) > total:
        raise PeerArgumentError(f"cu_seqlens: expected sorted cumulative lengths from 0 to at "
                                f"most total_tokens = {total}, got {host.tolist()}")
    batch = cu.numel() - 1
    start, end = cu[:-1, None], cu[1:, None]
    pos = end - state_len + torch.arange(state_len, device=x.device)  # (batch, state_len)
    inside = pos >= start
    rows = x[pos.clamp(min=0, max=max(total - 1, 0))] if total > 0 else \
        x.new_zeros((batch, state_len, dim))
    states = torch.where(inside[..., None], rows, rows.new_zeros(()))
    return states.transpose(1, 2)
