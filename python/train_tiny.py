#!/usr/bin/env python3
"""Train the bundled byte-level models ``samba-tiny`` and ``llama-tiny`` (PyTorch; optional extra).

A plain PyTorch implementation of the Samba architecture (docs/specification.md sections 2-5):

* Mamba-1 mixer (in_proj / depthwise causal conv1d / x_proj / dt_proj / A_log / D / out_proj), with a
  chunked selective scan written in torch (exact up to a per-step log-decay floor, see ``scan_chunked``;
  used on the GPU), an exact recurrence with a hand-written backward (``scan_seq``; used on the CPU,
  where it is ~5x faster for short rows) and an exact step-by-step reference scan (``scan_ref``);
* sliding-window attention ("swa", window counted in keys including self, i.e. flash-attn
  ``window_size=(window-1, 0)``) or full causal attention ("attn"), fused QKV rows grouped lit_gpt style
  ``[q_g.., k_g, v_g]`` per KV group, GPT-NeoX (half-split) RoPE at absolute positions; on the CPU a
  row no longer than the window takes plain causal attention (every key is inside the window);
* SwiGLU MLP (w1 gate, w2 up, w3 down), RMSNorm pre-norm, fp32 residual stream, tied embeddings.

The model runs on whole sequences or chunk by chunk with the recurrent state carried (Mamba conv +
SSM state, attention KV cache), which is how the long-context checks at the end of training run.

Data are generated on the fly (no network): Landmark-template passkey documents, phonebook documents and
Python standard-library sources of the running interpreter (training split only: files whose path
relative to the stdlib directory has ``zlib.crc32(path) % 10 != 0``; the others are held out).

Byte tokenizer: ids 0..255 = UTF-8 bytes, 256 <eos>, 257 <bos>, 258 <pad>; vocab_size 259.

Export: safetensors written by hand (u64 header length, JSON header padded with spaces to 8 bytes, raw
little-endian F32 data), lit_gpt key names, ``__metadata__`` = {"format": "samba-ext", "config": json,
"tokenizer": "byte", "train_command": ..., "seed": ..., ...}.

Examples::

    python3 python/train_tiny.py --model samba-tiny --steps 20 --device cpu --out /tmp/x.safetensors
    python3 python/train_tiny.py --model samba-tiny --minutes 7 --device cuda --out samba-tiny.safetensors \
        --eval-long
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import struct
import sys
import sysconfig
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Tokenizer and configs
# ----------------------------------------------------------------------------------------------
EOS, BOS, PAD, VOCAB = 256, 257, 258, 259


def encode(text: str) -> list[int]:
    """UTF-8 bytes -> ids 0..255 (no specials added)."""
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Ids -> text; specials (>= 256) are dropped, invalid UTF-8 is replaced."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


CONFIG_FIELDS = ("name", "vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "head_dim",
                 "intermediate_size", "window", "layer_types", "rope_base", "norm_eps", "d_state",
                 "d_conv", "expand", "dt_rank", "tie_embeddings", "tokenizer", "max_train_len")


def layer_pattern(name: str, n_layer: int) -> list[str]:
    """Block kinds: samba-* alternates mamba (even) / swa (odd); llama-* is all "attn"."""
    if name.startswith("samba"):
        return ["mamba" if i % 2 == 0 else "swa" for i in range(n_layer)]
    if name.startswith("llama"):
        return ["attn"] * n_layer
    raise ValueError(f"unknown model {name!r}: use samba-tiny or llama-tiny")


def make_config(name: str, d_model: int = 128, n_layer: int = 4, window: int = 256,
                d_state: int = 16) -> dict:
    """Config dict with exactly the fields of samba_ext.config.SambaConfig (MODEL_API.md).

    samba-tiny: blocks alternate mamba (even) / swa (odd). llama-tiny: all "attn" (full causal attention
    with RoPE), no Mamba; its MLP is widened so that both models have about the same parameter count.
    """
    n_head = 4
    head_dim = d_model // n_head
    layer_types = layer_pattern(name, n_layer)  # raises for an unknown name
    if name.startswith("samba"):
        inter, win = 2 * d_model, window
    else:
        # match params: Mamba block (~115K at d=128) vs an extra MLP width; 2.5*d gives ~the same total.
        inter, win = int(2.5 * d_model), None
    cfg = dict(name=name, vocab_size=VOCAB, n_layer=n_layer, d_model=d_model, n_head=n_head,
               n_kv_head=n_head, head_dim=head_dim, intermediate_size=inter, window=win,
               layer_types=layer_types, rope_base=10000.0, norm_eps=1e-5, d_state=d_state, d_conv=4,
               expand=2, dt_rank=math.ceil(d_model / 16), tie_embeddings=True, tokenizer="byte",
               max_train_len=4096)
    assert tuple(cfg) == CONFIG_FIELDS
    return cfg


# ----------------------------------------------------------------------------------------------
# Selective scan (Mamba-1), reference and chunked
# ----------------------------------------------------------------------------------------------
def scan_ref(x, dt, A, Bm, Cm, Dv, h0=None, decay_scale=None):
    """Exact step-by-step selective scan (no z gate).

    x, dt: (B, L, E) float32 (dt already softplus'ed); A: (E, N); Bm, Cm: (B, L, N); Dv: (E,);
    h0: (B, E, N) or None; decay_scale: optional (B,) multiplier of dt in the decay exp(dt*A) only
    (training augmentation). Returns y (B, L, E) and the final state (B, E, N).
    """
    Bsz, L, E = x.shape
    h = torch.zeros(Bsz, E, A.shape[1], dtype=x.dtype, device=x.device) if h0 is None else h0
    ys = []
    dtd = dt if decay_scale is None else dt * decay_scale.view(-1, 1, 1)
    for t in range(L):
        dA = torch.exp(dtd[:, t, :, None] * A)
        h = dA * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    y = torch.stack(ys, 1) if ys else x.new_zeros(Bsz, 0, E)
    return y + x * Dv, h


class _LinearRecurrence(torch.autograd.Function):
    """H[:, t] = a[:, t] * H[:, t-1] + b[:, t] (H[:, -1] = h0), a, b: (B, L, E, N) -> H (B, L, E, N).

    One fused multiply-add per step and no autograd graph inside the loop; the backward pass runs the
    adjoint recurrence G[:, t] = gH[:, t] + a[:, t+1] * G[:, t+1] in reverse."""

    @staticmethod
    def forward(ctx, a, b, h0):
        H = torch.empty_like(b)
        h = h0
        for t in range(b.shape[1]):
            h = torch.addcmul(b[:, t], a[:, t], h)
            H[:, t] = h
        ctx.save_for_backward(a, H, h0)
        return H

    @staticmethod
    def backward(ctx, gH):
        a, H, h0 = ctx.saved_tensors
        L = H.shape[1]
        G = torch.empty_like(H)
        g = gH[:, L - 1].clone()
        G[:, L - 1] = g
        for t in range(L - 2, -1, -1):
            g = torch.addcmul(gH[:, t], a[:, t + 1], g)
            G[:, t] = g
        prev = torch.cat([h0.unsqueeze(1), H[:, :-1]], 1)
        return G * prev, G, a[:, 0] * G[:, 0]


def scan_seq(x, dt, A, Bm, Cm, Dv, h0=None, decay_scale=None):
    """The exact recurrence of scan_ref (same arguments and results), vectorised except for one
    fused multiply-add per step, with a hand-written backward: the fast training scan on the CPU
    for short rows (scan_chunked's (B, L, E, N) temporaries are memory-bound there)."""
    Bsz, L, E = x.shape
    h0 = torch.zeros(Bsz, E, A.shape[1], dtype=x.dtype, device=x.device) if h0 is None else h0
    if L == 0:
        return x * Dv, h0
    dtd = dt if decay_scale is None else dt * decay_scale.view(-1, 1, 1)
    a = torch.exp(dtd.unsqueeze(-1) * A)
    b = (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)
    H = _LinearRecurrence.apply(a, b, h0)
    y = torch.einsum("blen,bln->ble", H, Cm)
    return y + x * Dv, H[:, -1]


def _affine_scan(a, b):
    """Inclusive scan over dim 1 of the maps h -> a_c h + b_c (Hillis-Steele, log depth).

    a, b: (B, C, E, N). Returns (prod a_0..c, state at c from a zero start)."""
    n, k = a.shape[1], 1
    while k < n:
        b = torch.cat([b[:, :k], a[:, k:] * b[:, :-k] + b[:, k:]], 1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], 1)
        k *= 2
    return a, b


def scan_chunked(x, dt, A, Bm, Cm, Dv, h0=None, chunk: int = 16, min_log_decay: float = -5.0,
                 decay_scale=None):
    """Chunked selective scan, same arguments/returns as ``scan_ref``.

    Inside a chunk of ``chunk`` steps: h_t = exp(S_t) * (h_in + cumsum_s exp(-S_s) dt_s B_s x_s) with
    S = cumsum(dt*A); chunks are joined by a log-depth affine scan. To keep exp(-S) finite in fp32 the
    per-step log-decay dt*A is floored at ``min_log_decay`` (chunk * |floor| <= 80): this differs from the
    exact recurrence only where a step keeps less than e^-5 = 0.7% of the state.
    """
    Bsz, L, E = x.shape
    N = A.shape[1]
    if L == 0:
        h = torch.zeros(Bsz, E, N, dtype=x.dtype, device=x.device) if h0 is None else h0
        return x.new_zeros(Bsz, 0, E), h
    T = chunk
    pad = (-L) % T
    if pad:  # dt = 0 steps keep the state unchanged and add nothing
        x, dt, Bm, Cm = (F.pad(t, (0, 0, 0, pad)) for t in (x, dt, Bm, Cm))
    nc = (L + pad) // T
    dtd = dt if decay_scale is None else dt * decay_scale.view(-1, 1, 1)
    dA = (dtd.unsqueeze(-1) * A).clamp(min=min_log_decay).view(Bsz, nc, T, E, N)
    S = dA.cumsum(2)
    P = torch.exp(S)
    u = ((dt * x).unsqueeze(-1) * Bm.unsqueeze(2)).view(Bsz, nc, T, E, N)
    cs = (u * torch.exp(-S)).cumsum(2)  # chunk-local state / P
    pend = P[:, :, -1]
    acum, bcum = _affine_scan(pend, pend * cs[:, :, -1])
    if h0 is None:
        hend = bcum
        hin = torch.cat([torch.zeros_like(bcum[:, :1]), bcum[:, :-1]], 1)
    else:
        hend = bcum + acum * h0.unsqueeze(1)
        hin = torch.cat([h0.unsqueeze(1), hend[:, :-1]], 1)
    h = P * (cs + hin.unsqueeze(2))  # (B, nc, T, E, N)
    y = torch.matmul(h, Cm.view(Bsz, nc, T, N, 1)).reshape(Bsz, nc * T, E)[:, :L]
    return y + x[:, :L] * Dv, hend[:, -1]


# ----------------------------------------------------------------------------------------------
# Modules (attribute names give the lit_gpt state-dict keys of docs/specification.md section 7)
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):  # (..., d) -> float32 (..., d)
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class Mamba(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D = cfg["d_model"]
        E = cfg["expand"] * D
        N, K = cfg["d_state"], cfg["d_conv"]
        R = cfg["dt_rank"] or math.ceil(D / 16)
        self.E, self.N, self.K, self.R = E, N, K, R
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        # Mamba init (docs/specification.md section 3): dt_proj weight U(+-R^-0.5), bias = inv_softplus(dt)
        nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
        dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, u, state=None, dt_scale=None, exact=False, decay_only=False):
        """u: (B, L, D) -> (B, L, D); state: (conv_state (B, E, K-1), ssm (B, E, N)) or None.

        dt_scale: optional (B,) multiplier of dt (training augmentation); with decay_only it scales
        only the decay exp(dt*A), not the write dt*B*x. exact: use scan_ref."""
        Bsz, L, _ = u.shape
        xz = self.in_proj(u)
        x, z = xz.float().chunk(2, dim=-1)
        xt = x.transpose(1, 2)  # (B, E, L)
        cs = xt.new_zeros(Bsz, self.E, self.K - 1) if state is None else state[0]
        xp = torch.cat([cs, xt], 2)
        new_cs = xp[:, :, xp.shape[2] - (self.K - 1):]
        xc = F.silu(F.conv1d(xp, self.conv1d.weight.float(), self.conv1d.bias.float(), groups=self.E))
        xc = xc.transpose(1, 2)  # (B, L, E)
        dbl = self.x_proj(xc).float()
        dt_low, Bm, Cm = dbl.split([self.R, self.N, self.N], dim=-1)
        dt = F.softplus(F.linear(dt_low, self.dt_proj.weight.float(), self.dt_proj.bias.float()).float())
        decay_scale = None
        if dt_scale is not None and decay_only:
            decay_scale = dt_scale
        elif dt_scale is not None:
            dt = dt * dt_scale.view(-1, 1, 1)
        A = -torch.exp(self.A_log.float())
        h0 = None if state is None else state[1]
        scan = scan_ref if exact else scan_seq if u.device.type == "cpu" else scan_chunked
        with torch.autocast(device_type=u.device.type, enabled=False):
            y, hL = scan(xc.float(), dt, A, Bm, Cm, self.D.float(), h0, decay_scale=decay_scale)
        y = y * F.silu(z)
        return self.out_proj(y), (new_cs, hL)


