"""The PyTorch Samba / Llama model used to train the bundled byte-level models.

One module, as nanoGPT's model.py: configs, the Mamba-1 scan, attention, the blocks, the model,
checkpoint export and load, chunked (recurrent) inference and model surgery (re-initialise an attention,
grow the depth). It follows docs/specification.md (sections 2-5):

* Mamba-1 mixer (in_proj / depthwise causal conv1d / x_proj / dt_proj / A_log / D / out_proj);
* sliding-window attention ("swa", ``window`` keys including the query itself, i.e. flash-attn
  ``window_size=(window-1, 0)``) or full causal attention ("attn"); fused QKV rows grouped lit_gpt style
  ``[q_g.., k_g, v_g]`` per KV group; GPT-NeoX (half-split) RoPE at absolute positions;
* SwiGLU MLP (w1 gate, w2 up, w3 down), RMSNorm pre-norm, float32 residual stream, tied embeddings.

The two compute-heavy operations each have one entry point, so that another implementation (for example
the package's own autograd kernels) can be swapped in at one place:

* :func:`selective_scan` - every Mamba block calls it; it picks ``scan_ref`` (exact, step by step),
  ``scan_seq`` (exact, hand-written backward; the CPU default) or ``scan_chunked`` (the GPU default);
* :func:`attention` - every attention block calls it; it picks banded local attention, plain causal
  attention, or masked attention over a cache.

``TorchSamba(cfg, kernels=...)`` picks the implementation: ``"samba_ext"`` (the default where
:mod:`samba_ext.torch` imports) runs the package's autograd ops instead - ``causal_conv1d_fn`` and
``selective_scan_fn`` in the Mamba blocks (z gate and D fused), ``flash_attn_func`` with
``window_size=(window-1, 0)`` in the attention blocks; ``"torch"`` runs the two entry points above.

Checkpoints are safetensors files written and read with the package's :mod:`samba_ext.safetensors_io`:
lit_gpt key names, float32, the config as JSON in the metadata. Tokens are the package's byte tokenizer
(:class:`samba_ext.tokenizer.ByteTokenizer`: ids 0..255 bytes, 256 <eos>, 257 <bos>, 258 <pad>).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from samba_ext.safetensors_io import read_safetensors, write_safetensors
from samba_ext.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()
EOS, BOS, PAD, VOCAB = TOKENIZER.eos_id, TOKENIZER.bos_id, TOKENIZER.pad_id, TOKENIZER.vocab_size


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
CONFIG_FIELDS = (
    "name",
    "vocab_size",
    "n_layer",
    "d_model",
    "n_head",
    "n_kv_head",
    "head_dim",
    "intermediate_size",
    "window",
    "layer_types",
    "rope_base",
    "norm_eps",
    "d_state",
    "d_conv",
    "expand",
    "dt_rank",
    "tie_embeddings",
    "tokenizer",
    "max_train_len",
)


def layer_pattern(name: str, n_layer: int) -> list[str]:
    """Block kinds: samba-* alternates mamba (even) / swa (odd); llama-* is all "attn"."""
    if name.startswith("samba"):
        return ["mamba" if i % 2 == 0 else "swa" for i in range(n_layer)]
    if name.startswith("llama"):
        return ["attn"] * n_layer
    raise ValueError(f"unknown model {name!r}: use samba-tiny or llama-tiny")


def make_config(name: str, d_model: int = 128, n_layer: int = 4, window: int = 256, d_state: int = 16) -> dict:
    """Config dict with exactly the fields of samba_ext.config.SambaConfig.

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
    cfg = dict(
        name=name,
        vocab_size=VOCAB,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        n_kv_head=n_head,
        head_dim=head_dim,
        intermediate_size=inter,
        window=win,
        layer_types=layer_types,
        rope_base=10000.0,
        norm_eps=1e-5,
        d_state=d_state,
        d_conv=4,
        expand=2,
        dt_rank=math.ceil(d_model / 16),
        tie_embeddings=True,
        tokenizer="byte",
        max_train_len=4096,
    )
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


def scan_chunked(x, dt, A, Bm, Cm, Dv, h0=None, chunk: int = 16, min_log_decay: float = -5.0, decay_scale=None):
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
# Kernel switch: the package's autograd ops (samba_ext.torch) or the pure-torch paths of this file
# ----------------------------------------------------------------------------------------------
KERNELS = ("samba_ext", "torch")


def _samba_ext_torch():
    """samba_ext.torch, or None where it cannot be imported (extension not built)."""
    try:
        import samba_ext.torch as st
    except (ImportError, OSError):
        return None
    return st


def default_kernels() -> str:
    """The default kernel path: "samba_ext" when samba_ext.torch imports, else "torch"."""
    return "samba_ext" if _samba_ext_torch() is not None else "torch"


