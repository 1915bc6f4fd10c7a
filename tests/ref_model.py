"""Independent float64 NumPy forward of the whole Samba model, for parity tests.

Written plainly from docs/specification.md (sections 2-5), separately from samba_ext.model and the C
kernels: explicit time loops for the conv and the scan, an explicit masked softmax for the
attention, RoPE from its formula. It reads the lit_gpt-keyed state dict (grouped QKV rows)
directly, so the model's weight re-layout is tested too. Slow; use small configs.
"""
from __future__ import annotations

import numpy as np


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    # threshold 20 as the mamba kernel (x <= 20 ? log1p(exp(x)) : x)
    return np.where(x <= 20.0, np.log1p(np.exp(np.minimum(x, 20.0))), x)


def mamba(u, p, cfg):
    """u (L, D) -> (L, D), one sequence (docs/specification.md section 3)."""
    L = u.shape[0]
    E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    xz = u @ p["in_proj.weight"].T               # (L, 2E)
    x, z = xz[:, :E], xz[:, E:]
    w = p["conv1d.weight"][:, 0, :]              # (E, K); w[:, K-1] multiplies the current token
    xc = np.zeros((L, E))
    for t in range(L):
        acc = p["conv1d.bias"].copy()
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                acc = acc + w[:, k] * x[s]
        xc[t] = silu(acc)
    dbl = xc @ p["x_proj.weight"].T              # (L, R + 2N)
    dt_low, Bm, Cm = dbl[:, :R], dbl[:, R:R + N], dbl[:, R + N:]
    delta = softplus(dt_low @ p["dt_proj.weight"].T + p["dt_proj.bias"])   # (L, E)
    A = -np.exp(p["A_log"])                      # (E, N)
    h = np.zeros((E, N))
    y = np.zeros((L, E))
    for t in range(L):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * xc[t])[:, None] * Bm[t][None, :]
        y[t] = h @ Cm[t] + p["D"] * xc[t]
    y = y * silu(z)
    return y @ p["out_proj.weight"].T


def rope(x, positions, base):
    """x (L, H, hd) NeoX half-split rotation at absolute positions (L,)."""
    hd = x.shape[-1]
    half = hd // 2
    theta = base ** (-np.arange(half) * 2.0 / hd)          # (half,)
    ang = positions[:, None].astype(np.float64) * theta[None, :]   # (L, half)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def attention(u, p, cfg, window):
    """u (L, D) -> (L, D); window None = full causal; window W = keys j with i-W < j <= i."""
    L = u.shape[0]
    H, G, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    qpk = H // G
    qkv = (u @ p["attn.weight"].T).reshape(L, G, qpk + 2, hd)   # grouped lit_gpt rows
    q = qkv[:, :, :qpk, :].reshape(L, H, hd)                   # head h = g * qpk + j
    k = qkv[:, :, qpk, :]                                       # (L, G, hd)
    v = qkv[:, :, qpk + 1, :]
    pos = np.arange(L)
    q = rope(q, pos, cfg.rope_base)
    k = rope(k, pos, cfg.rope_base)
    i, j = np.meshgrid(pos, pos, indexing="ij")
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    out = np.zeros((L, H, hd))
    for h in range(H):
        g = h // qpk
        s = (q[:, h, :] @ k[:, g, :].T) / np.sqrt(hd)
        s = np.where(allowed, s, -np.inf)
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        out[:, h, :] = s @ v[:, g, :]
    return out.reshape(L, H * hd) @ p["proj.weight"].T


def forward(sd: dict, cfg, tokens: np.ndarray) -> np.ndarray:
    """tokens (B, L) int -> float64 logits (B, L, vocab)."""
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in sd.items()}
    wte = sd["transformer.wte.weight"]
    head = sd.get("lm_head.weight", wte)
    outs = []
    for row in np.asarray(tokens):
        x = wte[row]
        for i, kind in enumerate(cfg.layer_types):
            pre = f"transformer.h.{i}."
            n1 = rmsnorm(x, sd[pre + "norm_1.weight"], cfg.norm_eps)
            p = {k[len(pre + "attn."):]: v for k, v in sd.items() if k.startswith(pre + "attn.")}
            if kind == "mamba":
                x = x + mamba(n1, p, cfg)
            else:
                x = x + attention(n1, p, cfg, cfg.window if kind == "swa" else None)
            n2 = rmsnorm(x, sd[pre + "norm_2.weight"], cfg.norm_eps)
            g = n2 @ sd[pre + "mlp.swiglu.w1.weight"].T
            up = n2 @ sd[pre + "mlp.swiglu.w2.weight"].T
            x = x + (silu(g) * up) @ sd[pre + "mlp.swiglu.w3.weight"].T
        outs.append(rmsnorm(x, sd["transformer.ln_f.weight"], cfg.norm_eps) @ head.T)
    return np.stack(outs)
