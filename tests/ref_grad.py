"""Plain float64 NumPy references for the backward passes, and central finite differences.

The analytic references are written directly from the chain rule, one step at a time, and
store everything (no recomputation, no chunking), independent of the C kernels. The
forward references they differentiate are in ref_scan.py, ref_small.py and here
(attention with two-sided windows and softcap). ``num_grad`` differentiates any float64
forward by central differences, which checks the analytic references themselves.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ref_scan import selective_scan_ref, silu_ref, softplus_ref


def _f64(x) -> Optional[np.ndarray]:
    return None if x is None else np.array(x, dtype=np.float64)


def r32(x) -> np.ndarray:
    """float64 copy of x rounded to float32 (what the C kernels see), so a comparison with a
    float64 reference measures the kernel's error, not the input rounding."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def dsilu(x: np.ndarray) -> np.ndarray:
    """d silu(x) / dx = sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def num_grad(f: Callable[[dict], list], inputs: dict, name: str, douts: list,
             h: float = 1e-6) -> np.ndarray:
    """d/d inputs[name] of sum_k <f(inputs)[k], douts[k]> by central differences (float64).

    f maps a dict of float64 arrays to a list of float64 outputs."""
    x = inputs[name]
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + h
        fp = sum(np.sum(o * d) for o, d in zip(f(inputs), douts))
        x[idx] = old - h
        fm = sum(np.sum(o * d) for o, d in zip(f(inputs), douts))
        x[idx] = old
        g[idx] = (fp - fm) / (2.0 * h)
    return g


# -------------------------------------------------------------------- selective scan ---

def selective_scan_bwd_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, initial_state=None, dout=None,
                           dlast_state=None) -> dict:
    """Gradients of selective_scan_ref (float64), keys du, ddelta, dA, dB, dC, dD, dz,
    ddelta_bias, dinitial_state (None where the input was None; dinitial_state is always
    given). B, C (batch, N, L) or (batch, G, N, L)."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state = map(
        _f64, (u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state))
    batch, dim, L = u.shape
    N = A.shape[1]
    three = B.ndim == 3
    if three:
        B, C = B[:, None], C[:, None]
    G = B.shape[1]
    grp = np.arange(dim) // (dim // G)
    Bd, Cd = B[:, grp], C[:, grp]              # (batch, dim, N, L)
    x = delta + (delta_bias[None, :, None] if delta_bias is not None else 0.0)
    dt = softplus_ref(x) if delta_softplus else x
    h = np.zeros((batch, dim, N)) if initial_state is None else initial_state.copy()
    hs = [h]                                   # hs[t + 1] = h_t, hs[0] = initial state
    for t in range(L):
        e = np.exp(dt[:, :, t, None] * A[None])
        h = e * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bd[:, :, :, t]
        hs.append(h)
    y0 = np.stack([np.sum(hs[t + 1] * Cd[:, :, :, t], axis=-1) for t in range(L)], axis=-1)
    if D is not None:
        y0 = y0 + D[None, :, None] * u
    if z is not None:
        dy0 = dout * silu_ref(z)
        dz = dout * y0 * dsilu(z)
    else:
        dy0, dz = dout, None
    du = np.zeros_like(u)
    ddt = np.zeros_like(u)
    dA = np.zeros_like(A)
    dB = np.zeros_like(B)
    dC = np.zeros_like(C)
    g_next = np.zeros((batch, dim, N)) if dlast_state is None else dlast_state.copy()
    for t in range(L - 1, -1, -1):
        e = np.exp(dt[:, :, t, None] * A[None])          # (batch, dim, N)
        g = g_next + dy0[:, :, t, None] * Cd[:, :, :, t]
        for gi in range(G):
            sel = grp == gi
            dC[:, gi, :, t] += np.sum(dy0[:, sel, t, None] * hs[t + 1][:, sel], axis=1)
            dB[:, gi, :, t] += np.sum(g[:, sel] * (dt[:, sel, t] * u[:, sel, t])[:, :, None],
                                      axis=1)
        dA += np.sum(g * e * hs[t] * dt[:, :, t, None], axis=0)
        ddt[:, :, t] = np.sum(g * (e * hs[t] * A[None] + Bd[:, :, :, t] * u[:, :, t, None]),
                              axis=-1)
        du[:, :, t] = dt[:, :, t] * np.sum(g * Bd[:, :, :, t], axis=-1)
        g_next = g * e
    if D is not None:
        du += D[None, :, None] * dy0
    ddelta = ddt * np.where(x <= 20.0, sigmoid(x), 1.0) if delta_softplus else ddt
    return dict(
        du=du, ddelta=ddelta, dA=dA, dB=dB[:, 0] if three else dB,
        dC=dC[:, 0] if three else dC,
        dD=None if D is None else np.sum(dy0 * u, axis=(0, 2)), dz=dz,
        ddelta_bias=None if delta_bias is None else np.sum(ddelta, axis=(0, 2)),
        dinitial_state=g_next)