def check_kernels(kernels: str) -> str:
    """Validate a kernel choice; "samba_ext" needs samba_ext.torch (raises ValueError otherwise)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels: expected one of {KERNELS}, got {kernels!r}")
    if kernels == "samba_ext" and _samba_ext_torch() is None:
        raise ValueError("kernels: 'samba_ext' needs samba_ext.torch (build the extension; torch installed)")
    return kernels


def selective_scan(x, dt, A, Bm, Cm, Dv, h0=None, decay_scale=None, exact: bool = False):
    """The one scan entry point of the model (same arguments and results as ``scan_ref``).

    exact: the step-by-step ``scan_ref`` (tests). Otherwise ``scan_seq`` on the CPU (exact, fastest for
    the short rows trained there) and ``scan_chunked`` on a GPU (exact up to its log-decay floor)."""
    if exact:
        return scan_ref(x, dt, A, Bm, Cm, Dv, h0, decay_scale=decay_scale)
    if x.device.type == "cpu":
        return scan_seq(x, dt, A, Bm, Cm, Dv, h0, decay_scale=decay_scale)
    return scan_chunked(x, dt, A, Bm, Cm, Dv, h0, decay_scale=decay_scale)


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
        self.kernels = "torch"  # set by TorchSamba (set_kernels)
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        # Mamba init (docs/specification.md section 3): dt_proj weight U(+-R^-0.5), bias = inv_softplus(dt)
        nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
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
        if self.kernels == "samba_ext" and state is None and not exact:
            return self._forward_samba_ext(x, z, dt_scale, decay_only)
        xt = x.transpose(1, 2)  # (B, E, L)
        cs = xt.new_zeros(Bsz, self.E, self.K - 1) if state is None else state[0]
        xp = torch.cat([cs, xt], 2)
        new_cs = xp[:, :, xp.shape[2] - (self.K - 1) :]
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
        with torch.autocast(device_type=u.device.type, enabled=False):
            y, hL = selective_scan(xc.float(), dt, A, Bm, Cm, self.D.float(), h0, decay_scale=decay_scale, exact=exact)
        y = y * F.silu(z)
        return self.out_proj(y), (new_cs, hL)

    def _forward_samba_ext(self, x, z, dt_scale, decay_only):
        """The same mixer with samba_ext.torch's causal_conv1d_fn and selective_scan_fn (no initial
        state). x, z: (B, L, E) float32 -> (out (B, L, D), (conv_state (B, E, K-1), ssm (B, E, N))).

        The conv and the scan get float32 tensors (as the torch path computes them); dt is formed in
        torch exactly as there. The decay-only dilation (decay exp(k dt A), write dt B x) runs as the
        plain scan of u = x / k with delta = k dt (write k dt * x/k * B = dt B x; k >= 1 here), the D
        skip and the z gate then applied outside the kernel."""
        st = _samba_ext_torch()
        xt = x.transpose(1, 2).contiguous()  # (B, E, L), time contiguous as the peers' kernels take it
        new_cs = F.pad(xt, (self.K - 1, 0))[:, :, xt.shape[2] :]
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = self.conv1d.weight.float().squeeze(1)  # (E, K)
            xc_t = st.causal_conv1d_fn(xt, w, self.conv1d.bias.float(), activation="silu")  # (B, E, L)
        xc = xc_t.transpose(1, 2)  # (B, L, E)
        dbl = self.x_proj(xc).float()
        dt_low, Bm, Cm = dbl.split([self.R, self.N, self.N], dim=-1)
        dt = F.softplus(F.linear(dt_low, self.dt_proj.weight.float(), self.dt_proj.bias.float()).float())
        if dt_scale is not None and not decay_only:
            dt = dt * dt_scale.view(-1, 1, 1)
        A = -torch.exp(self.A_log.float())
        Bt, Ct, zt = (t.transpose(1, 2).contiguous() for t in (Bm, Cm, z))
        dt_t = dt.transpose(1, 2).contiguous()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if dt_scale is not None and decay_only:
                k = dt_scale.float().view(-1, 1, 1)
                y, hL = st.selective_scan_fn(xc_t / k, dt_t * k, A, Bt, Ct, return_last_state=True)
                y = (y + xc_t * self.D.float()[:, None]) * F.silu(zt)
            else:
                y, hL = st.selective_scan_fn(xc_t, dt_t, A, Bt, Ct, self.D.float(), zt, return_last_state=True)
        return self.out_proj(y.transpose(1, 2)), (new_cs, hL)


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
    default cuDNN backend on H100/H200 (torch 2.11) trains wrongly (docs/training.md, run 1)."""
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