def rope_cos_sin(pos0: int, L: int, head_dim: int, base: float, device):
    """NeoX RoPE tables for absolute positions pos0..pos0+L-1: (L, head_dim/2) float32 each.

    Angles are formed in float64 so positions up to millions keep their accuracy."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    pos = torch.arange(pos0, pos0 + L, dtype=torch.float64, device=device)
    ang = torch.outer(pos, inv)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """x: (B, H, L, hd); half-split rotation: (x1 cos - x2 sin, x1 sin + x2 cos)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)


def masked_attention(q, k, v, mask):
    """Plain softmax attention (fp32 scores): q (..., Lq, hd), k/v (..., Lk, hd), mask bool
    broadcastable to (..., Lq, Lk), True = attend. Written out instead of SDPA with attn_mask, whose
    default cuDNN backend on H100/H200 (torch 2.11) gave wrong training results here."""
    s = torch.matmul(q, k.transpose(-1, -2)).float() * (1.0 / math.sqrt(q.shape[-1]))
    s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, -1).to(v.dtype), v)


def local_attention(q, k, v, n_cached: int, window: int):
    """Sliding-window causal attention, window in keys including self.

    q: (B, H, L, hd) for positions p0..p0+L-1; k, v: (B, H, n_cached + L, hd), the first n_cached
    keys being positions p0-n_cached..p0-1 (n_cached <= window-1). Returns (B, H, L, hd).
    Queries are processed in blocks of Q = window, each against the 2*window keys that can reach it.
    """
    Bsz, H, L, hd = q.shape
    W = window
    Q = W
    nb = -(-L // Q)
    right = nb * Q - L
    left = W - n_cached
    kp = F.pad(k, (0, 0, left, right))
    vp = F.pad(v, (0, 0, left, right))
    qb = F.pad(q, (0, 0, 0, right)).reshape(Bsz, H * nb, Q, hd)
    kb = kp.unfold(2, Q + W, Q).transpose(-1, -2).reshape(Bsz, H * nb, Q + W, hd)
    vb = vp.unfold(2, Q + W, Q).transpose(-1, -2).reshape(Bsz, H * nb, Q + W, hd)
    i = torch.arange(Q, device=q.device).view(Q, 1)
    j = torch.arange(Q + W, device=q.device).view(1, Q + W)
    band = (j >= i + 1) & (j <= i + W)
    blk = torch.arange(nb, device=q.device).view(nb, 1, 1)
    mask = (band.unsqueeze(0) & (blk * Q + j.unsqueeze(0) >= left)).repeat(H, 1, 1).unsqueeze(0)
    out = masked_attention(qb, kb, vb, mask)
    return out.reshape(Bsz, H, nb * Q, hd)[:, :, :L]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: dict, local: bool):
        super().__init__()
        self.H, self.G, self.hd = cfg["n_head"], cfg["n_kv_head"], cfg["head_dim"]
        self.qpk = self.H // self.G
        self.window = cfg["window"] if local else None
        self.base = cfg["rope_base"]
        self.attn = nn.Linear(cfg["d_model"], (self.H + 2 * self.G) * self.hd, bias=False)
        self.proj = nn.Linear(self.H * self.hd, cfg["d_model"], bias=False)

    def qkv_rope(self, x, pos0: int = 0):
        """x: (B, L, D) at positions pos0.. -> q (B, H, L, hd), k, v (B, G, L, hd); q and k after RoPE."""
        Bsz, L, _ = x.shape
        qkv = self.attn(x).view(Bsz, L, self.G, self.qpk + 2, self.hd)
        q = qkv[:, :, :, : self.qpk].reshape(Bsz, L, self.H, self.hd).transpose(1, 2)
        k = qkv[:, :, :, self.qpk].transpose(1, 2)
        v = qkv[:, :, :, self.qpk + 1].transpose(1, 2)
        cos, sin = rope_cos_sin(pos0, L, self.hd, self.base, x.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, state=None, pos0: int = 0, keep_cache: bool = False):
        """x: (B, L, D) -> (B, L, D). state: (k_cache, v_cache) each (B, G, P, hd), post-RoPE, for the
        P positions before pos0. Returns (out, new_state) (new_state None unless keep_cache)."""
        Bsz, L, _ = x.shape
        q, k, v = self.qkv_rope(x, pos0)
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], 2)
            v = torch.cat([state[1].to(v.dtype), v], 2)
        P = k.shape[2] - L
        new_state = None
        if keep_cache:
            keep = k.shape[2] if self.window is None else min(k.shape[2], self.window - 1)
            new_state = (k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:])
        kk = k.repeat_interleave(self.qpk, dim=1) if self.qpk > 1 else k
        vv = v.repeat_interleave(self.qpk, dim=1) if self.qpk > 1 else v
        # on the CPU, a row that fits in the window needs no band mask (every key is inside it)
        fits = x.device.type == "cpu" and P == 0 and self.window is not None and L <= self.window
        if self.window is not None and not fits:
            y = local_attention(q, kk, vv, P, self.window)
        elif P == 0:
            y = F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
        else:
            mask = torch.arange(P + L, device=x.device)[None, :] <= (P + torch.arange(L, device=x.device))[:, None]
            y = masked_attention(q, kk, vv, mask)
        y = y.transpose(1, 2).reshape(Bsz, L, self.H * self.hd)
        return self.proj(y), new_state


