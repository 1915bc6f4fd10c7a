"""Float64 NumPy references for the attention kernels, written plainly from the formulas.

Prefill: out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h // G]) v[b, j, h // G]
over the keys j that query i sees: pos - window < j <= pos with pos = i + (Lk - Lq)
(window None: all j <= pos).  The full score matrix is built here on purpose (small sizes).

Decode: the same for one query whose keys are read from a ring buffer.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def ref_swa_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      window: Optional[int] = None,
                      softmax_scale: Optional[float] = None) -> np.ndarray:
    """q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd) -> out (B, Lq, H, hd) float64."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    B, Lq, H, hd = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(hd) if softmax_scale is None else float(softmax_scale)
    pos = np.arange(Lq)[:, None] + (Lk - Lq)          # (Lq, 1) absolute query positions
    j = np.arange(Lk)[None, :]                         # (1, Lk)
    allowed = j <= pos
    if window is not None:
        allowed &= j > pos - window
    out = np.zeros((B, Lq, H, hd))
    for b in range(B):
        for h in range(H):
            kv = h // G
            s = scale * (q[b, :, h, :] @ k[b, :, kv, :].T)       # (Lq, Lk)
            s = np.where(allowed, s, -np.inf)
            s = s - s.max(axis=1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=1, keepdims=True)
            out[b, :, h, :] = p @ v[b, :, kv, :]
    return out


def ref_swa_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                   pos: np.ndarray, n_valid: np.ndarray,
                   softmax_scale: Optional[float] = None) -> np.ndarray:
    """q (B, H, hd); caches (B, C, Hkv, hd); pos, n_valid (B,) -> out (B, H, hd) float64.

    The valid keys of batch b are the slots (pos[b] - t) % C for t = 0 .. n_valid[b] - 1.
    """
    q = np.asarray(q, dtype=np.float64)
    k_cache = np.asarray(k_cache, dtype=np.float64)
    v_cache = np.asarray(v_cache, dtype=np.float64)
    B, H, hd = q.shape
    C, Hkv = k_cache.shape[1], k_cache.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(hd) if softmax_scale is None else float(softmax_scale)
    out = np.zeros((B, H, hd))
    for b in range(B):
        slots = [(int(pos[b]) - t) % C for t in range(int(n_valid[b]))]
        for h in range(H):
            kk = k_cache[b, slots, h // G, :]                    # (n, hd)
            vv = v_cache[b, slots, h // G, :]
            s = scale * (kk @ q[b, h])
            p = np.exp(s - s.max())
            out[b, h] = (p / p.sum()) @ vv
    return out
