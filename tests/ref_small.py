"""Plain float64 NumPy references for the small kernels (conv1d, RMSNorm, rotary, SwiGLU).

Written directly from the formulas, independent of the C code. Every function takes any
float arrays, computes in float64 and returns float64 arrays.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    """silu(x) = x * sigmoid(x), float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def causal_conv1d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None,
                  activation: Optional[str] = None,
                  initial_states: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise causal conv1d.

    x (B, D, L); weight (D, W), weight[:, W-1] multiplies the current token; bias (D,);
    initial_states (B, D, W-1) (zeros if None), the W-1 inputs before x, older first.
    Returns y (B, D, L) and final_states (B, D, W-1) = the last W-1 inputs of
    [initial_states | x], older first.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    bsz, dim, seqlen = x.shape
    width = w.shape[1]
    if initial_states is None:
        init = np.zeros((bsz, dim, width - 1))
    else:
        init = np.asarray(initial_states, dtype=np.float64)
    xpad = np.concatenate([init, x], axis=2)  # (B, D, W-1+L)
    y = np.zeros((bsz, dim, seqlen))
    for t in range(seqlen):
        # output t uses xpad[t .. t+W-1], i.e. inputs t-(W-1) .. t
        y[:, :, t] = np.sum(xpad[:, :, t:t + width] * w[None, :, :], axis=2)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None]
    if activation in ("silu", "swish"):
        y = silu(y)
    final = xpad[:, :, xpad.shape[2] - (width - 1):]
    return y, final.copy()


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float,
             residual: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm over the last axis of s = x (+ residual): y = s / sqrt(mean(s^2) + eps) * w.

    Returns (y, s)."""
    s = np.asarray(x, dtype=np.float64)
    if residual is not None:
        s = s + np.asarray(residual, dtype=np.float64)
    ms = np.mean(s * s, axis=-1, keepdims=True)
    return s / np.sqrt(ms + eps) * np.asarray(weight, dtype=np.float64), s


def rotary(x: np.ndarray, positions: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """NeoX half-split rotary embedding.

    x (B, L, H, hd); positions (B, L) ints; theta_i = base^(-2i/hd), angle = pos * theta_i;
    out1 = x1 cos - x2 sin, out2 = x1 sin + x2 cos (x1, x2 the two halves of the head dim).
    """
    x = np.asarray(x, dtype=np.float64)
    hd = x.shape[3]
    half = hd // 2
    i = np.arange(half, dtype=np.float64)
    theta = float(base) ** (-2.0 * i / hd)  # (half,)
    ang = np.asarray(positions, dtype=np.float64)[:, :, None] * theta  # (B, L, half)
    cos = np.cos(ang)[:, :, None, :]
    sin = np.sin(ang)[:, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, float64."""
    return silu(gate) * np.asarray(up, dtype=np.float64)