class SwiGLU(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(d, f, bias=False)
        self.w3 = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class MLP(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.swiglu = SwiGLU(d, f)

    def forward(self, x):
        return self.swiglu(x)


class Block(nn.Module):
    def __init__(self, cfg: dict, kind: str):
        super().__init__()
        self.kind = kind
        self.norm_1 = RMSNorm(cfg["d_model"], cfg["norm_eps"])
        self.attn = Mamba(cfg) if kind == "mamba" else CausalSelfAttention(cfg, local=(kind == "swa"))
        self.norm_2 = RMSNorm(cfg["d_model"], cfg["norm_eps"])
        self.mlp = MLP(cfg["d_model"], cfg["intermediate_size"])


class Transformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.h = nn.ModuleList([Block(cfg, t) for t in cfg["layer_types"]])
        self.ln_f = RMSNorm(cfg["d_model"], cfg["norm_eps"])


class TorchSamba(nn.Module):
    """Samba / Llama-style byte model. ``forward(tokens (B, L) int64) -> logits (B, L, vocab) float32``."""

    def __init__(self, cfg: dict):
        super().__init__()
        assert cfg["tie_embeddings"], "only tied embeddings are implemented"
        for t in cfg["layer_types"]:
            if t not in ("mamba", "swa", "attn"):
                raise ValueError(f"unknown layer type {t!r}")
        self.cfg = dict(cfg)
        self.transformer = Transformer(cfg)
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        scale = 1.0 / math.sqrt(2 * cfg["n_layer"])
        with torch.no_grad():
            for b in self.transformer.h:
                (b.attn.out_proj if b.kind == "mamba" else b.attn.proj).weight.mul_(scale)
                b.mlp.swiglu.w3.weight.mul_(scale)

    def forward(self, tokens, state=None, pos0: int = 0, dt_scale=None, exact: bool = False,
                return_state: bool = False, return_hidden: bool = False, decay_only: bool = False):
        """tokens: (B, L) int64. state: list per block (or None). Returns logits (B, L, V) float32
        [, new state list]. With return_hidden the final normed hidden (B, L, D) is returned instead."""
        tr = self.transformer
        x = tr.wte(tokens).float()
        new_state = []
        for i, b in enumerate(tr.h):
            st = None if state is None else state[i]
            n1 = b.norm_1(x)
            if b.kind == "mamba":
                hmix, ns = b.attn(n1, st, dt_scale=dt_scale, exact=exact, decay_only=decay_only)
            else:
                hmix, ns = b.attn(n1, st, pos0=pos0, keep_cache=return_state)
            x = x + hmix.float()
            x = x + b.mlp(b.norm_2(x)).float()
            new_state.append(ns)
        hfin = tr.ln_f(x)
        out = hfin if return_hidden else self.logits(hfin)
        return (out, new_state) if return_state else out

    def logits(self, hfin):
        return F.linear(hfin, self.transformer.wte.weight.to(hfin.dtype)).float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------
# Safetensors (hand-written writer and reader)
# ----------------------------------------------------------------------------------------------
def export_state(model: TorchSamba) -> dict[str, np.ndarray]:
    """lit_gpt-named float32 arrays (tied: no lm_head.weight)."""
    return {k: v.detach().float().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write F32 tensors: u64 LE header length, JSON header padded with spaces to 8 bytes, raw data."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    off = 0
    blobs = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read F32/F16/BF16 safetensors -> (float32 arrays, metadata)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    meta = hdr.pop("__metadata__", {})
    out = {}
    for name, t in hdr.items():
        b, e = t["data_offsets"]
        raw = np.frombuffer(data[b:e], dtype=np.uint8)
        if t["dtype"] == "F32":
            a = raw.view("<f4")
        elif t["dtype"] == "F16":
            a = raw.view("<f2").astype(np.float32)
        elif t["dtype"] == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: unsupported dtype {t['dtype']} for {name}")
        out[name] = a.reshape(t["shape"]).copy()
    return out, meta


def load_model(path: str, device: str = "cpu") -> TorchSamba:
    """Build a TorchSamba from a samba-ext safetensors file."""
    tensors, meta = load_safetensors(path)
    cfg = json.loads(meta["config"])
    model = TorchSamba(cfg)
    sd = {k: torch.from_numpy(v) for k, v in tensors.items() if k != "lm_head.weight"}
    model.load_state_dict(sd, strict=True)
    model.file_meta = meta  # the file's __metadata__ (train_command, lineage, ...)
    return model.to(device)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
PK_INSTR = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
            "I will quiz you about the important information there.")
PK_GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PK_QUESTION = "What is the pass key? The pass key is"


def pk_info(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


_GARBAGE_CACHE: dict[int, str] = {}


def garbage(n: int) -> str:
    """The first n characters of the repeated Landmark filler (" ".join([garbage] * many))."""
    reps = n // (len(PK_GARBAGE) + 1) + 2
    if reps not in _GARBAGE_CACHE or len(_GARBAGE_CACHE.get(reps, "")) < n:
        _GARBAGE_CACHE.clear()
        _GARBAGE_CACHE[reps] = " ".join([PK_GARBAGE] * reps)
    return _GARBAGE_CACHE[reps][:n]


def passkey_prompt(n_tokens: int, depth: float, key: int) -> str:
    """Landmark prompt (lines joined by "\\n") of exactly n_tokens bytes (if n_tokens >= the fixed
    part), info line after round(depth * n_garbage) filler characters."""
    fixed = len(PK_INSTR) + len(pk_info(key)) + len(PK_QUESTION) + 4
    n_garbage = max(0, n_tokens - fixed)
    pre = int(round(depth * n_garbage))
    return "\n".join([PK_INSTR, garbage(pre), pk_info(key), garbage(n_garbage - pre), PK_QUESTION])


PASSKEY_ANSWER = " {key}."  # the trained continuation, followed by <eos>

FIRST_NAMES = ("James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard "
               "Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark "
               "Margaret Donald Sandra Steven Ashley Paul Kimberly Andrew Emily Joshua Donna Kenneth Michelle "
               "Kevin Dorothy Brian Carol George Amanda Edward Melissa Ronald Deborah Timothy Stephanie Jason "
               "Rebecca Jeffrey Laura Ryan Helen Jacob Sharon Gary Cynthia Nicholas Kathleen Eric Amy Stephen "
               "Shirley Jonathan Angela Larry Anna").split()
LAST_NAMES = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
              "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
              "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
              "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
              "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
              "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard").split()


def phonebook_prompt(rng: random.Random, n_entries: int, digits: int = 10,
                     seps: float = 0.0) -> tuple[str, str]:
    """docs/specification.md section 6.2 format: "Name: phone" lines, "\\n\\n", two re-stated entries, "\\n\\n",
    "<query name>:". Phone = `digits` digits (the evaluation's 10 by default), first 6-9.
    seps: the chance that a gap between two digits gets a separator ("-", " " or "."), drawn per
    number (a training variant: it moves each digit's distance from the ":" at random).
    Returns (prompt, phone of the query, as written in the book)."""
    n_entries = max(3, n_entries)
    names: set[str] = set()
    while len(names) < n_entries:
        names.add(f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}")
    names_l = sorted(names)
    rng.shuffle(names_l)
    phones = [str(rng.randint(6, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))
              for _ in names_l]
    if seps > 0:
        phones = ["".join(d + (rng.choice("- .") if i < len(p) - 1 and rng.random() < seps else "")
                          for i, d in enumerate(p)) for p in phones]
    entries = [f"{n}: {p}" for n, p in zip(names_l, phones)]
    a, b, c = rng.sample(range(n_entries), 3)
    prompt = "\n".join(entries) + "\n\n" + entries[a] + "\n" + entries[b] + "\n\n" + names_l[c] + ":"
    return prompt, phones[c]


def fewshot_digit_spans(prompt: str) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the phone numbers of the two re-stated entries in a
    phonebook_prompt (the two lines between the blank lines), i.e. the few-shot lookups."""
    body, shots, _ = prompt.rsplit("\n\n", 2)
    out, pos = [], len(body) + 2
    for line in shots.split("\n"):
        i = line.rindex(": ") + 2
        out.append((pos + i, pos + len(line)))
        pos += len(line) + 1
    return out


def stdlib_files(held_out: bool) -> list[str]:
    """Sorted .py files of the running interpreter's stdlib (site-/dist-packages excluded).

    held_out=True: files whose posix path relative to the stdlib dir has crc32 % 10 == 0."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__"))
        for fn in sorted(files):
            if fn.endswith(".py"):
                p = os.path.join(d, fn)
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                if (zlib.crc32(rel.encode("utf-8")) % 10 == 0) == held_out:
                    out.append(p)
    return out


