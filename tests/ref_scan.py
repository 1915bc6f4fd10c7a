"""Plain float64 NumPy reference of the Mamba-1 selective scan (docs/specification.md section 3).

Written directly from the formulas, one time step at a time, independent of the C kernel:

    dt     = delta + delta_bias;  if delta_softplus: dt = log1p(exp(dt)) where dt <= 20 else dt
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          (per channel d, state n)
    y_t    = sum_n h_t[n] * C_t[n] + D * u_t;  if z: y_t *= silu(z_t)

Channel d reads group g = d // (dim // ngroups) of B and C.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def _f64(x) -> Optional[np.ndarray]:
    return None if x is None else np.asarray(x, dtype=np.float64)


def softplus_ref(x: np.ndarray) -> np.ndarray:
    """softplus with threshold 20, float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.where(x <= 20.0, np.log1p(np.exp(np.minimum(x, 20.0))), x)


def silu_ref(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (1.0 + np.exp(-x))


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus: bool = False, initial_state=None,
                       return_last_state: bool = False):
    """u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) or (batch, G, N, L);
    D, delta_bias (dim,); initial_state (batch, dim, N). Returns float64 y (batch, dim, L)
    [and last state (batch, dim, N)]."""
    u, delta, A, B, C = map(_f64, (u, delta, A, B, C))
    D, z, delta_bias, initial_state = map(_f64, (D, z, delta_bias, initial_state))
    batch, dim, L = u.shape
    N = A.shape[1]
    if B.ndim == 3:
        B = B[:, None]
    if C.ndim == 3:
        C = C[:, None]
    G = B.shape[1]
    chan_group = np.arange(dim) // (dim // G)
    Bd = B[:, chan_group]  # (batch, dim, N, L)
    Cd = C[:, chan_group]
    dt = delta + (delta_bias[None, :, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = softplus_ref(dt)
    h = np.zeros((batch, dim, N)) if initial_state is None else initial_state.copy()
    y = np.empty((batch, dim, L))
    for t in range(L):
        dA = np.exp(dt[:, :, t, None] * A[None])                  # (batch, dim, N)
        h = dA * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bd[:, :, :, t]
        y[:, :, t] = np.sum(h * Cd[:, :, :, t], axis=-1)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * silu_ref(z)
    return (y, h) if return_last_state else y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus: bool = False):
    """One step. state (batch, dim, N); x, dt, z (batch, dim); B, C (batch, N) or
    (batch, G, N). Returns (y (batch, dim), new state), both float64."""
    y, h = selective_scan_ref(
        np.asarray(x)[..., None], np.asarray(dt)[..., None], A, np.asarray(B)[..., None],
        np.asarray(C)[..., None], D, None if z is None else np.asarray(z)[..., None],
        dt_bias, dt_softplus, state, True)
    return y[..., 0], h