def attention(q, k, v, n_cached: int, window: int | None):
    """The one attention entry point of the model: causal attention of q over k, v.

    q: (B, H, L, hd) at positions p0..p0+L-1; k, v: (B, G, n_cached + L, hd), the first n_cached of them
    the cached keys/values of the positions before p0 (after RoPE); H a multiple of G (query head h reads
    key/value head h // (H/G)). window: keys per query including itself, or None for full causal
    attention. Returns (B, H, L, hd)."""
    qpk = q.shape[1] // k.shape[1]
    if qpk > 1:
        k, v = k.repeat_interleave(qpk, dim=1), v.repeat_interleave(qpk, dim=1)
    L = q.shape[2]
    # on the CPU, a row that fits in the window needs no band mask (every key is inside it)
    fits = q.device.type == "cpu" and n_cached == 0 and window is not None and L <= window
    if window is not None and not fits:
        return local_attention(q, k, v, n_cached, window)
    if n_cached == 0:  # SDPA without attn_mask: the masked cuDNN path is avoided (masked_attention)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    pos_k = torch.arange(n_cached + L, device=q.device)[None, :]
    mask = pos_k <= (n_cached + torch.arange(L, device=q.device))[:, None]
    return masked_attention(q, k, v, mask)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: dict, local: bool):
        super().__init__()
        self.H, self.G, self.hd = cfg["n_head"], cfg["n_kv_head"], cfg["head_dim"]
        self.qpk = self.H // self.G
        self.window = cfg["window"] if local else None
        self.base = cfg["rope_base"]
        self.kernels = "torch"  # set by TorchSamba (set_kernels)
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
            new_state = (k[:, :, k.shape[2] - keep :], v[:, :, v.shape[2] - keep :])
        if self.kernels == "samba_ext":
            # flash-attn layout (B, L, heads, hd), GQA by the op, causal bottom-right aligned (query i
            # at position P + i); window keys including the query itself = window_size (window-1, 0)
            left = -1 if self.window is None else self.window - 1
            y = _samba_ext_torch().flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=(left, 0)
            )
        else:
            y = attention(q, k, v, P, self.window).transpose(1, 2)
        y = y.reshape(Bsz, L, self.H * self.hd)
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

    def __init__(self, cfg: dict, kernels: str | None = None):
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
        self.set_kernels(default_kernels() if kernels is None else kernels)

    def set_kernels(self, kernels: str) -> None:
        """Choose the kernels. "samba_ext": the Mamba blocks run samba_ext.torch's
        causal_conv1d_fn and selective_scan_fn (the torch scan where a state is passed in or
        ``exact``), the attention blocks its flash_attn_func; "torch": this file's scans and
        attention (SDPA / masked softmax)."""
        self.kernels = check_kernels(kernels)
        for b in self.transformer.h:
            b.attn.kernels = self.kernels

    def forward(
        self,
        tokens,
        state=None,
        pos0: int = 0,
        dt_scale=None,
        exact: bool = False,
        return_state: bool = False,
        return_hidden: bool = False,
        decay_only: bool = False,
    ):
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
# Checkpoints (the package's safetensors reader and writer)
# ----------------------------------------------------------------------------------------------
def export_state(model: TorchSamba) -> dict[str, np.ndarray]:
    """lit_gpt-named float32 arrays (tied: no lm_head.weight)."""
    return {k: v.detach().float().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def save_checkpoint(path: str, model: TorchSamba, metadata: dict[str, str]) -> None:
    """Write ``model`` as a float32 safetensors file (atomically: temporary file, then rename)."""
    write_safetensors(path, export_state(model), {str(k): str(v) for k, v in metadata.items()})


def load_model(path: str, device: str = "cpu", kernels: str | None = None) -> TorchSamba:
    """Build a TorchSamba from a samba-ext safetensors file; ``model.file_meta`` is its metadata.
    kernels: as TorchSamba (default: samba_ext when it imports)."""
    tensors, meta = read_safetensors(path)
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' in the metadata; this is not a samba-ext training file")
    cfg = json.loads(meta["config"])
    model = TorchSamba(cfg, kernels=kernels)
    sd = {k: torch.from_numpy(v) for k, v in tensors.items() if k != "lm_head.weight"}
    model.load_state_dict(sd, strict=True)
    model.file_meta = meta  # the file's __metadata__ (train_command, lineage, ...)
    return model.to(device)


# ----------------------------------------------------------------------------------------------
# Chunked (recurrent) inference
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def run_chunked(
    model: TorchSamba, tokens: torch.Tensor, chunk: int = 8192, want: str = "last", targets_from: int | None = None
):
    """Process tokens (B, L) chunk by chunk with the state carried.

    want="last": logits of the last position (B, V). want="nll": per-token NLL (B, L-1) float32 of
    tokens[:, t+1] given tokens[:, :t+1]. want="argmax_from": argmax predictions (B, L-targets_from)
    for positions targets_from..L-1."""
    state, pos = None, 0
    L = tokens.shape[1]
    outs = []
    last = None
    while pos < L:
        cur = tokens[:, pos : pos + chunk]
        h, state = model(cur, state=state, pos0=pos, return_state=True, return_hidden=True)
        if want == "nll":
            lg = model.logits(h)
            tgt = tokens[:, pos + 1 : pos + 1 + cur.shape[1]]
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


# ----------------------------------------------------------------------------------------------
# Model surgery
# ----------------------------------------------------------------------------------------------
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
    grown = TorchSamba(cfg, kernels=model.kernels).to(dev)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("transformer.h.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for b in grown.transformer.h[n0:]:
            (b.attn.out_proj if b.kind == "mamba" else b.attn.proj).weight.zero_()
            b.mlp.swiglu.w3.weight.zero_()
    return grown