FILE_SEPARATOR = b"\n\n"  # between files, as in samba_ext.eval.corpus


def text_stream(files: list[str], max_bytes: int | None = None) -> np.ndarray:
    """Concatenate the UTF-8 files (others skipped) with "\n\n" between them: int16 ids."""
    parts, n = [], 0
    for p in files:
        try:
            with open(p, "rb") as f:
                b = f.read()
            b.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if parts:
            parts.append(np.frombuffer(FILE_SEPARATOR, dtype=np.uint8).astype(np.int16))
        parts.append(np.frombuffer(b, dtype=np.uint8).astype(np.int16))
        n += len(b) + 2
        if max_bytes is not None and n >= max_bytes:
            break
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


@dataclass
class DataMix:
    p_passkey: float = 0.5
    p_phonebook: float = 0.15
    p_bos: float = 0.5
    text: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    # fraction of passkey rows whose key line is placed at least `window` tokens before the first answer
    # token (beyond the SWA window, so only the Mamba state can carry the key), where the row is long enough
    pk_far: float = 0.0
    # fraction of the other passkey rows whose key line straddles the window edge as seen from the first
    # answer token (part of the line inside the window, the rest only in the Mamba state)
    pk_edge: float = 0.0
    window: int | None = None
    # cap on the phonebook size (entries); None: as many as fit in the row (log-uniform from 3)
    pb_max_entries: int | None = None
    # also train on the digits of the two re-stated (few-shot) entries: they are lookups in the book too
    pb_fewshot_loss: bool = False
    # phone-number lengths drawn uniformly from this range per book (the evaluation uses 10)
    pb_digits: tuple[int, int] = (10, 10)
    # chance per digit gap of a separator inside a training phone number (see phonebook_prompt)
    pb_seps: float = 0.0


