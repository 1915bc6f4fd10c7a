"""flash-attn's ``flash_attn_with_kvcache`` over samba_ext's attention forward (no autograd).

The new keys/values are written into the caches in place (torch indexing on the caches'
device), then each batch row attends to its valid cache positions through
:func:`samba_ext.grad.attention_fwd` (GQA, bottom-right aligned causality, two-sided windows,
softcap, log-sum-exp), float32 arithmetic: the C kernel for CPU tensors, the CUDA kernel for
CUDA tensors (no host copies of the data; the per-row lengths and indices are read to the
host once per call, one synchronization). Registered as the torch.library op
``samba_ext::attention_kvcache`` (mutating k_cache and v_cache) with a fake implementation.
The argument rules live in :mod:`._kvcache_args`.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from .. import grad as _grad
from . import _cuda_limits
from ._device import arg, device_of, is_cuda, on_device, tensors
from ._kvcache_args import check
from ._rotary import apply_rotary_table


def _slots(b: int, start: int, stop: int, row: int, block_table: Optional[Tensor],
           block_size: int) -> Any:
    """Index of logical positions start..stop-1 of batch row b into a cache: row ``row`` of
    a contiguous cache (basic slicing: reads give views), or (blocks, offsets) tensors
    through block_table[b] of a paged one."""
    if block_table is None:
        return row, slice(start, stop)
    pos = torch.arange(start, stop, dtype=torch.int64, device=block_table.device)
    return block_table[b, pos // block_size], pos % block_size


def _attend(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float, window: tuple[int, int],
            softcap: float, alibi: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One batch row: q (1, Lq, H, hd), k, v (1, n, Hkv, hd), alibi (1, H) or None -> (out,
    lse) float32 on q's device (CPU: the float32 arrays of the tensors; CUDA: the tensors as
    they are)."""
    dev = q.device
    if not is_cuda(dev):
        q, k, v = (t.detach().to(torch.float32) for t in (q, k, v))
    with on_device(dev):
        out, lse = _grad.attention_fwd(arg(q), arg(k), arg(v), softmax_scale, False, window,
                                       softcap, arg(alibi))
        return tensors((out, lse), dev)