def selective_scan_outputs(inp: dict, softplus: bool) -> list:
    """[y, last_state] of selective_scan_ref for num_grad."""
    y, last = selective_scan_ref(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"],
                                 inp.get("D"), inp.get("z"), inp.get("delta_bias"), softplus,
                                 inp.get("initial_state"), True)
    return [y, last]


# ------------------------------------------------------------------------- conv1d ---

def causal_conv1d_bwd_ref(x, weight, bias=None, activation=None, initial_states=None,
                          dy=None, dfinal_states=None) -> dict:
    """Gradients of ref_small.causal_conv1d (float64): dx, dweight, dbias, dinitial_states
    (dinitial_states always given)."""
    x, w, bias, init, dy, dfin = map(_f64, (x, weight, bias, initial_states, dy,
                                            dfinal_states))
    bsz, dim, L = x.shape
    W = w.shape[1]
    if init is None:
        init = np.zeros((bsz, dim, W - 1))
    xp = np.concatenate([init, x], axis=2)               # xp[:, :, t + W - 1] = x[t]
    p = np.zeros((bsz, dim, L))
    for t in range(L):
        p[:, :, t] = np.sum(xp[:, :, t:t + W] * w[None], axis=2)
    if bias is not None:
        p += bias[None, :, None]
    gp = dy * dsilu(p) if activation in ("silu", "swish") else dy.copy()
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for t in range(L):
        for k in range(W):
            dxp[:, :, t + k] += w[None, :, k] * gp[:, :, t]
            dw[:, k] += np.sum(gp[:, :, t] * xp[:, :, t + k], axis=0)
    if dfin is not None:
        dxp[:, :, xp.shape[2] - (W - 1):] += dfin
    return dict(dx=dxp[:, :, W - 1:], dweight=dw,
                dbias=None if bias is None else np.sum(gp, axis=(0, 2)),
                dinitial_states=dxp[:, :, :W - 1])


# ---------------------------------------------------------------------- small ops ---

def rms_norm_bwd_ref(x, weight, eps, residual=None, dy=None, dresidual_out=None) -> dict:
    """Gradients of ref_small.rms_norm (float64): dx, dweight, dresidual."""
    x, w, residual, dy, dro = map(_f64, (x, weight, residual, dy, dresidual_out))
    s = x if residual is None else x + residual
    n = s.shape[-1]
    r = 1.0 / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
    wdy = w * dy
    ds = r * wdy - s * r ** 3 * np.sum(wdy * s, axis=-1, keepdims=True) / n
    if dro is not None:
        ds = ds + dro
    dw = np.sum((dy * s * r).reshape(-1, n), axis=0)
    return dict(dx=ds, dweight=dw, dresidual=None if residual is None else ds)


def swiglu_bwd_ref(gate, up, dy) -> dict:
    """Gradients of silu(gate) * up (float64)."""
    g, u, dy = map(_f64, (gate, up, dy))
    return dict(dgate=dy * u * dsilu(g), dup=dy * silu_ref(g))