def far_depth(rng: random.Random, n_tokens: int, key: int, window: int) -> float | None:
    """A depth for passkey_prompt(n_tokens, depth, key) that puts >= window filler characters between the
    key line and the question (so both copies of the key lie >= window tokens before every answer token),
    uniform over the possible amounts of filler; None if the prompt is too short for that."""
    fixed = len(PK_INSTR) + len(pk_info(key)) + len(PK_QUESTION) + 4
    n_garbage = n_tokens - fixed
    if n_garbage < window:
        return None
    post = rng.randint(window, n_garbage)
    return (n_garbage - post) / n_garbage if n_garbage else 0.0


def edge_depth(rng: random.Random, n_tokens: int, key: int, window: int) -> float | None:
    """A depth for passkey_prompt(n_tokens, depth, key) that puts the key line across the SWA window's
    edge as seen from the first answer token. The line ends post + len(question) + 2 tokens before that
    token, so it straddles the edge when post is in [window - len(info) - len(question) - 2,
    window - len(question) - 2); post is drawn uniformly from that range widened by 8 on each side.
    None if the prompt is too short for that."""
    fixed = len(PK_INSTR) + len(pk_info(key)) + len(PK_QUESTION) + 4
    n_garbage = n_tokens - fixed
    lo = max(0, window - len(pk_info(key)) - len(PK_QUESTION) - 10)
    hi = window - len(PK_QUESTION) + 6
    if n_garbage < hi:
        return None
    post = rng.randint(lo, hi)
    return (n_garbage - post) / n_garbage


def make_doc(rng: random.Random, L: int, mix: DataMix, info: dict | None = None):
    """One training row of exactly L tokens. Returns (ids int64 (L,), kind (L,) int8) where
    kind: 0 = pad (no loss), 1 = LM token, 2 = answer token (weighted; target at this position).
    info (optional dict) receives "task" ("passkey"/"phonebook"/"text"), "far" (passkey key beyond
    the SWA window by construction) and "edge" (key line across the window's edge, see edge_depth)."""
    far = edge = False
    shots: list[tuple[int, int]] = []
    ids = np.full(L, PAD, dtype=np.int64)
    kind = np.zeros(L, dtype=np.int8)
    bos = [BOS] if rng.random() < mix.p_bos else []
    r = rng.random()
    if r < mix.p_passkey and L >= 320:
        key = rng.randint(10000, 99999) if rng.random() < 0.9 else rng.randint(1, 50000)
        ans = encode(PASSKEY_ANSWER.format(key=key)) + [EOS]
        u = rng.random()
        depth = 0.0 if u < 0.1 else 1.0 if u < 0.2 else rng.random()
        if mix.window and mix.pk_far > 0 and rng.random() < mix.pk_far:
            d_far = far_depth(rng, L - len(bos) - len(ans), key, mix.window)
            if d_far is not None:
                depth, far = d_far, True
        elif mix.window and mix.pk_edge > 0 and rng.random() < mix.pk_edge:
            d_edge = edge_depth(rng, L - len(bos) - len(ans), key, mix.window)
            if d_edge is not None:
                depth, edge = d_edge, True
        prompt = encode(passkey_prompt(L - len(bos) - len(ans), depth, key))
        task = "passkey"
        seq = bos + prompt + ans
        n_ans = len(ans)
    elif r < mix.p_passkey + mix.p_phonebook or len(mix.text) < L + 1:
        budget = L - len(bos) - 14
        # entries ~ 24 bytes; the book (+3 re-stated lines) must fit; log-uniform size favours small books
        max_e = max(3, (budget - 60) // 27)
        if mix.pb_max_entries is not None:
            max_e = max(3, min(max_e, mix.pb_max_entries))
        n_e = int(round(math.exp(rng.uniform(math.log(3), math.log(max_e))))) if max_e > 3 else 3
        while True:
            prompt, ph = phonebook_prompt(rng, n_e, rng.randint(*mix.pb_digits), mix.pb_seps)
            ans = encode(" " + ph + "\n") + [EOS]
            seq = bos + encode(prompt) + ans
            if len(seq) <= L or n_e <= 3:
                break
            n_e = max(3, int(n_e * 0.8))
        whole = len(seq) <= L
        seq = seq[:L]
        n_ans = len(ans)
        task = "phonebook"
        if mix.pb_fewshot_loss and whole:
            shots = [(len(bos) + a, len(bos) + b) for a, b in fewshot_digit_spans(prompt)]
    else:
        s = rng.randrange(0, len(mix.text) - L)
        seq = bos + mix.text[s: s + L - len(bos)].astype(np.int64).tolist()
        n_ans = 0
        task = "text"
    if info is not None:
        info.update(task=task, far=far, edge=edge)
    n = len(seq)
    ids[:n] = seq
    kind[: n - 1] = 1  # position t predicts seq[t+1]
    if n_ans:
        kind[n - 1 - n_ans: n - 1] = 2
    for a, b in shots:  # position t predicts seq[t+1]: targets a..b-1 sit at a-1..b-2
        kind[a - 1: b - 1] = 2
    return ids, kind


def make_batch(rng: random.Random, B: int, L: int, mix: DataMix, infos: list | None = None):
    """B rows of make_doc: ids (B, L) int64, kind (B, L) int8; infos (optional list) gets each row's info."""
    rows = []
    for _ in range(B):
        d: dict = {}
        rows.append(make_doc(rng, L, mix, d))
        if infos is not None:
            infos.append(d)
    ids = torch.from_numpy(np.stack([r[0] for r in rows]))
    kind = torch.from_numpy(np.stack([r[1] for r in rows]))
    return ids, kind


# ----------------------------------------------------------------------------------------------
# Chunked (recurrent) inference and quick long-context evaluations
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def run_chunked(model: TorchSamba, tokens: torch.Tensor, chunk: int = 8192, want: str = "last",
                targets_from: int | None = None):
    """Process tokens (B, L) chunk by chunk with the state carried.

    want="last": logits of the last position (B, V). want="nll": per-token NLL (B, L-1) float32 of
    tokens[:, t+1] given tokens[:, :t+1]. want="argmax_from": argmax predictions (B, L-targets_from)
    for positions targets_from..L-1."""
    state, pos = None, 0
    L = tokens.shape[1]
    outs = []
    last = None
    while pos < L:
        cur = tokens[:, pos: pos + chunk]
        h, state = model(cur, state=state, pos0=pos, return_state=True, return_hidden=True)
        if want == "nll":
            lg = model.logits(h)
            tgt = tokens[:, pos + 1: pos + 1 + cur.shape[1]]
            lp = torch.log_softmax(lg[:, : tgt.shape[1]], -1)
            outs.append(-lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1))
        elif want == "argmax_from":
            lo = max(targets_from - pos, 0)
            if lo < cur.shape[1]:
                outs.append(model.logits(h[:, lo:]).argmax(-1))
        last = h[:, -1]
        pos += cur.shape[1]
    if want == "last":
        return model.logits(last)
    return torch.cat(outs, 1)


