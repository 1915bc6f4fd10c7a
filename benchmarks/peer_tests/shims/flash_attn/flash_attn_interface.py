"""Test shim of flash_attn.flash_attn_interface over samba_ext.torch.

- flash_attn_with_kvcache: samba_ext.torch's, unchanged.
- flash_attn_func: samba_ext.torch's, unchanged (with return_attn_probs=True it returns
  flash-attn's triple (out, softmax_lse, None); dropout_p > 0 raises NotImplementedError).
- *_kvpacked_func / *_qkvpacked_func: unbind the packed axis, then the unpacked function.
- flash_attn_varlen_func: one flash_attn_func call per packed sequence (slices of the
  (total, nheads, headdim) inputs by cu_seqlens), concatenated; softmax_lse (nheads,
  total_q). block_table (paged KV) raises NotImplementedError.
- The raw extension entry points (flash_attn_gpu, _flash_attn_forward, ...) and
  _get_block_size_n (the dropout-mask layout) raise NotImplementedError.
"""
from __future__ import annotations


import torch
from samba_ext.torch import flash_attn_func as _samba_flash_attn_func
from samba_ext.torch import flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
           "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache", "USE_TRITON_ROCM",
           "_get_block_size_n"]

# flash-attn's switch to its Triton ROCm backend; this shim is no ROCm build.
USE_TRITON_ROCM = False

_RAW = ("flash_attn_gpu", "_flash_attn_forward", "_flash_attn_backward",
        "_flash_attn_varlen_forward", "_flash_attn_varlen_backward", "_wrapped_flash_attn_forward",
        "_wrapped_flash_attn_backward", "_wrapped_flash_attn_varlen_forward",
        "_wrapped_flash_attn_varlen_backward")


def __getattr__(name: str):
    if name in _RAW:
        raise NotImplementedError(f"{name}: flash-attn's raw extension entry points have no "
                                  "samba_ext counterpart")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    """flash-attn's CUDA tile width, used only to decode its dropout mask; not provided."""
    raise NotImplementedError("_get_block_size_n: flash-attn's dropout-mask layout has no "
                              "samba_ext counterpart (samba_ext has no dropout)")


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """flash-attn's flash_attn_func: q (batch, seqlen_q, nheads, headdim), k, v (batch,
    seqlen_k, nheads_k, headdim) -> out, or (out, softmax_lse, None) with
    return_attn_probs."""
    return _samba_flash_attn_func(q, k, v, dropout_p, softmax_scale=softmax_scale,
                                  causal=causal, window_size=window_size, softcap=softcap,
                                  alibi_slopes=alibi_slopes, deterministic=deterministic,
                                  return_attn_probs=return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """kv (batch, seqlen_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """qkv (batch, seqlen, 3, nheads, headdim)."""
    q, k, v = qkv.unbind(dim=2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (total_q, nheads, headdim), k, v (total_k, nheads_k, headdim); cu_seqlens_q,
    cu_seqlens_k (batch + 1,) int32. Sequence b is q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]
    against k, v[cu_seqlens_k[b]:cu_seqlens_k[b+1]] (causal bottom-right aligned per
    sequence, as flash-attn). Returns out (total_q, nheads, headdim), or (out, softmax_lse
    (nheads, total_q), None) with return_attn_probs."""
    if block_table is not None:
        raise NotImplementedError("block_table: paged KV in flash_attn_varlen_func is not "
                                  "composed from samba_ext's functions")
    cq = [int(c) for c in cu_seqlens_q.tolist()]
    ck = [int(c) for c in cu_seqlens_k.tolist()]
    if len(cq) != len(ck):
        raise ValueError(f"cu_seqlens_k: expected {len(cq)} entries like cu_seqlens_q, got "
                         f"{len(ck)}")
    outs, lses = [], []
    for b in range(len(cq) - 1):
        qb = q[cq[b]:cq[b + 1]].unsqueeze(0)
        kb, vb = k[ck[b]:ck[b + 1]].unsqueeze(0), v[ck[b]:ck[b + 1]].unsqueeze(0)
        # (batch, nheads) slopes: sequence b's row; (nheads,) slopes are shared
        sb = alibi_slopes[b:b + 1] if alibi_slopes is not None and alibi_slopes.dim() == 2 \
            else alibi_slopes
        res = flash_attn_func(qb, kb, vb, dropout_p, softmax_scale, causal, window_size,
                              softcap, sb, deterministic, return_attn_probs)
        if return_attn_probs:
            outs.append(res[0][0])
            lses.append(res[1][0])
        else:
            outs.append(res[0])
    if not outs:  # no sequences: empty results of flash-attn's shapes
        out = q.new_empty((0,) + tuple(q.shape[1:]))
        lse = torch.empty((q.shape[1], 0), dtype=torch.float32, device=q.device)
    else:
        out = torch.cat(outs, dim=0)
        lse = torch.cat(lses, dim=1) if return_attn_probs else None
    if not return_attn_probs:
        return out
    return out, lse, None


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                                    causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False,
                                    return_attn_probs=False):
    """kv (total_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (total, 3, nheads, headdim)."""
    q, k, v = qkv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)