def rotary_bwd_ref(dy, positions, base=10000.0) -> np.ndarray:
    """Gradient of ref_small.rotary w.r.t. x (float64), written as the transposed rotation."""
    dy = _f64(dy)
    hd = dy.shape[3]
    half = hd // 2
    theta = float(base) ** (-2.0 * np.arange(half) / hd)
    ang = np.asarray(positions, dtype=np.float64)[:, :, None] * theta
    c, s = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
    g1, g2 = dy[..., :half], dy[..., half:]
    # out1 = x1 c - x2 s, out2 = x1 s + x2 c  =>  dx1 = g1 c + g2 s, dx2 = -g1 s + g2 c
    return np.concatenate([g1 * c + g2 * s, -g1 * s + g2 * c], axis=-1)


# ---------------------------------------------------------------------- attention ---

def attention_mask(Lq: int, Lk: int, left: int, right: int) -> np.ndarray:
    """(Lq, Lk) bool: query i (at key position i + Lk - Lq) sees key j."""
    pos = np.arange(Lq)[:, None] + (Lk - Lq)
    j = np.arange(Lk)[None, :]
    m = np.ones((Lq, Lk), dtype=bool)
    if left >= 0:
        m &= j >= pos - left
    if right >= 0:
        m &= j <= pos + right
    return m


def alibi_bias(alibi, b, h, Lq, Lk):
    """(Lq, Lk) float64 ALiBi bias -slope |i + Lk - Lq - j| of (batch b, head h); alibi
    (H,) or (B, H) slopes, or None (zeros)."""
    if alibi is None:
        return np.zeros((Lq, Lk))
    a = np.asarray(alibi, dtype=np.float64)
    slope = a[h] if a.ndim == 1 else a[b, h]
    i = np.arange(Lq)[:, None] + Lk - Lq
    return -slope * np.abs(i - np.arange(Lk)[None, :])


def attention_fwd_ref(q, k, v, scale, left=-1, right=-1, softcap=0.0, alibi=None):
    """Full-matrix float64 attention -> (out (B, Lq, H, hd), lse (B, H, Lq)); alibi: slopes
    (H,) or (B, H), the bias added after the softcap, as flash-attn."""
    q, k, v = map(_f64, (q, k, v))
    Bsz, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    m = attention_mask(Lq, Lk, left, right)
    out = np.zeros_like(q)
    lse = np.full((Bsz, H, Lq), -np.inf)
    for b in range(Bsz):
        for h in range(H):
            s = scale * q[b, :, h] @ k[b, :, h // G].T
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            s = np.where(m, s + alibi_bias(alibi, b, h, Lq, Lk), -np.inf)
            for i in range(Lq):
                if not m[i].any():
                    continue
                mx = s[i].max()
                p = np.exp(s[i] - mx)
                lse[b, h, i] = mx + np.log(p.sum())
                out[b, i, h] = (p / p.sum()) @ v[b, :, h // G]
    return out, lse


def attention_bwd_ref(q, k, v, dout, scale, left=-1, right=-1, softcap=0.0,
                      alibi=None) -> dict:
    """Gradients of attention_fwd_ref (float64, full matrices): dq, dk, dv (the ALiBi bias
    is a constant: it changes P, not the form of dS)."""
    q, k, v, dout = map(_f64, (q, k, v, dout))
    Bsz, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    m = attention_mask(Lq, Lk, left, right)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(Bsz):
        for h in range(H):
            kk, vv = k[b, :, h // G], v[b, :, h // G]
            r = scale * q[b, :, h] @ kk.T
            t = np.tanh(r / softcap) if softcap > 0 else None
            s = softcap * t if softcap > 0 else r
            s = np.where(m, s + alibi_bias(alibi, b, h, Lq, Lk), -np.inf)
            mx = np.where(m.any(axis=1), s.max(axis=1), 0.0)[:, None]
            p = np.where(m, np.exp(s - mx), 0.0)
            den = p.sum(axis=1, keepdims=True)
            p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
            go = dout[b, :, h]
            dv[b, :, h // G] += p.T @ go
            dp = go @ vv.T
            dsm = p * (dp - np.sum(p * dp, axis=1, keepdims=True))   # d wrt s
            if softcap > 0:
                dsm = dsm * (1.0 - t * t)
            dq[b, :, h] = scale * dsm @ kk
            dk[b, :, h // G] += scale * dsm.T @ q[b, :, h]
    return dict(dq=dq, dk=dk, dv=dv)