@torch.no_grad()
def eval_passkey(model: TorchSamba, lengths, depths, trials: int, device, seed: int = 1234,
                 chunk: int = 8192, max_batch: int = 16) -> dict[int, float]:
    """Teacher-forced greedy check: prompt + " {key}." and all answer positions' argmax must equal
    the next token, i.e. greedy decoding emits " {key}." (so the first integer is the key).
    Returns {length: accuracy}."""
    rng = random.Random(seed)
    res = {}
    for L in lengths:
        items = []
        for d in depths:
            for _ in range(trials):
                key = rng.randint(10000, 99999)
                p = encode(passkey_prompt(L, d, key))
                a = encode(PASSKEY_ANSWER.format(key=key))
                items.append((p, a))
        ok = 0
        for s in range(0, len(items), max_batch):
            grp = items[s: s + max_batch]
            n = max(len(p) + len(a) for p, a in grp)
            lp = len(grp[0][0])
            assert all(len(p) == lp for p, _ in grp)
            toks = torch.full((len(grp), n), PAD, dtype=torch.long)
            for r, (p, a) in enumerate(grp):
                toks[r, : len(p) + len(a)] = torch.tensor(p + a)
            toks = toks.to(device)
            pred = run_chunked(model, toks[:, :-1], chunk=chunk, want="argmax_from", targets_from=lp - 1)
            for r, (p, a) in enumerate(grp):
                ok += int(pred[r, : len(a)].tolist() == a)
        res[L] = ok / len(items)
    return res


@torch.no_grad()
def eval_phonebook(model: TorchSamba, entries, books: int, device, seed: int = 4321) -> dict[int, float]:
    """Teacher-forced greedy check on phonebook prompts (docs/specification.md section 6.2 format): all answer
    positions of " {phone}\n" must be the argmax. Returns {entries: accuracy} (one book per row)."""
    rng = random.Random(seed)
    res = {}
    for n in entries:
        ok = 0
        for _ in range(books):
            prompt, phone = phonebook_prompt(rng, n)
            p, a = encode(prompt), encode(f" {phone}\n")
            toks = torch.tensor([p + a], dtype=torch.long, device=device)
            logits = model(toks[:, :-1])
            pred = logits[0, len(p) - 1:].argmax(-1).tolist()
            ok += int(pred == a)
        res[n] = ok / books
    return res


@torch.no_grad()
def eval_ppl(model: TorchSamba, stream: np.ndarray, total: int, device, seg: int = 4096,
             chunk: int = 8192, buckets=(4096, 16384, 65536, 262144, 1048576)) -> dict:
    """NLL of one long held-out stream read with the state carried vs. the same tokens read in
    independent `seg`-token pieces (state reset). Returns per position bucket ppl for both and ratio."""
    total = min(total, len(stream) - 1) // seg * seg
    toks = torch.from_numpy(stream[: total + 1].astype(np.int64)).to(device)
    nll_long = run_chunked(model, toks[None, :total + 1], chunk=chunk, want="nll")[0]
    pieces = toks[:total].view(-1, seg)
    nxt = torch.cat([toks[1: total + 1].view(-1, seg)], 0)
    nll_seg = []
    per = max(1, (64 * 1024) // seg)
    for s in range(0, pieces.shape[0], per):
        p = pieces[s: s + per]
        t = nxt[s: s + per]
        full = torch.cat([p, t[:, -1:]], 1)
        nll_seg.append(run_chunked(model, full, chunk=chunk, want="nll"))
    nll_seg = torch.cat(nll_seg, 0).reshape(-1)
    out = {}
    lo = 0
    for hi in buckets:
        if lo >= total:
            break
        hi2 = min(hi, total)
        a = nll_long[lo:hi2].double().mean().item()
        b = nll_seg[lo:hi2].double().mean().item()
        out[f"{lo}-{hi2}"] = dict(ppl_long=math.exp(a), ppl_reset=math.exp(b), ratio=math.exp(a - b))
        lo = hi2
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def parse_stages(spec: str | None) -> list[tuple[float, int]] | None:
    """"0.4:1024,0.7:2048,1:4096" -> [(0.4, 1024), (0.7, 2048), (1.0, 4096)] (end of stage as a fraction
    of the budget, stage length); None for None/""."""
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        f, n = part.split(":")
        out.append((float(f), int(n)))
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])) or out[-1][0] < 1.0:
        raise ValueError(f"--stages {spec!r}: fractions must increase and the last must be >= 1")
    return out


