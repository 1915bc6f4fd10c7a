"""Rotary embedding by cos/sin tables (flash-attn's ``rotary_cos``/``rotary_sin`` layout),
plain torch, float32: the rotation flash_attn_with_kvcache applies to new keys and queries.
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary_table(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor,
                       interleaved: bool) -> Tensor:
    """Rotate the first rotary_dim = 2 * cos.shape[1] features of x.

    x (batch, seqlen, nheads, headdim); cos, sin (seqlen_ro, rotary_dim / 2); positions
    (batch, seqlen) int64 rows of the tables, all < seqlen_ro. interleaved=True pairs features
    (0, 1), (2, 3), ...; False pairs (i, i + rotary_dim / 2) (GPT-NeoX). Pair (a, b) with
    angle row c, s becomes (a c - b s, a s + b c); the features from rotary_dim on pass
    unchanged. Returns float32 (batch, seqlen, nheads, headdim).
    """
    x = x.to(torch.float32)
    half = cos.shape[1]
    rot = 2 * half
    c = cos.to(torch.float32)[positions][:, :, None, :]   # (batch, seqlen, 1, half)
    s = sin.to(torch.float32)[positions][:, :, None, :]
    xr = x[..., :rot]
    if interleaved:
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    else:
        a, b = xr[..., :half], xr[..., half:]
        out = torch.cat((a * c - b * s, a * s + b * c), dim=-1)
    return torch.cat((out, x[..., rot:]), dim=-1)