@torch.library.custom_op("samba_ext::attention_kvcache", mutates_args=("k_cache", "v_cache"))
def attention_kvcache_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor],
                         v: Optional[Tensor], rotary_cos: Optional[Tensor],
                         rotary_sin: Optional[Tensor], cache_seqlens: Tensor,
                         cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                         block_table: Optional[Tensor], softmax_scale: float, window_left: int,
                         window_right: int, softcap: float, rotary_interleaved: bool,
                         rotary_q_per_token: bool, alibi_slopes: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
    """Arguments as checked by _kvcache_args.check (int64 index tensors, cache_seqlens a
    (batch,) tensor, causality folded into window_right = 0, alibi_slopes (batch, nheads)
    float32 or None).
    -> (out (batch, seqlen_q, nheads, headdim) float32, lse (batch, nheads, seqlen_q) float32)
    """
    dev = device_of((("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v),
                     ("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin),
                     ("cache_seqlens", cache_seqlens), ("cache_batch_idx", cache_batch_idx),
                     ("cache_leftpad", cache_leftpad), ("block_table", block_table),
                     ("alibi_slopes", alibi_slopes)))
    if is_cuda(dev):
        _cuda_limits.attention_heads(q)   # one attention call per batch row
    batch, seqlen_q = q.shape[0], q.shape[1]
    seqlen_new = 0 if k is None else k.shape[1]
    block_size = k_cache.shape[1]
    # the per-row lengths and rows drive the host loop below: read once (on CUDA one sync)
    seq = cache_seqlens.tolist()
    rows = list(range(batch)) if cache_batch_idx is None else cache_batch_idx.tolist()
    pads = [0] * batch if cache_leftpad is None else cache_leftpad.tolist()
    if k is not None and v is not None:
        if rotary_cos is not None and rotary_sin is not None:
            pos = cache_seqlens[:, None] + torch.arange(seqlen_new, dtype=torch.int64,
                                                        device=dev)
            k = apply_rotary_table(k, rotary_cos, rotary_sin, pos, rotary_interleaved)
        kw, vw = k.detach().to(k_cache.dtype), v.detach().to(v_cache.dtype)
        for b in range(batch):
            at = _slots(b, seq[b], seq[b] + seqlen_new, rows[b], block_table, block_size)
            k_cache[at] = kw[b]
            v_cache[at] = vw[b]
    if rotary_cos is not None and rotary_sin is not None:
        steps = torch.arange(seqlen_q, dtype=torch.int64, device=dev) if rotary_q_per_token \
            else torch.zeros(seqlen_q, dtype=torch.int64, device=dev)
        q = apply_rotary_table(q, rotary_cos, rotary_sin, cache_seqlens[:, None] + steps,
                               rotary_interleaved)
    out = q.new_empty(q.shape, dtype=torch.float32)
    lse = q.new_empty((batch, q.shape[2], seqlen_q), dtype=torch.float32)
    for b in range(batch):
        at = _slots(b, pads[b], seq[b] + seqlen_new, rows[b], block_table, block_size)
        ob, lb = _attend(q[b:b + 1], k_cache[at][None], v_cache[at][None], softmax_scale,
                         (window_left, window_right), softcap,
                         None if alibi_slopes is None else alibi_slopes[b:b + 1])
        out[b] = ob[0]
        lse[b] = lb[0]
    # a query that sees no key: out 0 and, as flash-attn reports it, lse = +inf
    lse[lse == float("-inf")] = float("inf")
    return out, lse


@attention_kvcache_op.register_fake
def _(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
      cache_leftpad, block_table, softmax_scale, window_left, window_right, softcap,
      rotary_interleaved, rotary_q_per_token, alibi_slopes=None):
    return (q.new_empty(q.shape, dtype=torch.float32),
            q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32))


def flash_attn_with_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor,
                            k: Optional[Tensor] = None, v: Optional[Tensor] = None,
                            rotary_cos: Optional[Tensor] = None,
                            rotary_sin: Optional[Tensor] = None,
                            cache_seqlens: Optional[Union[int, Tensor]] = None,
                            cache_batch_idx: Optional[Tensor] = None,
                            cache_leftpad: Optional[Tensor] = None,
                            block_table: Optional[Tensor] = None,
                            softmax_scale: Optional[float] = None, causal: bool = False,
                            window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True,
                            alibi_slopes: Optional[Tensor] = None, num_splits: int = 0,
                            return_softmax_lse: bool = False) -> Any:
    """flash-attn's ``flash_attn_with_kvcache``: append to a KV cache in place, then attend.

    q (batch, seqlen_q, nheads, headdim); k_cache, v_cache (batch_cache, seqlen_cache,
    nheads_k, headdim), or with block_table (num_blocks, page_block_size, nheads_k, headdim),
    any float dtype, nheads % nheads_k == 0 (GQA). k, v (batch, seqlen_new, nheads_k,
    headdim), optional: written (in the caches' dtype) at positions cache_seqlens[b] ..
    cache_seqlens[b] + seqlen_new - 1 of cache row cache_batch_idx[b] (row b without it).
    cache_seqlens: int or integer tensor (batch,), required with k; None means the whole
    cache. Batch row b then attends to cache positions cache_leftpad[b] (0 without it) ..
    cache_seqlens[b] + seqlen_new - 1, with flash-attn's masking over those n keys: query i
    sits at key position i + n - seqlen_q (causal bottom-right aligned; window_size (left,
    right), -1 unbounded); scores softmax_scale q.k (default 1/sqrt(headdim)), softcapped when
    softcap > 0, then (alibi_slopes (nheads,) or (batch, nheads), as flash-attn) minus
    slope |i + n - seqlen_q - j| for key j. block_table (batch, max_blocks) int: position p
    of row b lives in block block_table[b, p // page_block_size] at offset p %
    page_block_size (any block size).
    rotary_cos, rotary_sin (seqlen_ro, rotary_dim / 2), with k only: the new keys are rotated
    at positions cache_seqlens[b] + t before they are written, and the queries at
    cache_seqlens[b] + i when causal or local (a window side shorter than the cache), else
    all at cache_seqlens[b]; rotary_interleaved pairs features (0, 1), (2, 3) ... (True) or
    (i, i + rotary_dim / 2) (False).

    Returns out (batch, seqlen_q, nheads, headdim) in q's dtype, and with
    return_softmax_lse also lse (batch, nheads, seqlen_q) float32 (natural log of the softmax
    normalizer); a query that sees no key gets out 0 and lse +inf, as flash-attn.
    Forward only (no autograd, as flash-attn's). CPU or CUDA tensors, all on one device
    (the integer tensors too), float32 arithmetic. On CUDA the new keys are written and the
    rows gathered by torch indexing on the device; the lengths and indices are read to the
    host once per call (one synchronization) to drive one attention call per batch row.
    Not supported (NotImplementedError): num_splits > 1; on CUDA headdim > 256. Also
    refused (ValueError): an index or length out of the cache, k without cache_seqlens,
    repeated cache_batch_idx (or shared block slots) when writing.
    """
    a = check(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
              cache_batch_idx, cache_leftpad, block_table, softmax_scale, causal, window_size,
              softcap, alibi_slopes, num_splits)
    out, lse = attention_kvcache_op(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin,
                                    a.cache_seqlens, a.cache_batch_idx, a.cache_leftpad,
                                    a.block_table, a.softmax_scale, a.window_left,
                                    a.window_right, a.softcap, bool(rotary_interleaved),
                                    a.rotary_q_per_token, a.alibi_slopes)
    out = out.to(q.dtype)
    return (out, lse) if return_softmax_lse else out