def curriculum_len(progress: float, max_len: int, stages: list[tuple[float, int]] | None = None) -> int:
    """Short-to-long stages: 1/8, 1/4, 1/2, 1 of max_len (or the explicit ``stages``)."""
    if stages:
        for end, n in stages:
            if progress < end:
                return min(n, max_len)
        return min(stages[-1][1], max_len)
    if progress < 0.12:
        return max(320, max_len // 8)
    if progress < 0.30:
        return max(320, max_len // 4)
    if progress < 0.50:
        return max(320, max_len // 2)
    return max_len


def parse_blocks(spec: str, n_layer: int, flag: str) -> list[int]:
    """"1,3" -> [1, 3]; each index must name a block (0..n_layer-1)."""
    try:
        out = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected block indices like \"1,3\", got {spec!r}")
    bad = [i for i in out if not 0 <= i < n_layer]
    if bad or not out:
        raise SystemExit(f"{flag}: block indices must lie in 0..{n_layer - 1}, got {spec!r}")
    return out


def reinit_attention(model: "TorchSamba", i: int) -> None:
    """Fresh QKV / output projection for block i (as in TorchSamba.__init__: default Linear init,
    output scaled by 1/sqrt(2 n_layer)). Raises ValueError for a Mamba block."""
    b = model.transformer.h[i]
    if b.kind == "mamba":
        raise ValueError(f"block {i} is a Mamba block, it has no attention to re-initialise")
    with torch.no_grad():
        b.attn.attn.reset_parameters()
        b.attn.proj.reset_parameters()
        b.attn.proj.weight.mul_(1.0 / math.sqrt(2 * model.cfg["n_layer"]))


def grow_model(model: "TorchSamba", n_layer: int) -> "TorchSamba":
    """Append blocks to reach n_layer (the layer-type pattern continues: samba mamba/swa alternating,
    llama attn). The new blocks' output projections (mixer and MLP) start at zero, so the grown model
    computes exactly the same logits as the original until training moves them. Returns a new model."""
    cfg = dict(model.cfg)
    n0 = cfg["n_layer"]
    if n_layer <= n0:
        raise ValueError(f"--grow {n_layer}: the model already has {n0} blocks; give a larger number")
    cfg["layer_types"] = list(cfg["layer_types"]) + layer_pattern(cfg["name"], n_layer)[n0:]
    cfg["n_layer"] = n_layer
    dev = next(model.parameters()).device
    grown = TorchSamba(cfg).to(dev)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("transformer.h.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for b in grown.transformer.h[n0:]:
            (b.attn.out_proj if b.kind == "mamba" else b.attn.proj).weight.zero_()
            b.mlp.swiglu.w3.weight.zero_()
    return grown


def parse_digits(spec: str) -> tuple[int, int]:
    """ "10" -> (10, 10); "8-13" -> (8, 13)."""
    lo, _, hi = spec.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 2 <= lo_i <= hi_i:
        raise SystemExit(f"--pb-digits: expected N or LO-HI with 2 <= LO <= HI, got {spec!r}")
    return lo_i, hi_i


def lr_at(progress: float, step: int, lr: float, warmup: int) -> float:
    w = min(1.0, (step + 1) / warmup)
    return lr * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["samba-tiny", "llama-tiny"], required=True)
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="number of steps (default: until --minutes)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None,
                    help="start from this samba-ext .safetensors (its config wins over the size options; "
                         "the optimizer and the schedule start fresh)")
    ap.add_argument("--reinit-attn", default=None, metavar="BLOCKS",
                    help="with --init: re-initialise the attention (QKV and output projection) of these "
                         "blocks, e.g. \"3\" or \"1,3\" (a fresh start for a head whose softmax has settled)")
    ap.add_argument("--grow", type=int, default=None, metavar="N",
                    help="with --init: append blocks up to N in all (the mamba/swa pattern continues); the new "
                         "blocks' output projections start at zero, so training starts from the same function")
    ap.add_argument("--train-blocks", default=None, metavar="BLOCKS",
                    help="train only the parameters of these blocks, e.g. \"3\"; the others are frozen")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--window", type=int, default=None,
                    help="SWA window (default 256; with --init: the file's, or this value to change it)")
    ap.add_argument("--max-len", type=int, default=None, help="training length (default 4096; cpu 384)")
    ap.add_argument("--tokens-per-step", type=int, default=None, help="default 32768 (cpu 768)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--lm-weight", type=float, default=0.25, help="weight of the LM loss vs the answer loss")
    ap.add_argument("--p-passkey", type=float, default=0.5)
    ap.add_argument("--p-phonebook", type=float, default=0.15)
    ap.add_argument("--pb-max-entries", type=int, default=None,
                    help="cap the phonebook size (default: as many entries as fit in the row); small "
                         "books (e.g. 8: they fit in a 256-token window) for a lookup curriculum")
    ap.add_argument("--pb-fewshot-loss", action="store_true",
                    help="weight the digits of the two re-stated phonebook entries like answers (they are "
                         "lookups in the book too): three supervised lookups per phonebook row")
    ap.add_argument("--pb-seps", type=float, default=0.0,
                    help="chance per digit gap of a separator (- . or space) inside training phone numbers, "
                         "e.g. 0.2: each digit's distance from the ':' then varies, so a lookup by that "
                         "distance stops working and a copy by content is needed (the evaluation uses none)")
    ap.add_argument("--pb-digits", default="10",
                    help='phone-number length in training books, N or "LO-HI" drawn per book (the '
                         "evaluation uses 10; a range makes 10 an interior length, not the last one seen)")
    ap.add_argument("--pk-far", type=float, default=0.0,
                    help="fraction of passkey rows whose key is placed >= window tokens before the answer "
                         "(beyond the SWA window: only the Mamba state can carry it); samba only")
    ap.add_argument("--pk-edge", type=float, default=0.0,
                    help="fraction of the passkey rows not made far by --pk-far whose key line straddles "
                         "the window edge (part inside the SWA window, part only in the Mamba state: the "
                         "hand-over between the two); samba only")
    ap.add_argument("--stages", default=None,
                    help='curriculum "END:LEN,...", END = fraction of the budget, e.g. "0.4:1024,0.7:2048,1:4096" '
                         "(default: max_len/8 to 12%%, /4 to 30%%, /2 to 50%%, then max_len; at least 320)")
    ap.add_argument("--dt-aug", type=float, default=0.0,
                    help="fraction of rows whose Mamba dt is multiplied by exp(U(0, ln dt_aug_max)) "
                         "(time-dilation augmentation for length extrapolation)")
    ap.add_argument("--dt-aug-max", type=float, default=64.0)
    ap.add_argument("--dt-aug-mode", choices=["all", "decay"], default="all",
                    help="all: scale dt everywhere; decay: scale only the decay exp(dt*A), i.e. the key must "
                         "survive up to dt_aug_max times more filler than the row holds")
    ap.add_argument("--dt-aug-rows", choices=["all", "no-phonebook"], default="all",
                    help="which rows may be dilated: all, or all but phonebook rows (the dilation is for "
                         "the passkey's long-range memory; it blurs the local features a lookup needs)")
    ap.add_argument("--text-bytes", type=int, default=None, help="cap on stdlib training text (cpu: 2 MB)")
    ap.add_argument("--amp-cpu", action="store_true", help="bf16 autocast on the cpu too (debugging)")
    ap.add_argument("--threads", type=int, default=None, help="torch cpu threads")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-long", action="store_true", help="quick long-context evals after training")
    ap.add_argument("--eval-max-len", type=int, default=262144)
    ap.add_argument("--eval-ppl-tokens", type=int, default=None,
                    help="held-out stream length for the ppl check (default 1M samba, 32K llama)")
    ap.add_argument("--eval-json", default=None, help="also write the eval results to this JSON file")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cmd = "python3 python/train_tiny.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    dev = torch.device(args.device)
    cpu = dev.type == "cpu"
    max_len = args.max_len or (384 if cpu else 4096)
    tps = args.tokens_per_step or (768 if cpu else 32768)
    if args.steps is None and args.minutes is None:
        args.steps = 20 if cpu else 1000
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    if args.init:
        model = load_model(args.init, str(dev))
        cfg = dict(model.cfg)
        if cfg.get("name") != args.model:
            raise SystemExit(f"--init {args.init} holds {cfg.get('name')!r}, not --model {args.model!r}")
        print(f"[{args.model}] initialised from {args.init}", flush=True)
        # the commands that made the --init file, oldest first, so the saved file names its whole recipe
        lineage = json.loads(model.file_meta.get("lineage", "[]")) + [model.file_meta.get("train_command", "?")]
        if args.window is not None and cfg.get("window") is not None and args.window != cfg["window"]:
            print(f"[{args.model}] window {cfg['window']} -> {args.window}", flush=True)
            cfg["window"] = args.window
            model.cfg["window"] = args.window
            for m in model.modules():
                if isinstance(m, CausalSelfAttention) and m.window is not None:
                    m.window = args.window
    else:
        cfg = make_config(args.model, args.d_model, args.n_layer,
                          256 if args.window is None else args.window, args.d_state)
        model = TorchSamba(cfg).to(dev)
    if not 0.0 <= args.pb_seps <= 1.0:
        raise SystemExit(f"--pb-seps is a probability in [0, 1], got {args.pb_seps}")
    if args.grow is not None:
        if not args.init:
            raise SystemExit("--grow needs --init (a trained file to grow)")
        try:
            model = grow_model(model, args.grow)
        except ValueError as e:
            raise SystemExit(str(e))
        cfg = dict(model.cfg)
        print(f"[{args.model}] grown to {args.grow} blocks: {cfg['layer_types']}", flush=True)
    if args.reinit_attn:
        if not args.init:
            raise SystemExit("--reinit-attn needs --init")
        for i in parse_blocks(args.reinit_attn, len(model.transformer.h), "--reinit-attn"):
            reinit_attention(model, i)
            print(f"[{args.model}] block {i}: attention re-initialised", flush=True)
    if args.train_blocks:
        keep = {f"transformer.h.{i}." for i in parse_blocks(args.train_blocks, len(model.transformer.h),
                                                            "--train-blocks")}
        for n, p in model.named_parameters():
            p.requires_grad_(any(n.startswith(k) for k in keep))
    # the longest document the model has been trained on, over its whole --init history
    cfg["max_train_len"] = max(max_len, int(cfg.get("max_train_len") or 0)) if args.init else max_len
    n_params = model.num_parameters()
    t0 = time.time()
    text = text_stream(stdlib_files(held_out=False), args.text_bytes or (2_000_000 if cpu else None))
    mix = DataMix(p_passkey=args.p_passkey, p_phonebook=args.p_phonebook, text=text, pk_far=args.pk_far,
                  pk_edge=args.pk_edge,
                  pb_max_entries=args.pb_max_entries, pb_fewshot_loss=args.pb_fewshot_loss,
                  pb_digits=parse_digits(args.pb_digits), pb_seps=args.pb_seps,
                  window=cfg["window"] if "swa" in cfg["layer_types"] else None)
    stages = parse_stages(args.stages)
    print(f"[{args.model}] params {n_params} | train text {len(text)} tokens ({time.time() - t0:.1f}s) | "
          f"device {dev} | max_len {max_len} | tokens/step {tps}", flush=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "A_log" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    use_amp = dev.type == "cuda" or args.amp_cpu
    has_mamba = "mamba" in cfg["layer_types"]
    log = []
    t_start = time.time()
    step = 0
    interrupted = False
    # Ctrl-C stops training and still saves the model as it is (no evals then); a Ctrl-C that lands
    # inside opt.step() can leave that one step half applied
    try:
        while True:
            el = time.time() - t_start
            prog_s = step / args.steps if args.steps else 0.0
            prog_t = el / (args.minutes * 60) if args.minutes else 0.0
            progress = max(prog_s, prog_t)
            if progress >= 1.0:
                break
            Lmax = curriculum_len(progress, max_len, stages)
            L = Lmax if rng.random() < 0.5 else max(320, int(rng.uniform(0.25, 1.0) * Lmax) // 64 * 64)
            B = max(1, tps // L)
            infos: list = []
            ids, kind = make_batch(rng, B, L, mix, infos)
            if dev.type == "cuda":
                ids, kind = ids.pin_memory().to(dev, non_blocking=True), kind.pin_memory().to(dev, non_blocking=True)
            dt_scale = None
            if has_mamba and args.dt_aug > 0:
                on = torch.rand(B, generator=None) < args.dt_aug
                if args.dt_aug_rows == "no-phonebook":  # lookups need the Mamba's undilated local features
                    on &= torch.tensor([d["task"] != "phonebook" for d in infos])
                k = torch.exp(torch.rand(B) * math.log(args.dt_aug_max))
                dt_scale = torch.where(on, k, torch.ones(B)).to(dev)
            lr = lr_at(progress, step, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                hfin = model(ids, dt_scale=dt_scale, return_hidden=True, decay_only=args.dt_aug_mode == "decay")
            logits = model.logits(hfin[:, :-1].float())
            tgt = ids[:, 1:]
            k_ = kind[:, :-1]
            ce = F.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1), reduction="none").view_as(tgt)
            m_ans = (k_ == 2).float()
            m_lm = (k_ == 1).float()
            n_ans = m_ans.sum().clamp(min=1)
            loss_ans = (ce * m_ans).sum() / n_ans
            loss_lm = (ce * m_lm).sum() / m_lm.sum().clamp(min=1)
            loss = loss_ans + args.lm_weight * loss_lm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == 1 or (args.steps and step == args.steps):
                with torch.no_grad():
                    acc = ((logits.argmax(-1) == tgt).float() * m_ans).sum() / n_ans
                    # rows whose whole answer is right, for passkey rows with the key beyond the window
                    row_ok = ((logits.argmax(-1) == tgt) | (k_ != 2)).all(1).cpu()
                    far_rows = [i for i, d in enumerate(infos) if d["far"]]
                    far_acc = (sum(float(row_ok[i]) for i in far_rows) / len(far_rows)) if far_rows else None
                    edge_rows = [i for i, d in enumerate(infos) if d["edge"]]
                    edge_acc = (sum(float(row_ok[i]) for i in edge_rows) / len(edge_rows)) if edge_rows else None
                    pb_rows = [i for i, d in enumerate(infos) if d["task"] == "phonebook"]
                    pb_acc = (sum(float(row_ok[i]) for i in pb_rows) / len(pb_rows)) if pb_rows else None
                rec = dict(step=step, t=round(time.time() - t_start, 1), L=L, B=B, lr=round(lr, 6),
                           loss=round(loss.item(), 4), loss_ans=round(loss_ans.item(), 4),
                           loss_lm=round(loss_lm.item(), 4), ans_acc=round(acc.item(), 4),
                           far_rows=len(far_rows), far_exact=None if far_acc is None else round(far_acc, 3),
                           edge_rows=len(edge_rows), edge_exact=None if edge_acc is None else round(edge_acc, 3),
                           pb_rows=len(pb_rows), pb_exact=None if pb_acc is None else round(pb_acc, 3),
                           gnorm=round(float(gn), 3))
                log.append(rec)
                print(json.dumps(rec), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print(f"[{args.model}] interrupted at step {step}: saving what there is", flush=True)
    train_time = time.time() - t_start
    model.eval()
    meta = {
        "format": "samba-ext", "config": json.dumps(cfg), "tokenizer": "byte", "train_command": cmd,
        "seed": str(args.seed), "steps": str(step), "train_seconds": f"{train_time:.1f}",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "params": str(n_params),
        "data": "passkey (Landmark template, answer ' {key}.'+<eos>), phonebook, stdlib .py (crc32(relpath)%10!=0)",
        "final_log": json.dumps(log[-1] if log else {}),
        "passkey_answer_format": PASSKEY_ANSWER + "<eos>",
    }
    if interrupted:
        meta["interrupted"] = "true"
    if args.init:
        meta["lineage"] = json.dumps(lineage)
    save_safetensors(args.out, export_state(model), meta)
    print(f"[{args.model}] saved {args.out} ({os.path.getsize(args.out)} bytes) after {step} steps, "
          f"{train_time:.0f}s", flush=True)
    result = dict(model=args.model, steps=step, train_seconds=train_time, params=n_params, log=log,
                  interrupted=interrupted)
    if args.eval_long and not interrupted:
        result["eval"] = quick_evals(model, cfg, dev, args)
        if args.eval_json:
            with open(args.eval_json, "w") as f:
                json.dump(result, f, indent=1)
    return result


def quick_evals(model: TorchSamba, cfg: dict, dev, args) -> dict:
    """Torch-side passkey accuracy by length and long-context perplexity stability."""
    is_samba = "mamba" in cfg["layer_types"]
    cap = args.eval_max_len if is_samba else min(args.eval_max_len, 32768)
    lengths = [n for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144) if n <= cap]
    out: dict = {}
    t = time.time()
    with torch.autocast(device_type=dev.type, enabled=False):
        try:
            out["passkey"] = eval_passkey(model, lengths, [0.0, 0.25, 0.5, 0.75, 1.0], 2, dev)
        except Exception as e:  # keep going: the checkpoint is already saved
            out["passkey_error"] = repr(e)
        print(f"[{cfg['name']}] passkey {out.get('passkey', out.get('passkey_error'))} "
              f"({time.time() - t:.0f}s)", flush=True)
        t = time.time()
        try:
            out["phonebook"] = eval_phonebook(model, [3, 4, 6, 8, 12, 16, 32, 64], 10, dev)
        except Exception as e:
            out["phonebook_error"] = repr(e)
        print(f"[{cfg['name']}] phonebook {out.get('phonebook', out.get('phonebook_error'))} "
              f"({time.time() - t:.0f}s)", flush=True)
        t = time.time()
        try:
            held = text_stream(stdlib_files(held_out=True))
            total = args.eval_ppl_tokens or ((1 << 20) if is_samba else 32768)
            out["ppl"] = eval_ppl(model, held, total, dev)
        except Exception as e:
            out["ppl_error"] = repr(e)
        print(f"[{cfg['name']}] ppl {json.dumps(out.get('ppl', out.get('ppl_error')))} "
              f"({time.time() - t:.0f}s)", flush=True)
    return out

if __name__ == "__main__":
    main()
