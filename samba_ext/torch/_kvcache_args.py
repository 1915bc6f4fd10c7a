"""Argument checks of flash_attn_with_kvcache: every rule, before any cache row is written.

:func:`check` validates the arguments and returns them normalized (integer tensors as
int64, cache_seqlens as a (batch,) tensor on q's device, the window with causality folded
in). Wrong kinds raise TypeError, wrong shapes or values and tensors on another device than
q's PeerArgumentError (a ValueError and, as flash-attn's own checks raise, a RuntimeError), arguments this implementation does not support NotImplementedError; each
message starts with the argument's name. On CUDA the range checks read small reductions of
the index tensors to the host (synchronizing).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from ..errors import PeerArgumentError
from ..ops import checks as ck
from ._device import check_kind


class KvArgs(NamedTuple):
    """Normalized arguments of the samba_ext::attention_kvcache op."""
    cache_seqlens: Tensor              # (batch,) int64, keys before the new ones
    cache_batch_idx: Optional[Tensor]  # (batch,) int64 or None
    cache_leftpad: Optional[Tensor]    # (batch,) int64 or None
    block_table: Optional[Tensor]      # (batch, max_blocks) int64 or None
    softmax_scale: float
    window_left: int                   # -1 unbounded
    window_right: int                  # -1 unbounded; 0 when causal
    softcap: float
    rotary_q_per_token: bool           # q rotated at cache_seqlens + i (else all at + 0)
    alibi_slopes: Optional[Tensor]     # (batch, nheads) float32 or None


def _device(name: str, t: Optional[Tensor], device: torch.device) -> None:
    """t (when given) lives on q's device (CPU or CUDA)."""
    if t is None:
        return
    check_kind(name, t.device)
    if t.device != device:
        raise PeerArgumentError(f"{name}: is on {t.device} but q is on {device}; pass all tensors "
                         "on one device")


def _floats(name: str, t: Tensor, layout: str, device: torch.device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    _device(name, t, device)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.dim() != 4:
        raise PeerArgumentError(f"{name}: expected a 4-D tensor {layout}, got shape {tuple(t.shape)}")


def _ints(name: str, t: Any, shape: tuple, device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected an integer tensor of shape {shape}, got "
                        f"{type(t).__name__}")
    _device(name, t, device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor (int32/int64), got {t.dtype}")
    if tuple(t.shape) != shape:
        raise PeerArgumentError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    return t.to(torch.int64)


def _in_range(name: str, t: Tensor, lo: int, hi: int, what: str) -> None:
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise PeerArgumentError(f"{name}: expected values in [{lo}, {hi}] ({what}), got "
                         f"{int(t.min())}..{int(t.max())}")


def _host_int(v: Any) -> Any:
    """A 0-d integer tensor (as flash-attn's tests pass window sizes, e.g. the items of
    ``torch.randint(0, n, (2,))``) as a Python int (a device sync for a CUDA tensor); anything
    else unchanged, for int_scalar to check."""
    if isinstance(v, Tensor) and v.dim() == 0 and not (v.dtype.is_floating_point
                                                        or v.dtype.is_complex
                                                        or v.dtype == torch.bool):
        return int(v)
    return v


def scalars(q: Tensor, softmax_scale: Any, causal: bool, window_size: Any,
            softcap: Any) -> tuple[float, int, int, float]:
    """flash-attn's scalar arguments checked (both functions): -> (softmax_scale, window left,
    window right (0 when causal), softcap)."""
    scale = ck.f32_scalar(softmax_scale, "softmax_scale", allow_none=True)
    if scale is None and q.dim() >= 1 and q.shape[-1] < 1:
        raise PeerArgumentError(f"q: headdim (the last axis) must be >= 1, got shape "
                                f"{tuple(q.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    try:
        left, right = window_size
    except (TypeError, ValueError) as e:
        raise TypeError("window_size: expected a pair (left, right) of ints, -1 = unbounded, "
                        f"got {window_size!r}") from e
    left = ck.int_scalar(_host_int(left), "window_size[0]", lo=-1,
                         expected="an int >= 0 or -1")
    right = ck.int_scalar(_host_int(right), "window_size[1]", lo=-1,
                          expected="an int >= 0 or -1")
    cap = ck.f32_scalar(softcap, "softcap", lo=0.0, expected="a finite value >= 0")
    return scale, left, 0 if causal else right, cap


def check(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor],
          v: Optional[Tensor], rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor],
          cache_seqlens: Any, cache_batch_idx: Optional[Tensor],
          cache_leftpad: Optional[Tensor], block_table: Optional[Tensor], softmax_scale: Any,
          causal: bool, window_size: Any, softcap: Any, alibi_slopes: Optional[Tensor],
          num_splits: Any) -> KvArgs:
    """All of flash_attn_with_kvcache's rules; see its docstring for the shapes."""
    splits = ck.int_scalar(num_splits, "num_splits", lo=0)
    if splits > 1:
        raise NotImplementedError(f"num_splits: only 0 (automatic) and 1 are supported; the "
                                  f"kernels do not split the keys, got {splits}")
    if not isinstance(q, Tensor):
        raise TypeError(f"q: expected a torch.Tensor (batch, seqlen_q, nheads, headdim), got "
                        f"{type(q).__name__}")
    dev = q.device
    _floats("q", q, "(batch, seqlen_q, nheads, headdim)", dev)
    paged = block_table is not None
    layout = ("(num_blocks, page_block_size, nheads_k, headdim)" if paged else
              "(batch_cache, seqlen_cache, nheads_k, headdim)")
    _floats("k_cache", k_cache, layout, dev)
    _floats("v_cache", v_cache, layout, dev)
    batch, _, nheads, hd = q.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise PeerArgumentError(f"v_cache: expected k_cache's shape {tuple(k_cache.shape)}, got "
                         f"{tuple(v_cache.shape)}")
    nheads_k = k_cache.shape[2]
    if k_cache.shape[3] != hd:
        raise PeerArgumentError(f"k_cache: headdim (shape[3] = {k_cache.shape[3]}) must equal q's "
                         f"({hd})")
    if nheads_k < 1 or nheads % nheads_k:
        raise PeerArgumentError(f"q: nheads (q.shape[2] = {nheads}) must be a multiple of nheads_k "
                         f"(k_cache.shape[2] = {nheads_k})")
    if (k is None) != (v is None):
        missing = "v" if v is None else "k"
        raise PeerArgumentError(f"{missing}: k and v are given together (the new keys and values); "
                         f"{missing} is None")
    seqlen_new = 0
    if k is not None:
        _floats("k", k, "(batch, seqlen_new, nheads_k, headdim)", dev)
        _floats("v", v, "(batch, seqlen_new, nheads_k, headdim)", dev)
        seqlen_new = k.shape[1]
        want = (batch, seqlen_new, nheads_k, hd)
        for name, t in (("k", k), ("v", v)):
            if tuple(t.shape) != want:
                raise PeerArgumentError(f"{name}: expected shape (batch, seqlen_new, nheads_k, "
                                 f"headdim) = {want}, got {tuple(t.shape)}")
        if cache_seqlens is None:
            raise PeerArgumentError("cache_seqlens: required when k and v are given (where the new "
                             "keys are written)")

    if paged:
        if cache_batch_idx is not None:
            raise PeerArgumentError("cache_batch_idx: not used with block_table (a paged cache maps "
                             "each batch row to its blocks); pass None")
        if block_table.dim() != 2 or block_table.shape[0] != batch:
            raise PeerArgumentError(f"block_table: expected shape (batch, max_num_blocks_per_seq) = "
                             f"({batch}, n), got {tuple(block_table.shape)}")
        table = _ints("block_table", block_table, tuple(block_table.shape), dev)
        _in_range("block_table", table, 0, k_cache.shape[0] - 1, "block indices of k_cache")
        capacity = table.shape[1] * k_cache.shape[1]
    else:
        table = None
        capacity = k_cache.shape[1]
    idx = None
    if cache_batch_idx is not None:
        idx = _ints("cache_batch_idx", cache_batch_idx, (batch,), dev)
        _in_range("cache_batch_idx", idx, 0, k_cache.shape[0] - 1, "rows of k_cache")
        if k is not None and torch.unique(idx).numel() != batch:
            raise PeerArgumentError("cache_batch_idx: indices must be distinct when k and v are "
                             "given (two batch rows would write the same cache row)")
    elif not paged and k_cache.shape[0] < batch:
        raise PeerArgumentError(f"k_cache: batch_cache (shape[0] = {k_cache.shape[0]}) must be >= "
                         f"q's batch ({batch}) without cache_batch_idx")

    if cache_seqlens is None:
        seqlens = torch.full((batch,), capacity, dtype=torch.int64, device=dev)
    elif isinstance(cache_seqlens, Tensor):
        seqlens = _ints("cache_seqlens", cache_seqlens, (batch,), dev)
    else:
        n = ck.int_scalar(cache_seqlens, "cache_seqlens", expected="an int >= 0 or an "
                          "integer tensor (batch,)")
        seqlens = torch.full((batch,), n, dtype=torch.int64, device=dev)
    _in_range("cache_seqlens", seqlens, 0, capacity - seqlen_new,
              f"the cache holds {capacity} positions per row"
              + (f": block_table's {table.shape[1]} blocks of {k_cache.shape[1]}" if paged
                 else "")
              + (f", {seqlen_new} of them for the new keys" if seqlen_new else ""))
    pad = None
    if cache_leftpad is not None:
        pad = _ints("cache_leftpad", cache_leftpad, (batch,), dev)
        if pad.numel() and (int(pad.min()) < 0 or bool((pad > seqlens).any())):
            raise PeerArgumentError("cache_leftpad: expected 0 <= cache_leftpad[b] <= "
                             "cache_seqlens[b] (the first valid key of each row)")
    if table is not None and k is not None:
        # the positions each row writes must not share a slot with another row's
        pos = seqlens[:, None] + torch.arange(seqlen_new, device=dev)
        bs = k_cache.shape[1]
        slots = table.gather(1, pos // bs) * bs + pos % bs
        if torch.unique(slots).numel() != slots.numel():
            raise PeerArgumentError("block_table: two batch rows would write the new keys into the "
                             "same block slots")

    if (rotary_cos is None) != (rotary_sin is None):
        raise PeerArgumentError(f"{'rotary_sin' if rotary_sin is None else 'rotary_cos'}: rotary_cos "
                         "and rotary_sin are given together")
    if rotary_cos is not None:
        if k is None:
            raise PeerArgumentError("rotary_cos: the rotary embedding applies to new keys; it needs "
                             "k and v")
        for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
            if not isinstance(t, Tensor) or not t.dtype.is_floating_point or t.dim() != 2:
                raise TypeError(f"{name}: expected a 2-D floating-point tensor (seqlen_ro, "
                                "rotary_dim / 2)")
            _device(name, t, dev)
        if tuple(rotary_sin.shape) != tuple(rotary_cos.shape):
            raise PeerArgumentError(f"rotary_sin: expected rotary_cos's shape "
                             f"{tuple(rotary_cos.shape)}, got {tuple(rotary_sin.shape)}")
        if not 2 <= 2 * rotary_cos.shape[1] <= hd:
            raise PeerArgumentError(f"rotary_cos: rotary_dim = 2 * shape[1] = {2 * rotary_cos.shape[1]}"
                             f" must be in [2, headdim = {hd}]")
    scale, left, right, cap = scalars(q, softmax_scale, causal, window_size, softcap)
    # flash-attn rotates query i at cache_seqlens + i when the attention is causal or local
    # (a window side shorter than the cache capacity), otherwise every query at cache_seqlens
    per_token = 0 <= left < capacity or 0 <= right < capacity
    if rotary_cos is not None and batch:
        span = max(q.shape[1] if per_token else 1, seqlen_new)
        need = int(seqlens.max()) + span
        if rotary_cos.shape[0] < need:
            raise PeerArgumentError(f"rotary_cos: seqlen_ro (shape[0] = {rotary_cos.shape[0]}) must "
                             f"cover the rotated positions, up to {need - 1}")
    alibi = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor) or not alibi_slopes.dtype.is_floating_point:
            raise TypeError("alibi_slopes: expected a floating-point torch.Tensor (nheads,) or "
                            f"(batch, nheads), got {type(alibi_slopes).__name__}")
        _device("alibi_slopes", alibi_slopes, dev)
        if tuple(alibi_slopes.shape) not in ((nheads,), (batch, nheads)):
            raise PeerArgumentError(f"alibi_slopes: expected shape (nheads,) = ({nheads},) or "
                                    f"(batch, nheads) = ({batch}, {nheads}), got "
                                    f"{tuple(alibi_slopes.shape)}")
        alibi = alibi_slopes.detach().float().expand(batch, nheads).contiguous()
    return KvArgs(seqlens, idx, pad, table, scale, left, right, cap, per_token, alibi)
